// Wiring: settings, the refresh loop, routing between the list and one device.

import { ApiClient, ApiError, explain, MAX_LIST_PAGES } from "./api.js";
import { BulkPanel } from "./bulk.js";
import { CommandRunner } from "./commands.js";
import { DetailView } from "./detail.js";
import { DeviceList } from "./devices.js";
import { $, setText } from "./dom.js";
import { Poller } from "./poller.js";
import { effective, loadDefaults, loadOverrides, saveOverrides } from "./settings.js";

const app = {
  defaults: {},
  client: null,
  devices: new Map(), // thing -> summary from GET /devices
  listMore: false, // the registry has more devices than the list shows
  detail: null,
  tick: 0,
  lastOk: 0,
  sendOptions: { timeoutMs: 10000, ifOffline: "fail", ttlMs: undefined },
};

const getClient = () => app.client;

function applySettings() {
  app.client = new ApiClient(effective(app.defaults, loadOverrides()));
  app.devices = new Map(); // another API (or key) may have other devices: read its list whole
}

// ---- status and errors -------------------------------------------------------

function setStatus(kind, text) {
  const el = $("#api-status");
  el.dataset.status = kind;
  setText($(".api-status-text", el), text);
}

function showBanner(err) {
  const info = explain(err);
  const banner = $("#banner");
  banner.dataset.code = err instanceof ApiError ? err.code : "ERROR";
  setText($(".banner-title", banner), info.title);
  setText($(".banner-text", banner), info.text);
  const settingsHelp = err instanceof ApiError && ["UNREACHABLE", "FORBIDDEN", "UNREADABLE"].includes(err.code);
  $(".banner-action", banner).hidden = !settingsHelp;
  banner.hidden = false;
}

function markOk() {
  app.lastOk = Date.now();
  $("#banner").hidden = true;
  setStatus("live", "Live");
}

function markFailed(err) {
  showBanner(err);
  const code = err instanceof ApiError ? err.code : "";
  setStatus("down", code === "FORBIDDEN" || code === "UNREADABLE" ? "Key refused" : code === "UNREACHABLE" ? "API unreachable" : "API error");
}

// ---- data --------------------------------------------------------------------

// The list is read whole once; after that one page per tick, in turn, so that a tick costs one
// request however large the fleet (the open device is refreshed on its own). A device gone from
// the registry leaves the list when a round of pages ends without it.
const listRound = { token: null, pages: 0, seen: new Set() };

async function refreshList() {
  if (!app.devices.size) {
    const data = await app.client.listDevices();
    app.devices = new Map(data.devices.map((d) => [d.thing, d]));
    app.listMore = data.more;
  } else {
    const data = await app.client.listPage(listRound.token);
    for (const d of data.devices) {
      app.devices.set(d.thing, d);
      listRound.seen.add(d.thing);
    }
    listRound.pages += 1;
    listRound.token = listRound.pages < MAX_LIST_PAGES ? data.nextToken : null;
    if (!listRound.token) {
      for (const thing of [...app.devices.keys()]) if (!listRound.seen.has(thing)) app.devices.delete(thing);
      app.listMore = Boolean(data.nextToken);
      listRound.pages = 0;
      listRound.seen = new Set();
    }
  }
  renderList();
  app.bulk.refreshActions();
  if (app.detail && !app.detailLoaded && app.devices.has(app.detail.thing)) {
    app.detail.update(app.devices.get(app.detail.thing));
  }
}

function renderList() {
  const devices = [...app.devices.values()];
  devices.sort((a, b) => String(a.thing).localeCompare(String(b.thing), undefined, { numeric: true }));
  app.list.update(devices);
  const online = devices.filter((d) => d.connected).length;
  const shown = app.listMore ? ` · the first ${devices.length} shown` : "";
  setText($("#devices-summary"), devices.length ? `${online} online · ${devices.length - online} offline${shown}` : "");
  $("#devices-empty").hidden = devices.length > 0;
}

async function refreshDetail() {
  const view = app.detail;
  if (!view) return;
  try {
    const device = await app.client.getDevice(view.thing);
    if (app.detail === view) {
      app.detailLoaded = true;
      view.update(device);
    }
    // Keep the list's card in step with what the detail just learned, for free.
    const summary = app.devices.get(view.thing);
    if (summary && device.shadow && device.shadow.state) {
      summary.connected = device.connected;
      summary.lastSeen = device.lastSeen;
      summary.reported = device.shadow.state.reported || summary.reported;
      renderList(); // the card and the online count
    }
  } catch (err) {
    if (err instanceof ApiError && err.code === "DEVICE_NOT_FOUND" && app.detail === view) {
      view.setMissing(true);
      return; // the API itself is fine
    }
    if (err instanceof ApiError && err.code === "INVALID_THING_NAME" && app.detail === view) {
      view.setMissing(true, `"${view.thing}" is not a device name: ${err.message}`);
      return; // a bad link, not an API in trouble
    }
    throw err;
  }
}

async function refreshHistory() {
  const view = app.detail;
  if (!view || view.isMissing) return;
  const data = await app.client.listCommands(view.thing);
  if (app.detail === view) view.updateHistory(data.commands || []);
}

// One request per tick: the open device is refreshed most, the list and history in turn.
async function tick() {
  let job;
  if (!app.devices.size) job = refreshList;
  else if (app.detail) job = [refreshDetail, refreshList, refreshDetail, refreshHistory][app.tick++ % 4];
  else job = refreshList;
  try {
    await job();
    markOk();
  } catch (err) {
    markFailed(err);
    throw err;
  }
}

// After an outcome, show its effect now rather than on the next turn.
async function refreshThing(thing) {
  if (!app.detail || app.detail.thing !== thing) {
    app.poller.poke();
    return;
  }
  try {
    await refreshDetail();
    await refreshHistory();
    markOk();
  } catch (err) {
    markFailed(err);
  }
}

// ---- routing -----------------------------------------------------------------

function thingFromHash() {
  const match = /^#\/devices\/([^/]+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function route({ focus = false } = {}) {
  const thing = thingFromHash();
  if (app.detail && app.detail.thing === thing) return;
  const root = $("#detail");
  if (!thing) {
    app.detail = null;
    document.body.classList.remove("has-selection");
    root.replaceChildren(app.placeholder);
    app.list.setCurrent(null);
    return;
  }
  app.detailLoaded = false;
  app.detail = new DetailView(root, {
    thing,
    runner: app.runner,
    getClient,
    sendOptions: app.sendOptions,
    onBack: () => {
      location.hash = "";
      route(); // now, not on hashchange: the list must be visible before it can take focus
      const item = app.list.items.get(thing);
      if (item) item.refs.open.focus();
    },
    onChanged: refreshThing,
  });
  document.body.classList.add("has-selection");
  app.list.setCurrent(thing);
  if (app.devices.has(thing)) app.detail.update(app.devices.get(thing));
  app.tick = 0;
  if (focus) app.detail.focusTitle();
  app.poller.poke();
  refreshHistory().catch(() => {});
}

// ---- settings dialog -----------------------------------------------------------

function wireSettings() {
  const dialog = $("#settings");
  const url = $("#api-url");
  const key = $("#api-key");
  const toggle = $("#toggle-key");
  const open = () => {
    const overrides = loadOverrides();
    url.value = overrides.apiUrl || "";
    key.value = overrides.apiKey || "";
    setText($("#api-url-default"), app.defaults.apiUrl ? `Default: ${app.defaults.apiUrl}` : "No default from config.json.");
    setText($("#api-key-default"), app.defaults.apiKey ? "Default key from config.json is set." : "No default key from config.json.");
    dialog.returnValue = ""; // Escape keeps the previous value: never let it mean "save"
    dialog.showModal();
    url.focus();
  };
  $("#open-settings").addEventListener("click", open);
  $(".banner-action").addEventListener("click", open);
  toggle.addEventListener("click", () => {
    const show = key.type === "password";
    key.type = show ? "text" : "password";
    toggle.setAttribute("aria-pressed", String(show));
    setText(toggle, show ? "Hide" : "Show");
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") saveOverrides({ apiUrl: url.value.trim(), apiKey: key.value.trim() });
    else if (dialog.returnValue === "reset") saveOverrides({});
    else return;
    applySettings();
    setStatus("connecting", "Connecting…");
    app.poller.failures = 0;
    app.poller.poke();
    $("#open-settings").focus();
  });
}

// ---- start ---------------------------------------------------------------------

async function main() {
  app.defaults = await loadDefaults();
  applySettings();
  app.placeholder = $("#detail .placeholder");
  app.runner = new CommandRunner({ getClient, onSettled: refreshThing });
  app.runner.onCard = (thing, el) => {
    if (app.detail && app.detail.thing === thing) app.detail.addOutcome(el);
  };
  app.bulk = new BulkPanel($("#bulk"), {
    getClient,
    getDevices: () => app.devices,
    onClear: () => app.list.clearSelection(),
    onSettled: (thing) => refreshThing(thing),
  });
  app.list = new DeviceList($("#device-list"), {
    onOpen: (thing) => {
      const target = `#/devices/${encodeURIComponent(thing)}`;
      if (location.hash !== target) location.hash = target;
      route({ focus: true });
    },
    onSelectionChange: (things) => app.bulk.setSelection(things),
  });
  $("#select-all").addEventListener("click", () => app.list.selectAll());
  // One request every 2 s while visible, however large the fleet (a command's own answer comes
  // with its POST, not from polling): one open tab makes ~43,000 requests a day, within the
  // usage plan's default quota.
  app.poller = new Poller(tick, { interval: 2000, hiddenInterval: 15000, maxBackoff: 30000 });
  let countdown = null;
  app.poller.onSchedule = (ms, failures) => {
    clearInterval(countdown);
    const retry = $(".banner-retry");
    if (failures === 0) {
      setText(retry, "");
      return;
    }
    const at = Date.now() + ms;
    const show = () => setText(retry, `Retrying in ${Math.max(0, Math.ceil((at - Date.now()) / 1000))} s.`);
    show();
    countdown = setInterval(show, 1000);
  };
  $(".banner-retry-now").addEventListener("click", () => {
    app.poller.failures = 0;
    app.poller.poke();
  });
  window.addEventListener("hashchange", () => route());
  wireSettings();
  route();
  app.poller.start();
  if (!app.client.apiUrl) {
    showBanner(new ApiError({ status: 0, code: "UNREACHABLE", message: "No API URL is configured." }));
  }
}

main();
