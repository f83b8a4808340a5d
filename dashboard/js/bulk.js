// A command to every selected device at once, with per-device progress.

import { explain } from "./api.js";
import { QUEUE_TTLS, stateChip } from "./commands.js";
import { h, setText } from "./dom.js";
import { isTerminal } from "./format.js";
import { buildField, readParams } from "./specs.js";

// The job answer as [{thing, state, error?}], whatever container the API uses.
export function jobEntries(job) {
  const source = job && (job.devices || job.things || job.results || job.commands || job.progress);
  if (Array.isArray(source)) {
    return source.map((e) => ({ thing: e.thing || e.name, state: e.state, error: e.error, id: e.id }));
  }
  if (source && typeof source === "object") {
    return Object.entries(source).map(([thing, e]) =>
      typeof e === "string" ? { thing, state: e } : { thing, state: e && e.state, error: e && e.error, id: e && e.id },
    );
  }
  return [];
}

export class BulkPanel {
  constructor(root, { getClient, getDevices, onClear, onSettled }) {
    this.root = root;
    this.getClient = getClient;
    this.getDevices = getDevices; // () => Map thing -> summary
    this.onClear = onClear;
    this.onSettled = onSettled;
    this.things = [];
    this.notQueued = new Map();
    this.sig = null;
    this.count = h("p", { class: "bulk-count" });
    this.select = h("select", { id: "bulk-action" });
    this.fields = h("div", { class: "bulk-fields" });
    // A device offline when the job reaches it runs the command when it reconnects, within this.
    this.ttl = h(
      "select",
      { id: "bulk-ttl" },
      h("option", { value: "60000" }, "1 minute"),
      ...QUEUE_TTLS.map(([ms, label]) => h("option", { value: String(ms) }, label)),
    );
    this.send = h("button", { type: "submit", class: "btn btn-primary" }, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", { class: "label" }, "Send"));
    const clear = h("button", { type: "button", class: "btn btn-ghost" }, "Clear selection");
    clear.addEventListener("click", () => this.onClear());
    this.progress = h("ul", { class: "bulk-progress", "aria-live": "polite", "aria-label": "Bulk command progress" });
    this.status = h("p", { class: "form-status", role: "status" });
    this.again = h("button", { type: "button", class: "btn btn-ghost bulk-again" }, "Send again to the devices not sent");
    this.again.hidden = true;
    this.form = h(
      "form",
      { class: "bulk-form", novalidate: true },
      h("div", { class: "field" }, h("label", { for: "bulk-action" }, "Action"), this.select),
      this.fields,
      h("div", { class: "field" }, h("label", { for: "bulk-ttl" }, "Devices offline get it if back within"), this.ttl),
      h("div", { class: "form-row" }, this.send, clear),
    );
    this.select.addEventListener("change", () => this.renderFields());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    root.replaceChildren(
      h("div", { class: "bulk-head" }, h("h2", { id: "bulk-title" }, "Bulk command"), this.count),
      this.form,
      this.status,
      this.again,
      this.progress,
    );
    root.hidden = true;
  }

  // Actions every selected device advertises, with the first device's specs.
  commonActions() {
    const devices = this.getDevices();
    let common = null;
    for (const thing of this.things) {
      const actions = (devices.get(thing) || {}).actions || {};
      if (common === null) common = { ...actions };
      else for (const name of Object.keys(common)) if (!(name in actions)) delete common[name];
    }
    return common || {};
  }

  setSelection(things) {
    this.things = [...things].sort();
    this.root.hidden = this.things.length === 0 && !this.progress.children.length;
    // The first few by name: a fleet's worth of names would fill the screen.
    const named = this.things.slice(0, 5).join(", ");
    const more = this.things.length > 5 ? ` and ${this.things.length - 5} more` : "";
    setText(this.count, `${this.things.length} device${this.things.length === 1 ? "" : "s"} selected: ${named}${more}`);
    setText(this.send.querySelector(".label"), `Send to ${this.things.length} device${this.things.length === 1 ? "" : "s"}`);
    this.refreshActions();
  }

  refreshActions() {
    const actions = this.commonActions();
    const sig = JSON.stringify(actions);
    if (sig === this.sig) return;
    this.sig = sig;
    const previous = this.select.value;
    this.actions = actions;
    this.select.replaceChildren(...Object.keys(actions).map((name) => h("option", { value: name }, name)));
    if (previous in actions) this.select.value = previous;
    this.renderFields();
  }

  renderFields() {
    const specs = (this.actions || {})[this.select.value] || {};
    this.fields.replaceChildren(...Object.entries(specs).map(([param, spec]) => buildField(param, spec)));
  }

  async submit() {
    if (this.send.getAttribute("aria-disabled") === "true") return;
    const action = this.select.value;
    if (!action || !this.things.length) {
      setText(this.status, "Select devices that share an action first.");
      return;
    }
    await this.run(action, readParams(this.fields), this.things.slice());
  }

  // One job: send, then follow it until every device is done or was not sent.
  async run(action, params, things) {
    this.again.hidden = true;
    this.send.classList.add("is-pending");
    this.send.setAttribute("aria-disabled", "true");
    this.send.setAttribute("aria-busy", "true");
    setText(this.status, `Sending ${action} to ${things.length} devices…`);
    this.status.dataset.tone = "";
    this.renderProgress(things.map((thing) => ({ thing, state: "QUEUED" })));
    try {
      const started = await this.getClient().sendBulk({ action, params, things, ttlMs: Number(this.ttl.value) });
      const jobId = started.jobId;
      // Targets the API could not queue on never progress: show why and do not wait for them.
      this.notQueued = new Map((started.notQueued || []).map((e) => [e.thing, e.code || "NOT_SENT"]));
      // Large jobs are queued in pages after the 202: `queued` counts only what was queued before it.
      const failed = this.notQueued.size;
      setText(
        this.status,
        failed
          ? `Job ${jobId}: ${action} could not be queued on ${failed} of ${things.length} devices.`
          : `Job ${jobId}: ${action} accepted for ${things.length} devices.`,
      );
      await this.follow(jobId, action, params);
    } catch (err) {
      const info = explain(err);
      this.status.dataset.tone = "bad";
      setText(this.status, `${info.title}: ${info.text}`);
    } finally {
      this.send.classList.remove("is-pending");
      this.send.removeAttribute("aria-disabled");
      this.send.removeAttribute("aria-busy");
    }
  }

  // Devices the job did not reach (a full queue, an id they already had) can be sent a new job:
  // it has an id of its own, so none of them runs the command twice.
  offerAgain(action, params, things) {
    this.again.hidden = things.length === 0;
    if (!things.length) return;
    setText(this.again, `Send ${action} again to ${things.length} device${things.length === 1 ? "" : "s"} not sent`);
    this.again.onclick = () => this.run(action, params, things);
  }

  async follow(jobId, action, params) {
    let delay = 1000;
    const giveUpAt = Date.now() + 5 * 60 * 1000;
    while (Date.now() < giveUpAt) {
      await new Promise((r) => setTimeout(r, delay));
      try {
        const job = await this.getClient().getJob(jobId);
        const entries = jobEntries(job).map((e) =>
          this.notQueued.has(e.thing) && !isTerminal(e.state) ? { ...e, state: "NOT_SENT", error: this.notQueued.get(e.thing) } : e,
        );
        this.renderProgress(entries);
        const done = entries.filter((e) => isTerminal(e.state) || e.state === "NOT_SENT").length;
        // NOT_SENT is final only once the job is complete: until then the fan-out may try again.
        const final = entries.filter((e) => isTerminal(e.state)).length;
        if (job.complete || (entries.length && final === entries.length)) {
          const ok = entries.filter((e) => e.state === "SUCCEEDED").length;
          const notSent = entries.filter((e) => e.state === "NOT_SENT").map((e) => e.thing);
          this.status.dataset.tone = ok === entries.length ? "ok" : "bad";
          setText(
            this.status,
            `${action}: ${ok} of ${entries.length} succeeded.` + (notSent.length ? ` ${notSent.length} not sent.` : ""),
          );
          this.offerAgain(action, params, job.complete ? notSent : []);
          for (const e of entries) this.onSettled(e.thing);
          return;
        }
        setText(this.status, `${action}: ${done} of ${entries.length} done…`);
        delay = Math.min(delay + 500, 4000);
      } catch (err) {
        const info = explain(err);
        setText(this.status, `Following job ${jobId}: ${info.title}. Retrying…`);
        delay = Math.min(delay * 2, 15000);
      }
    }
  }

  renderProgress(entries) {
    this.root.hidden = false;
    this.progress.replaceChildren(
      ...entries.map((e) =>
        h(
          "li",
          { dataset: { thing: e.thing || "", state: e.state || "" } },
          h("span", { class: "mono" }, e.thing || "?"),
          stateChip(e.state),
          e.error ? h("small", { class: "params" }, typeof e.error === "string" ? e.error : JSON.stringify(e.error)) : null,
        ),
      ),
    );
  }
}
