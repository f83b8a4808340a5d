// One request at a time, on a timer that is gentle with the API:
// `interval` while the tab is visible, `hiddenInterval` while hidden, and an
// exponential backoff (capped) while requests fail.

export class Poller {
  constructor(task, { interval = 1000, hiddenInterval = 15000, maxBackoff = 30000 } = {}) {
    this.task = task;
    this.interval = interval;
    this.hiddenInterval = hiddenInterval;
    this.maxBackoff = maxBackoff;
    this.failures = 0;
    this.timer = null;
    this.running = false;
    this.busy = false;
    this.nextAt = 0;
    this.onVisibility = () => {
      if (!document.hidden) this.poke();
    };
  }

  start() {
    if (this.running) return;
    this.running = true;
    document.addEventListener("visibilitychange", this.onVisibility);
    this.schedule(0);
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisibility);
  }

  // Run soon (e.g. after the user acted), without stacking requests.
  poke() {
    if (!this.running) return;
    if (this.busy) {
      this.pokeAfter = true;
      return;
    }
    this.schedule(0);
  }

  delay() {
    if (this.failures > 0) return Math.min(this.interval * 2 ** this.failures, this.maxBackoff);
    return document.hidden ? this.hiddenInterval : this.interval;
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.nextAt = Date.now() + ms;
    this.timer = setTimeout(() => this.run(), ms);
  }

  async run() {
    if (!this.running || this.busy) return;
    this.busy = true;
    this.pokeAfter = false;
    try {
      await this.task();
      this.failures = 0;
    } catch {
      this.failures += 1;
    } finally {
      this.busy = false;
    }
    if (!this.running) return;
    const next = this.pokeAfter && this.failures === 0 ? 0 : this.delay();
    this.schedule(next);
    this.onSchedule?.(next, this.failures);
  }
}
