// Turning shadow values and times into short human text.

export function relativeTime(ms, now = Date.now()) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "never";
  const s = Math.round((now - ms) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const hrs = Math.round(m / 60);
  if (hrs < 48) return `${hrs} h ago`;
  return new Date(ms).toLocaleDateString();
}

export function absoluteTime(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  return new Date(ms).toLocaleString();
}

export function formatValue(value) {
  if (value === undefined) return "—";
  if (value === null) return "null";
  if (typeof value === "string") return value;
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Math.round(value * 100) / 100);
  if (typeof value === "boolean") return value ? "true" : "false";
  return JSON.stringify(value);
}

// Shadow leaves named like `at` or `startedAt` holding epoch milliseconds read better as times.
export function formatLeaf(key, value) {
  if (typeof value === "number" && value > 1e12 && value < 1e14 && /(^|\.)(at|[a-z]+At)$/.test(key)) {
    return new Date(value).toLocaleString();
  }
  return formatValue(value);
}

export function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

// {a: {b: 1}} -> {"a.b": 1}; arrays stay whole so a row shows them as JSON.
export function flatten(obj, prefix = "", out = {}) {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) return out;
  for (const [key, value] of Object.entries(obj)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
      flatten(value, path, out);
    } else {
      out[path] = value;
    }
  }
  return out;
}

// The LED as the device reports it: "on"/"off", true/false or 1/0.
export function ledIsOn(value) {
  if (typeof value === "string") return ["on", "true", "1"].includes(value.toLowerCase());
  return value === true || value === 1;
}

export const TERMINAL_STATES = new Set(["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "EXPIRED", "UNKNOWN"]);

export function isTerminal(state) {
  return TERMINAL_STATES.has(state);
}
