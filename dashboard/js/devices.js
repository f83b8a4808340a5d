// The device list: one card per thing, updated in place so focus and
// checkbox state survive every refresh.

import { h, setText } from "./dom.js";
import { absoluteTime, formatValue, ledIsOn, relativeTime } from "./format.js";

// The few reported values worth a glance; the detail view shows them all.
export function keyValues(reported, limit = 4) {
  const out = [];
  const r = reported && typeof reported === "object" ? reported : {};
  const skip = new Set(["actions", "agent", "telemetry"]);
  const seen = new Set();
  for (const key of ["led", "relay", "interval"]) {
    if (key in r && typeof r[key] !== "object") {
      out.push([key, r[key]]);
      seen.add(key);
    }
  }
  for (const [key, value] of Object.entries(r)) {
    if (out.length >= limit) break;
    if (seen.has(key) || skip.has(key) || (value && typeof value === "object")) continue;
    out.push([key, value]);
  }
  const telemetry = r.telemetry && typeof r.telemetry === "object" ? r.telemetry : {};
  for (const [key, value] of Object.entries(telemetry)) {
    if (out.length >= limit) break;
    if (value === null || typeof value !== "object") out.push([key, value]);
  }
  return out.slice(0, limit);
}

export function presenceBadge(connected) {
  return h(
    "span",
    { class: `badge ${connected ? "badge-online" : "badge-offline"}` },
    connected ? "Online" : "Offline",
  );
}

export function updateBadge(el, connected) {
  el.className = `badge ${connected ? "badge-online" : "badge-offline"}`;
  setText(el, connected ? "Online" : "Offline");
}

export class DeviceList {
  constructor(root, { onOpen, onSelectionChange }) {
    this.root = root;
    this.onOpen = onOpen;
    this.onSelectionChange = onSelectionChange;
    this.items = new Map(); // thing -> {el, refs}
    this.selected = new Set();
    this.current = null;
    this.devices = [];
  }

  update(devices) {
    this.devices = devices;
    const names = new Set(devices.map((d) => d.thing));
    for (const [thing, item] of this.items) {
      if (!names.has(thing)) {
        item.el.remove();
        this.items.delete(thing);
        this.selected.delete(thing);
      }
    }
    devices.forEach((device, index) => {
      let item = this.items.get(device.thing);
      if (!item) {
        item = this.build(device.thing);
        this.items.set(device.thing, item);
      }
      if (this.root.children[index] !== item.el) this.root.insertBefore(item.el, this.root.children[index] || null);
      this.fill(item, device);
    });
  }

  build(thing) {
    const checkbox = h("input", {
      type: "checkbox",
      class: "device-select",
      "aria-label": `Select ${thing} for a bulk command`,
    });
    checkbox.addEventListener("change", () => {
      if (checkbox.checked) this.selected.add(thing);
      else this.selected.delete(thing);
      this.onSelectionChange(new Set(this.selected));
    });
    const led = h("span", { class: "led led-small", "aria-hidden": "true" });
    const open = h("button", { type: "button", class: "device-open" }, led, h("span", { class: "device-name" }, thing));
    open.addEventListener("click", () => this.onOpen(thing));
    const badge = presenceBadge(false);
    const seen = h("time", { class: "device-seen" });
    const values = h("dl", { class: "kv" });
    const el = h(
      "li",
      { class: "device-card", dataset: { thing } },
      h("div", { class: "device-card-top" }, checkbox, open, badge),
      values,
      h("p", { class: "device-meta" }, seen),
    );
    return { el, refs: { checkbox, open, led, badge, seen, values } };
  }

  fill(item, device) {
    const { refs, el } = item;
    const reported = device.reported || {};
    el.classList.toggle("is-offline", !device.connected);
    el.dataset.connected = device.connected ? "true" : "false";
    updateBadge(refs.badge, device.connected);
    const on = "led" in reported ? ledIsOn(reported.led) : null;
    refs.led.className = `led led-small ${on === null ? "led-none" : on ? "led-on" : "led-off"}`;
    const since = relativeTime(device.lastSeen);
    setText(refs.seen, `${device.connected ? "Connected" : "Last seen"} ${since}`);
    if (typeof device.lastSeen === "number") {
      refs.seen.setAttribute("datetime", new Date(device.lastSeen).toISOString());
      refs.seen.title = absoluteTime(device.lastSeen);
    }
    const pairs = keyValues(reported);
    const signature = JSON.stringify(pairs);
    if (refs.values.dataset.sig !== signature) {
      refs.values.dataset.sig = signature;
      refs.values.replaceChildren(
        ...pairs.map(([k, v]) => h("div", { class: "kv-pair" }, h("dt", {}, k), h("dd", {}, formatValue(v)))),
      );
    }
    const isCurrent = this.current === device.thing;
    el.classList.toggle("is-current", isCurrent);
    if (isCurrent) refs.open.setAttribute("aria-current", "true");
    else refs.open.removeAttribute("aria-current");
    refs.checkbox.checked = this.selected.has(device.thing);
  }

  setCurrent(thing) {
    this.current = thing;
    for (const device of this.devices) {
      const item = this.items.get(device.thing);
      if (item) this.fill(item, device);
    }
  }

  selectAll() {
    for (const device of this.devices) this.selected.add(device.thing);
    for (const item of this.items.values()) item.refs.checkbox.checked = true;
    this.onSelectionChange(new Set(this.selected));
  }

  clearSelection() {
    this.selected.clear();
    for (const item of this.items.values()) item.refs.checkbox.checked = false;
    this.onSelectionChange(new Set());
  }
}
