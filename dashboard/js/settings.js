// Where the API is: config.json next to index.html (written by the local stack
// or the deploy), overridden per browser from the Settings panel (localStorage).

const STORAGE_KEY = "iotbridge.settings";

export async function loadDefaults() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (!response.ok) return {};
    const data = await response.json();
    return data && typeof data === "object" ? data : {};
  } catch {
    return {};
  }
}

export function loadOverrides() {
  try {
    const data = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}");
    return data && typeof data === "object" ? data : {};
  } catch {
    return {};
  }
}

export function saveOverrides(overrides) {
  const clean = {};
  for (const key of ["apiUrl", "apiKey"]) if (overrides[key]) clean[key] = overrides[key];
  if (Object.keys(clean).length) localStorage.setItem(STORAGE_KEY, JSON.stringify(clean));
  else localStorage.removeItem(STORAGE_KEY);
}

export function effective(defaults, overrides) {
  return {
    apiUrl: overrides.apiUrl || defaults.apiUrl || "",
    apiKey: overrides.apiKey || defaults.apiKey || "",
  };
}
