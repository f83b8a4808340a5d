// Running one command: the button's pending state, the POST, the outcome card,
// and following a 202 until the device's answer arrives.

import { ApiError, explain } from "./api.js";
import { h, setText } from "./dom.js";
import { absoluteTime, formatMs, isTerminal } from "./format.js";

const STATE_LABELS = {
  SUCCEEDED: "Succeeded",
  FAILED: "Failed",
  REJECTED: "Rejected",
  TIMED_OUT: "Timed out",
  EXPIRED: "Expired",
  SENT: "Waiting",
  QUEUED: "Queued",
  SENDING: "Sending",
  RUNNING: "Running",
  ERROR: "Not sent",
  NOT_SENT: "Not sent",
  PENDING: "Pending",
  UNKNOWN: "Unknown",
};

export function stateLabel(state) {
  return STATE_LABELS[state] || String(state || "Unknown");
}

export function stateChip(state) {
  return h("span", { class: `chip chip-${String(state || "unknown").toLowerCase()}` }, stateLabel(state));
}

export function describeParams(params) {
  if (!params || typeof params !== "object" || !Object.keys(params).length) return "";
  return Object.entries(params)
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(", ");
}

function outcomeText(thing, action, cmd) {
  const err = cmd.error ? `: ${typeof cmd.error === "string" ? cmd.error : JSON.stringify(cmd.error)}` : "";
  switch (cmd.state) {
    case "SUCCEEDED":
      return `${thing} ran ${action}.`;
    case "FAILED":
      return `${thing} ran ${action}, but it failed${err}.`;
    case "REJECTED":
      return `${thing} rejected ${action}${err}. Nothing ran.`;
    case "TIMED_OUT":
      return `${thing} started ${action}, but it ran past its deadline${err}.`;
    case "EXPIRED":
      return `${action} expired before ${thing} could run it. Nothing ran.`;
    case "UNKNOWN":
      return `${thing} may have run ${action}, but never reported how it went. If it reports later, its outcome shows in Recent commands.`;
    case "QUEUED":
      return `${thing} is offline. ${action} is queued and runs when it reconnects${
        cmd.expiresAt ? ` (until ${absoluteTime(cmd.expiresAt)})` : ""
      }.`;
    case "SENT":
      return `No answer from ${thing} yet. Still waiting; the outcome will appear here.`;
    default:
      return `${action}: ${stateLabel(cmd.state)}.`;
  }
}

// How long a command queued for an offline device waits for it (its ttlMs; the API's default is 1 min).
export const QUEUE_TTLS = [
  [600_000, "10 minutes"],
  [3_600_000, "1 hour"],
  [86_400_000, "1 day"],
];

function busy(button, on) {
  if (!button) return;
  button.classList.toggle("is-pending", on);
  if (on) {
    button.setAttribute("aria-busy", "true");
    button.setAttribute("aria-disabled", "true");
  } else {
    button.removeAttribute("aria-busy");
    button.removeAttribute("aria-disabled");
  }
}

export function isBusy(button) {
  return button && button.getAttribute("aria-disabled") === "true";
}

// One card per command; `update` rewrites it in place as the command advances.
class OutcomeCard {
  constructor(thing, action, params) {
    this.chip = h("span", { class: "chip chip-running" }, "Running");
    this.text = h("p", { class: "outcome-text" }, `Sending ${action} to ${thing}…`);
    this.timing = h("p", { class: "outcome-timing" });
    this.detail = h("pre", { class: "outcome-result", hidden: true });
    this.actions = h("div", { class: "outcome-actions" });
    const paramText = describeParams(params);
    this.el = h(
      "article",
      { class: "outcome", dataset: { state: "RUNNING", thing, action } },
      h(
        "div",
        { class: "outcome-head" },
        this.chip,
        h("strong", { class: "outcome-action" }, action),
        paramText ? h("span", { class: "outcome-params" }, paramText) : null,
      ),
      this.text,
      this.detail,
      this.timing,
      this.actions,
    );
  }

  setState(state, text, tone) {
    this.el.dataset.state = state;
    this.el.dataset.tone = tone || "";
    this.chip.className = `chip chip-${state.toLowerCase()}`;
    setText(this.chip, stateLabel(state));
    setText(this.text, text);
  }

  setResult(value) {
    if (value === undefined || value === null) {
      this.detail.hidden = true;
      return;
    }
    this.detail.hidden = false;
    const compact = typeof value === "string" ? value : JSON.stringify(value);
    setText(this.detail, compact.length <= 60 ? compact : JSON.stringify(value, null, 2));
  }

  setTiming(text) {
    setText(this.timing, text);
  }
}

export class CommandRunner {
  // getClient(): the current ApiClient; onSettled(thing): refresh views after an outcome.
  constructor({ getClient, onSettled }) {
    this.getClient = getClient;
    this.onSettled = onSettled;
    this.cards = new Map(); // thing -> [card elements], newest first
    this.sending = new Map(); // sendingKey -> the Set of buttons showing that send busy
  }

  cardsFor(thing) {
    return this.cards.get(thing) || [];
  }

  remember(thing, el) {
    const list = [el, ...this.cardsFor(thing)].slice(0, 4);
    this.cards.set(thing, list);
    this.onCard?.(thing, el);
  }

  // The buttons of a command being sent (its POST not answered yet), by thing, action and params:
  // a view rebuilt meanwhile (the user opened another device and came back) shows its new button
  // busy too, and a click on it sends nothing. A form's button (params unknown until it is
  // submitted) is busy while any command of its action is being sent.
  sendingKey(thing, action, params) {
    return `${thing}\n${action}\n${params === undefined ? "" : JSON.stringify(params || {})}`;
  }

  adopt(thing, action, button, params) {
    const key = this.sendingKey(thing, action, params);
    for (const [sending, buttons] of this.sending) {
      if (params === undefined ? !sending.startsWith(key) : sending !== key) continue;
      buttons.add(button);
      busy(button, true);
    }
  }

  async run({ thing, action, params, button, timeoutMs, ifOffline, ttlMs }) {
    const key = this.sendingKey(thing, action, params);
    if (isBusy(button) || this.sending.has(key)) return;
    const buttons = new Set(button ? [button] : []);
    this.sending.set(key, buttons);
    const sent = () => {
      this.sending.delete(key);
      for (const b of buttons) busy(b, false);
    };
    const card = new OutcomeCard(thing, action, params);
    this.remember(thing, card.el);
    busy(button, true);
    const started = performance.now();
    const body = { action, params: params || {}, ifOffline: ifOffline || "fail" };
    if (timeoutMs) body.timeoutMs = timeoutMs;
    if (ttlMs) body.ttlMs = ttlMs;
    try {
      const { status, data } = await this.getClient().sendCommand(thing, body);
      const roundTrip = performance.now() - started;
      if (status === 202 || !isTerminal(data.state)) {
        card.setState(data.state || "SENT", outcomeText(thing, action, data), "pending");
        card.setTiming(`No answer within ${formatMs(roundTrip)}; id ${data.id || "?"}`);
        sent();
        this.follow(card, thing, action, data.id, started);
      } else {
        this.finish(card, thing, action, data, roundTrip);
        sent();
      }
    } catch (err) {
      sent();
      this.showError(card, thing, action, params, err, { timeoutMs });
      if (err.maybeSent) {
        // Its answer never came, but the page knows its id: once the API answers again, the
        // card says whether it was queued (and follows it) or not.
        this.follow(card, thing, action, err.maybeSent, started, { missing: `${action} was not sent to ${thing}: the API has no command ${err.maybeSent}. Nothing ran.` });
      }
    }
  }

  finish(card, thing, action, data, roundTrip) {
    const ok = data.state === "SUCCEEDED";
    card.setState(data.state, outcomeText(thing, action, data), ok ? "ok" : "bad");
    card.setResult(ok ? data.result : undefined);
    const apiPart = typeof data.latencyMs === "number" ? ` (API wait ${formatMs(data.latencyMs)})` : "";
    card.setTiming(`Round trip ${formatMs(roundTrip)}${apiPart}`);
    if (!ok) card.el.setAttribute("role", "alert");
    this.onSettled?.(thing);
  }

  showError(card, thing, action, params, err, opts) {
    const info = explain(err, thing);
    card.setState("ERROR", info.text, info.kind);
    card.el.dataset.code = err instanceof ApiError ? err.code : "ERROR";
    card.el.setAttribute("role", "alert");
    setText(card.chip, info.title);
    card.setTiming("");
    if (err instanceof ApiError && err.code === "DEVICE_OFFLINE") {
      const [ttlMs, label] = QUEUE_TTLS[1];
      const queue = h("button", { type: "button", class: "btn btn-small" }, `Queue it for up to ${label}`);
      queue.addEventListener("click", () => {
        queue.remove();
        // The device is offline: no point holding the request open; the card follows the command.
        this.run({ thing, action, params, button: null, timeoutMs: 1000, ifOffline: "queue", ttlMs });
      });
      card.actions.replaceChildren(queue);
    }
  }

  // Poll one command until it is terminal; gentle: 1 s, slowing to 5 s.
  async follow(card, thing, action, id, started, { missing } = {}) {
    if (!id) return;
    const giveUpAt = Date.now() + 10 * 60 * 1000;
    let delay = 1000;
    while (Date.now() < giveUpAt) {
      await new Promise((r) => setTimeout(r, document.hidden ? Math.max(delay, 5000) : delay));
      try {
        const data = await this.getClient().getCommand(thing, id);
        const cmd = data.command && typeof data.command === "object" ? data.command : data;
        delete card.el.dataset.code; // whatever error the card showed, the command is found
        if (isTerminal(cmd.state)) {
          this.finish(card, thing, action, cmd, performance.now() - started);
          const after = formatMs(performance.now() - started);
          const timing = {
            EXPIRED: `Expired ${after} after it was sent`,
            UNKNOWN: `No answer from ${thing}; looked up ${after} after it was sent`,
          };
          card.setTiming(timing[cmd.state] || `Answered after ${after} (followed up after the wait ran out)`);
          return;
        }
        card.setState(cmd.state || "SENT", outcomeText(thing, action, cmd), "pending");
        delay = Math.min(delay + 500, 5000);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          if (missing) {
            card.setState("NOT_SENT", missing, "bad");
            setText(card.chip, "Not sent");
          } else {
            card.setState("ERROR", `The API no longer knows command ${id}.`, "error");
          }
          card.setTiming("");
          return;
        }
        const info = explain(err, thing);
        card.setTiming(`Still following: ${info.title}. Retrying…`);
        delay = Math.min(delay * 2, 15000);
      }
    }
    card.setTiming("Stopped following after 10 minutes; see the history below.");
  }
}
