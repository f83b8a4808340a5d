// One device in full: LED, actions as buttons and forms, outcomes, desired vs
// reported with the delta highlighted, the shadow version and recent commands.
// Built once per device; refreshes update text in place so focus survives.

import { explain } from "./api.js";
import { describeParams, isBusy, QUEUE_TTLS, stateChip } from "./commands.js";
import { presenceBadge, updateBadge } from "./devices.js";
import { h, setText } from "./dom.js";
import { absoluteTime, flatten, formatLeaf, formatMs, formatValue, ledIsOn, relativeTime } from "./format.js";
import { buildField, quickChoices, readParams } from "./specs.js";

export class DetailView {
  constructor(root, { thing, runner, getClient, sendOptions, onBack, onChanged }) {
    this.root = root;
    this.thing = thing;
    this.runner = runner;
    this.getClient = getClient;
    this.sendOptions = sendOptions; // {timeoutMs, ifOffline}, shared by every device view
    this.onChanged = onChanged;
    this.actionsSig = null;
    this.build(onBack);
  }

  build(onBack) {
    const thing = this.thing;
    this.title = h("h2", { id: "detail-title", tabindex: "-1" }, thing);
    this.badge = presenceBadge(false);
    this.missing = h("p", { class: "notice", role: "status", hidden: true }, `${thing} is not known to the API.`);
    this.version = h("span", { class: "meta-pill", "data-testid": "shadow-version" }, "Shadow v—");
    this.seen = h("span", { class: "meta-pill" }, "");
    const back = h("button", { type: "button", class: "btn btn-ghost back" }, "← All devices");
    back.addEventListener("click", onBack);

    this.bulb = h("div", { class: "led led-big led-none", role: "img", "aria-label": "LED state unknown" });
    this.ledState = h("p", { class: "hero-state", "data-testid": "led-state" }, "—");
    this.ledPending = h("p", { class: "hero-pending" });
    this.ledControls = h("div", { class: "segmented", role: "group", "aria-label": `LED of ${thing}` });
    this.hero = h(
      "section",
      { class: "hero", "aria-label": "LED" },
      this.bulb,
      h("div", { class: "hero-body" }, h("p", { class: "hero-label" }, "LED"), this.ledState, this.ledPending),
      this.ledControls,
    );

    this.actionsGrid = h("div", { class: "actions-grid" });
    this.outcomes = h("div", { class: "outcomes", "aria-live": "polite", "aria-label": "Command outcomes" });
    for (const el of this.runner.cardsFor(thing)) this.outcomes.appendChild(el);

    this.tiles = h("div", { class: "tiles", "aria-label": "Telemetry" });
    this.telemetryAt = h("p", { class: "panel-note" });
    this.telemetry = h("section", { class: "panel", "aria-label": "Telemetry", hidden: true },
      h("h3", {}, "Telemetry"), this.tiles, this.telemetryAt);
    this.agent = h("span", { class: "meta-pill", hidden: true });
    this.stateBody = h("tbody");
    this.historyBody = h("tbody");
    this.historyEmpty = h("p", { class: "empty" }, "No commands yet.");

    const panel = (title, ...children) =>
      h("section", { class: "panel", "aria-label": title }, h("h3", {}, title), ...children);

    // What is there to see of a device the API knows; hidden for one it does not.
    this.body = h("div", { class: "detail-body" });
    this.root.replaceChildren(
      h(
        "header",
        { class: "detail-head" },
        back,
        h("div", { class: "detail-title-row" }, this.title, this.badge),
        (this.meta = h("div", { class: "detail-meta" }, this.version, this.seen, this.agent)),
        this.missing,
      ),
      this.body,
    );
    this.body.replaceChildren(
      this.hero,
      panel("Actions", this.buildSendOptions(), this.actionsGrid, this.outcomes),
      this.telemetry,
      panel(
        "State",
        h("p", { class: "panel-note" }, "Desired is what was asked; reported is what the device says. Highlighted rows are still pending."),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "state-table" },
            h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Desired"), h("th", { scope: "col" }, "Reported"))),
            this.stateBody,
          ),
        ),
        this.buildDesiredForm(),
      ),
      panel(
        "Recent commands",
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "history-table" },
            h(
              "thead",
              {},
              h("tr", {}, ...["When", "Action", "State", "Outcome"].map((c) => h("th", { scope: "col" }, c))),
            ),
            this.historyBody,
          ),
        ),
        this.historyEmpty,
      ),
    );
  }

  buildSendOptions() {
    const opts = this.sendOptions;
    const wait = h("input", {
      id: "send-wait",
      type: "number",
      min: "1",
      max: "29",
      step: "1",
      inputmode: "numeric",
      value: String(Math.round(opts.timeoutMs / 1000)),
    });
    wait.addEventListener("change", () => {
      const seconds = Math.min(29, Math.max(1, Number(wait.value) || 10));
      opts.timeoutMs = seconds * 1000;
      wait.value = String(seconds); // what is sent, not what was typed
    });
    // A queued command still expires (its ttlMs): the choice says how long it waits for the device.
    const offline = h(
      "select",
      { id: "send-offline" },
      h("option", { value: "fail" }, "fail right away"),
      ...QUEUE_TTLS.map(([ms, label]) => h("option", { value: `queue:${ms}` }, `queue it for up to ${label}`)),
    );
    offline.value = opts.ifOffline === "queue" ? `queue:${opts.ttlMs}` : "fail";
    offline.addEventListener("change", () => {
      const [mode, ms] = offline.value.split(":");
      opts.ifOffline = mode;
      opts.ttlMs = mode === "queue" ? Number(ms) : undefined;
    });
    return h(
      "div",
      { class: "send-options" },
      h("div", { class: "field field-inline" }, h("label", { for: "send-wait" }, "Wait for an answer up to (s)"), wait),
      h("div", { class: "field field-inline" }, h("label", { for: "send-offline" }, "If the device is offline"), offline),
    );
  }

  buildDesiredForm() {
    const id = "desired-json";
    const textarea = h("textarea", {
      id,
      rows: "2",
      spellcheck: "false",
      placeholder: '{"interval": 30}',
      "aria-describedby": `${id}-hint`,
    });
    const status = h("p", { class: "form-status", role: "status" });
    const submit = h("button", { type: "submit", class: "btn" }, "Set desired");
    const form = h(
      "form",
      { class: "desired-form" },
      h("label", { for: id }, "Change desired state"),
      h("small", { id: `${id}-hint`, class: "hint" }, "JSON merged into desired; the device applies it now or when it reconnects."),
      textarea,
      h("div", { class: "form-row" }, submit, status),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let state;
      try {
        state = JSON.parse(textarea.value);
        if (!state || typeof state !== "object" || Array.isArray(state)) throw new Error("not an object");
      } catch {
        status.dataset.tone = "bad";
        setText(status, 'Enter a JSON object, e.g. {"interval": 30}.');
        return;
      }
      setText(status, "Saving…");
      status.dataset.tone = "";
      try {
        await this.getClient().patchDesired(this.thing, state);
        status.dataset.tone = "ok";
        setText(status, "Saved. The device applies it when it is online.");
        this.onChanged(this.thing);
      } catch (err) {
        const info = explain(err, this.thing);
        status.dataset.tone = "bad";
        setText(status, `${info.title}: ${info.text}`);
      }
    });
    return form;
  }

  get isMissing() {
    return !this.missing.hidden;
  }

  setMissing(missing, text = `${this.thing} is not known to the API.`) {
    this.missing.hidden = !missing;
    setText(this.missing, text);
    this.body.hidden = missing;
    this.badge.hidden = missing;
    this.meta.hidden = missing;
  }

  addOutcome(el) {
    this.outcomes.prepend(el);
    while (this.outcomes.children.length > 4) this.outcomes.lastElementChild.remove();
  }

  focusTitle() {
    this.title.focus();
  }

  // `device` is either a list summary or a full GET /devices/{thing} answer.
  update(device) {
    const shadowState = device.shadow && device.shadow.state ? device.shadow.state : null;
    const reported = (shadowState ? shadowState.reported : device.reported) || {};
    const desired = (shadowState && shadowState.desired) || {};
    const delta = (shadowState && shadowState.delta) || {};
    this.setMissing(false);
    this.connected = !!device.connected;
    updateBadge(this.badge, this.connected);
    this.root.dataset.connected = device.connected ? "true" : "false";
    if (device.shadow && typeof device.shadow.version === "number") setText(this.version, `Shadow v${device.shadow.version}`);
    setText(this.seen, `${device.connected ? "Connected" : "Last seen"} ${relativeTime(device.lastSeen)}`);
    this.seen.title = absoluteTime(device.lastSeen);

    const actions = device.actions || reported.actions || {};
    this.updateLed(reported, delta, actions);
    this.updateActions(actions);
    if (shadowState) this.updateState(desired, reported, delta);
  }

  updateLed(reported, delta, actions) {
    const has = "led" in reported;
    const on = has && ledIsOn(reported.led);
    this.hero.hidden = !has && !actions.led;
    this.bulb.className = `led led-big ${has ? (on ? "led-on" : "led-off") : "led-none"}`;
    this.bulb.setAttribute("aria-label", has ? `LED is ${on ? "on" : "off"}` : "LED state unknown");
    setText(this.ledState, has ? (on ? "On" : "Off") : "Unknown");
    this.hero.dataset.led = has ? (on ? "on" : "off") : "unknown";
    setText(this.ledPending, "led" in delta ? `Changing to ${formatValue(delta.led)}…` : "");
    for (const button of this.ledControls.children) {
      const choice = button.dataset.choice;
      button.classList.toggle("is-current", has && (choice === "on" ? on : choice === "off" ? !on : false));
    }
  }

  updateActions(actions) {
    const sig = JSON.stringify(actions);
    if (sig === this.actionsSig) return;
    // Never pull a form from under someone typing in it.
    if (this.actionsGrid.contains(document.activeElement) && this.actionsSig !== null) {
      const tag = document.activeElement.tagName;
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    }
    this.actionsSig = sig;
    const cards = [];
    const led = actions.led ? quickChoices(actions.led) : null;
    this.ledControls.replaceChildren();
    if (led) {
      for (const choice of led.choices) {
        const button = h(
          "button",
          { type: "button", class: "btn seg", dataset: { action: "led", choice } },
          h("span", { class: "spinner", "aria-hidden": "true" }),
          h("span", {}, `${choice.slice(0, 1).toUpperCase()}${choice.slice(1)}`),
        );
        button.setAttribute("aria-label", `LED ${choice}`);
        button.addEventListener("click", () => this.run("led", { [led.param]: choice }, button));
        this.runner.adopt(this.thing, "led", button, { [led.param]: choice });
        this.ledControls.appendChild(button);
      }
    }
    for (const [name, specs] of Object.entries(actions)) {
      if (name === "led" && led) continue;
      cards.push(this.buildAction(name, specs || {}));
    }
    this.actionsGrid.replaceChildren(...cards);
    if (!cards.length && !led) this.actionsGrid.appendChild(h("p", { class: "empty" }, "This device advertises no actions."));
  }

  buildAction(name, specs) {
    const quick = quickChoices(specs);
    const card = h("div", { class: "action-card", dataset: { action: name } }, h("h4", {}, name));
    if (quick) {
      const group = h("div", { class: "segmented", role: "group", "aria-label": name });
      for (const choice of quick.choices) {
        const button = h(
          "button",
          { type: "button", class: "btn seg", dataset: { action: name, choice } },
          h("span", { class: "spinner", "aria-hidden": "true" }),
          h("span", {}, choice),
        );
        button.setAttribute("aria-label", `${name} ${choice}`);
        button.addEventListener("click", () => this.run(name, { [quick.param]: choice }, button));
        this.runner.adopt(this.thing, name, button, { [quick.param]: choice });
        group.appendChild(button);
      }
      card.appendChild(group);
      return card;
    }
    const fields = Object.entries(specs).map(([param, spec]) => buildField(param, spec));
    const submit = h(
      "button",
      { type: "submit", class: "btn btn-action", dataset: { action: name } },
      h("span", { class: "spinner", "aria-hidden": "true" }),
      h("span", {}, fields.length ? `Run ${name}` : name),
    );
    this.runner.adopt(this.thing, name, submit);
    const form = h("form", { class: "action-form", novalidate: true }, ...fields, submit);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run(name, readParams(form), submit);
    });
    card.appendChild(form);
    return card;
  }

  run(action, params, button) {
    if (isBusy(button)) return;
    const { ifOffline, ttlMs } = this.sendOptions;
    let { timeoutMs } = this.sendOptions;
    // Queued for a device known to be offline: the card follows it, so do not hold the request open.
    if (ifOffline === "queue" && this.connected === false) timeoutMs = Math.min(timeoutMs, 1000);
    this.runner.run({ thing: this.thing, action, params, button, timeoutMs, ifOffline, ttlMs });
  }

  updateState(desired, reported, delta) {
    const d = flatten(desired);
    const r = flatten(reported);
    const dl = flatten(delta);
    this.updateTelemetry(reported.telemetry, reported.agent);
    // Telemetry and agent facts have their own places unless someone wants them changed.
    const elsewhere = (k) => k.startsWith("actions.") || ((k.startsWith("telemetry.") || k.startsWith("agent.")) && !(k in d));
    const keys = [...new Set([...Object.keys(r), ...Object.keys(d)])].filter((k) => !elsewhere(k)).sort();
    const rows = keys.map((key) => {
      const pending = key in dl || Object.keys(dl).some((k) => k.startsWith(`${key}.`));
      return h(
        "tr",
        { class: pending ? "is-delta" : "", dataset: { key } },
        h("th", { scope: "row" }, key),
        h("td", {}, key in d ? formatLeaf(key, d[key]) : "—", pending ? h("span", { class: "tag" }, "pending") : null),
        h("td", {}, key in r ? formatLeaf(key, r[key]) : "—"),
      );
    });
    const sig = JSON.stringify([d, r, dl]);
    if (this.stateBody.dataset.sig === sig) return;
    this.stateBody.dataset.sig = sig;
    this.stateBody.replaceChildren(...rows);
  }

  updateTelemetry(telemetry, agent) {
    const t = telemetry && typeof telemetry === "object" ? telemetry : {};
    const entries = Object.entries(t).filter(([k, v]) => k !== "at" && (v === null || typeof v !== "object"));
    this.telemetry.hidden = entries.length === 0;
    const sig = JSON.stringify(entries);
    if (this.tiles.dataset.sig !== sig) {
      this.tiles.dataset.sig = sig;
      this.tiles.replaceChildren(
        ...entries.map(([k, v]) =>
          h("div", { class: "tile", dataset: { key: k } }, h("span", { class: "tile-value" }, formatValue(v)), h("span", { class: "tile-label" }, k)),
        ),
      );
    }
    setText(this.telemetryAt, typeof t.at === "number" ? `Reported ${relativeTime(t.at)} (${absoluteTime(t.at)})` : "");
    const a = agent && typeof agent === "object" ? agent : null;
    this.agent.hidden = !a;
    if (a) setText(this.agent, [a.kind, a.version, a.hardware].filter((x) => typeof x === "string").join(" · "));
  }

  updateHistory(commands) {
    const list = Array.isArray(commands) ? commands.slice() : [];
    const when = (c) => c.doneAt || c.issuedAt || c.at || 0;
    list.sort((a, b) => when(b) - when(a));
    // The relative times are part of what is shown: "just now" becomes "2 min ago" on a refresh.
    const sig = JSON.stringify([list, list.slice(0, 16).map((c) => relativeTime(when(c)))]);
    if (this.historyBody.dataset.sig === sig) return;
    this.historyBody.dataset.sig = sig;
    this.historyEmpty.hidden = list.length > 0;
    this.historyBody.replaceChildren(
      ...list.slice(0, 16).map((c) => {
        const params = describeParams(c.params);
        const outcome =
          c.error !== undefined && c.error !== null
            ? formatValue(c.error)
            : c.result !== undefined && c.result !== null
              ? formatValue(c.result)
              : "";
        const t = when(c);
        return h(
          "tr",
          { dataset: { id: c.id || "", state: c.state || "" } },
          h("td", {}, h("time", { title: absoluteTime(t) }, t ? relativeTime(t) : "—")),
          h("td", {}, h("span", { class: "mono" }, c.action || "?"), params ? h("small", { class: "params" }, ` ${params}`) : null),
          h("td", {}, stateChip(c.state)),
          h(
            "td",
            { class: "mono outcome-cell" },
            outcome,
            typeof c.latencyMs === "number" ? h("small", { class: "params" }, ` · ${formatMs(c.latencyMs)}`) : null,
          ),
        );
      }),
    );
  }
}
