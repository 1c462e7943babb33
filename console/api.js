// The REST API of the same origin (Envoy's transcoder): every call, the token, the errors.

const TOKEN_KEY = "inference-console.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer of the API: HTTP status, gRPC code and the API's own message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** "HTTP 413 (RESOURCE_EXHAUSTED): <the API's message>" */
  describe() {
    const name = CODES[this.code] || "";
    return `HTTP ${this.status}${name ? ` (${name})` : ""}: ${this.message}`;
  }
}

const CODES = {
  1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
  6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
  10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
  15: "DATA_LOSS", 16: "UNAUTHENTICATED",
};

function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  const bearer = token();
  if (bearer) result.Authorization = `Bearer ${bearer}`;
  return result;
}

/** A query string; encodeURIComponent writes a space as %20 (the transcoder reads '+' as '+'). */
export function query(params) {
  const parts = Object.entries(params)
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === "string") {
      return new ApiError(response.status, body.code, body.message);
    }
  } catch {
    // not JSON: the status line is all there is
  }
  return new ApiError(response.status, 0, text.trim() || response.statusText || "no message");
}

async function call(method, path, { body, signal } = {}) {
  // no-store: nothing the API answers (images, metadata) is written to the browser's HTTP cache.
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, 14, `the API did not answer (${error.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

const enc = encodeURIComponent;

export async function listInvocations({ filter, pageSize, pageToken, signal }) {
  const q = query({ filter, page_size: pageSize, page_token: pageToken });
  return (await call("GET", `/v1/invocations${q}`, { signal })).json();
}

export async function getInvocation(id, { full = false } = {}) {
  const q = query({ view: full ? "INVOCATION_VIEW_FULL" : "INVOCATION_VIEW_BASIC" });
  return (await (await call("GET", `/v1/invocations/${enc(id)}${q}`)).json()).invocation;
}

export async function deleteInvocation(id) {
  await call("DELETE", `/v1/invocations/${enc(id)}`);
}

export async function listModels() {
  return (await (await call("GET", "/v1/models")).json()).models || [];
}

/** The render's URL; `format` "jpeg" asks for a JPEG (thumbnails: smaller, cheaper to draw). */
export function renderUrl(id, maxDimension = 0, format = "") {
  const params = { max_dimension: maxDimension || "" };
  if (format === "jpeg") params.format = "RENDER_FORMAT_JPEG";
  return `/v1/invocations/${enc(id)}:render${query(params)}`;
}

/** The render as a blob (fetched with the token: an <img src> could not send it). */
export async function render(id, maxDimension = 0, signal, format = "") {
  return (await call("GET", renderUrl(id, maxDimension, format), { signal })).blob();
}

/** Invoke with upload progress (XMLHttpRequest: fetch reports none): onProgress(sent, total). */
export function invoke(request, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/invocations");
    for (const [name, value] of Object.entries(headers({ "Content-Type": "application/json" }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // not JSON
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body.invocation);
      else if (body && typeof body.message === "string") {
        reject(new ApiError(xhr.status, body.code, body.message));
      } else {
        reject(new ApiError(xhr.status, 0, xhr.responseText.trim() || xhr.statusText));
      }
    };
    xhr.onerror = () =>
      reject(new ApiError(0, 14, "the connection closed before an answer (over the request size limit?)"));
    xhr.send(JSON.stringify(request));
  });
}

/** The API's filter language (AIP-160 subset): terms joined by AND. */
export function buildFilter({ from, to, model, state, key, value }) {
  const quote = (text) => `"${text.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  const terms = [];
  if (from) terms.push(`create_time >= ${quote(from)}`);
  if (to) terms.push(`create_time < ${quote(to)}`);
  if (model) terms.push(`model = ${quote(model)}`);
  if (state) terms.push(`state = ${state}`);
  if (key) terms.push(`metadata.${quote(key)} = ${quote(value || "")}`);
  return terms.join(" AND ");
}
