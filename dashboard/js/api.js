// The HTTP API client: one place that knows headers, JSON and how errors look.
// Every failure becomes an ApiError with a code the views can explain.

export class ApiError extends Error {
  constructor({ status, code, message, details, cause }) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0 when the API could not be reached at all
    this.code = code;
    this.details = details;
    this.cause = cause;
  }
}

export const UNREACHABLE = "UNREACHABLE";
export const FORBIDDEN = "FORBIDDEN";
export const UNREADABLE = "UNREADABLE"; // answered without CORS headers: a refused key, or a foreign origin

export const MAX_LIST_PAGES = 20; // the list shows at most this many pages of devices (1,000)

export class ApiClient {
  constructor({ apiUrl, apiKey }) {
    this.apiUrl = String(apiUrl || "").replace(/\/+$/, "");
    this.apiKey = apiKey || "";
  }

  url(path) {
    return `${this.apiUrl}${path}`;
  }

  async request(method, path, body) {
    const headers = { accept: "application/json" };
    if (this.apiKey) headers["x-api-key"] = this.apiKey;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(this.url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw await this.whyUnreadable(err);
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) throw toApiError(response.status, data);
    return { status: response.status, data: data ?? {}, location: response.headers.get("location") };
  }

  // fetch() failed: either nothing answers, or something answered without CORS
  // headers. API Gateway's own 403 (wrong key) is the usual case of the second,
  // so probe without custom headers (an opaque no-cors request) to tell them apart.
  async whyUnreadable(err) {
    if (!this.apiUrl) {
      return new ApiError({ status: 0, code: UNREACHABLE, message: "No API URL is configured.", cause: err });
    }
    try {
      await fetch(this.url("/health"), { mode: "no-cors", cache: "no-store" });
    } catch {
      return new ApiError({ status: 0, code: UNREACHABLE, message: `Cannot reach the API at ${this.apiUrl}.`, cause: err });
    }
    return new ApiError({
      status: 0,
      code: UNREADABLE,
      message: `The API at ${this.apiUrl} answered, but the browser may not read the answer.`,
      cause: err,
    });
  }

  // Every page of the list (50 devices each), up to `maxPages`: a fleet past one page is shown whole.
  async listDevices({ maxPages = MAX_LIST_PAGES } = {}) {
    const devices = [];
    let token = null;
    for (let page = 0; page < maxPages; page += 1) {
      const data = await this.listPage(token);
      devices.push(...data.devices);
      token = data.nextToken;
      if (!token) break;
    }
    return { devices, more: Boolean(token) };
  }

  // One page of GET /devices: { devices, nextToken } (null after the last).
  async listPage(token) {
    const query = token ? `?nextToken=${encodeURIComponent(token)}` : "";
    const { data } = await this.request("GET", `/devices${query}`);
    return { devices: Array.isArray(data.devices) ? data.devices : [], nextToken: data.nextToken || null };
  }

  getDevice(thing) {
    return this.request("GET", `/devices/${encodeURIComponent(thing)}`).then((r) => r.data);
  }

  listCommands(thing) {
    return this.request("GET", `/devices/${encodeURIComponent(thing)}/commands`).then((r) => r.data);
  }

  getCommand(thing, id) {
    return this.request("GET", `/devices/${encodeURIComponent(thing)}/commands/${encodeURIComponent(id)}`).then(
      (r) => r.data,
    );
  }

  // Resolves to {status, data}: 200 carries the outcome, 202 a pending state.
  // The command carries an id of ours, so an answer lost on the way (a dropped
  // connection, a gateway error) is asked again with the same id: the API then
  // answers for the same command, and the device never runs it twice.
  sendCommand(thing, body) {
    return this.postOnce(`/devices/${encodeURIComponent(thing)}/commands`, { id: newId(), ...body });
  }

  sendBulk(body) {
    return this.postOnce("/commands", { id: newId(), ...body }).then((r) => r.data);
  }

  async postOnce(path, body, { tries = 3, pauseMs = 1000 } = {}) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.request("POST", path, body);
      } catch (err) {
        const lost = err instanceof ApiError && (err.status === 0 || err.status >= 500 || err.code === "THROTTLED");
        if (!lost || err.code === FORBIDDEN) throw err;
        if (attempt >= tries) {
          err.maybeSent = body.id; // the views say so: it may run, and a retry with this id would not run it twice
          throw err;
        }
        await new Promise((resolve) => setTimeout(resolve, pauseMs * attempt));
      }
    }
  }

  getJob(jobId) {
    return this.request("GET", `/commands/jobs/${encodeURIComponent(jobId)}`).then((r) => r.data);
  }

  patchDesired(thing, state) {
    return this.request("PATCH", `/devices/${encodeURIComponent(thing)}/desired`, { state }).then((r) => r.data);
  }
}

// A command id the API accepts ([a-zA-Z0-9_-], at most 48), made as the API makes its own
// (iotbridge_contract.commands.new_id): 128 random bits as 26 base32 characters (a-z, 2-7).
const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

export function newId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  let id = "";
  let value = 0;
  let bits = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      id += BASE32[(value >>> bits) & 31];
    }
    value &= (1 << bits) - 1;
  }
  return bits ? id + BASE32[(value << (5 - bits)) & 31] : id;
}

function toApiError(status, data) {
  const body = data && typeof data === "object" ? data : {};
  // No route of ours answers 403: it is API Gateway refusing a missing or wrong key,
  // as {"message": "Forbidden"} or, with GatewayResponses, {"code": "INVALID_API_KEY", …}.
  if (status === 403) {
    return new ApiError({ status, code: FORBIDDEN, message: String(body.message || "Forbidden"), details: body.code });
  }
  if (status === 429 && !body.code) {
    return new ApiError({ status, code: "THROTTLED", message: String(body.message || "Too Many Requests") });
  }
  return new ApiError({
    status,
    code: typeof body.code === "string" ? body.code : `HTTP_${status}`,
    message: typeof body.message === "string" ? body.message : `The API answered ${status}.`,
    details: body.details,
  });
}

const VALIDATION_CODES = new Set(["VALIDATION_ERROR", "INVALID_PARAMS", "UNKNOWN_ACTION", "INVALID_JSON"]);

// A sentence a person can act on, for any ApiError; `thing` names the device when known.
export function explain(err, thing) {
  if (!(err instanceof ApiError)) {
    return { title: "Something went wrong", text: String(err && err.message ? err.message : err), kind: "error" };
  }
  if (err.maybeSent) {
    return {
      title: "No answer",
      text: `The command may have been queued (id ${err.maybeSent}), but its answer never arrived. Check the device's command history before sending it again.`,
      kind: "warning",
    };
  }
  const who = thing || (err.details && err.details.thing) || "The device";
  switch (err.code) {
    case UNREACHABLE:
      return {
        title: "API unreachable",
        text: `${err.message} Check that it is running, or change the API URL in Settings.`,
        kind: "error",
      };
    case UNREADABLE:
      return {
        title: "API key refused?",
        text: `${err.message} Usually the API key is missing or wrong, or the API does not allow this page's origin. Check the key in Settings.`,
        kind: "error",
      };
    case FORBIDDEN:
      return {
        title: "API key refused",
        text: "The API answered 403 Forbidden: the API key is missing or wrong. Set the right key in Settings.",
        kind: "error",
      };
    case "DEVICE_OFFLINE":
      return {
        title: `${who} is offline`,
        text: `The command was not sent because ${who} is offline. Queue it to run when the device reconnects, or try again later.`,
        kind: "offline",
      };
    case "DEVICE_NOT_FOUND":
      return { title: "Unknown device", text: `${who} is not known to the API.`, kind: "error" };
    case "TOO_MANY_PENDING":
      return {
        title: "Too many pending commands",
        text: `${who} already has 10 commands waiting. Wait for some to finish.`,
        kind: "warning",
      };
    case "QUOTA_EXCEEDED":
      return {
        title: "API quota used up",
        text: "This API key has made all the requests its usage plan allows for the period (QuotaLimit). It works again when the period starts over, or raise the quota.",
        kind: "error",
      };
    case "THROTTLED":
      return { title: "Slow down", text: "The request was throttled. Try again in a moment.", kind: "warning" };
    default:
      if (VALIDATION_CODES.has(err.code)) {
        return { title: "Invalid command", text: validationText(err), kind: "invalid" };
      }
      return { title: `Error ${err.status || ""} ${err.code}`.trim(), text: err.message, kind: "error" };
  }
}

function validationText(err) {
  let text = err.message;
  const d = err.details;
  if (err.code === "UNKNOWN_ACTION" && d && Array.isArray(d.known)) {
    text += ` Known actions: ${d.known.join(", ")}.`;
  } else if (Array.isArray(d) && d.length) {
    const parts = d.slice(0, 4).map((p) => {
      if (p && typeof p === "object") {
        const where = Array.isArray(p.loc) ? p.loc.join(".") : "";
        return `${where ? where + ": " : ""}${p.msg || p.message || JSON.stringify(p)}`;
      }
      return String(p);
    });
    text += ` (${parts.join("; ")})`;
  }
  return text;
}
