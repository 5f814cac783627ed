// Calls to loraq's /v1 API with the signed-in key (kept in sessionStorage: gone when the tab closes).

const KEY_NAME = "loraq.apiKey";

export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

let unauthorized = () => {};

/** Called with the error when a request is refused for its key (the key was revoked, or is wrong). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function signIn(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function signOut() {
  sessionStorage.removeItem(KEY_NAME);
}

export function authHeaders(key = apiKey()) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** The API's error shape ({"error": {"message", "code", "param"}}) as an ApiError; any other body as its text. */
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  let param = null;
  try {
    const body = await response.json();
    if (body && body.error) ({ message, code = null, param = null } = body.error);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code, param);
}

/** fetch() of an API path with the key; JSON back, or an ApiError. */
export async function api(path, { method = "GET", body, key, signal, headers = {} } = {}) {
  const init = { method, signal, headers: { ...authHeaders(key), ...headers } };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The loraq server cannot be reached. Is it still running?");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && key === undefined) unauthorized(error);
    throw error;
  }
  return response.json();
}

/** Every page of a newest-first list endpoint (`after` = the last id of the previous page). */
export async function listAll(path, { limit = 100, signal } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (after) query.set("after", after);
    const page = await api(`${path}?${query}`, { signal });
    items.push(...page.data);
    if (!page.has_more || !page.data.length) return items;
    after = page.data[page.data.length - 1].id;
  }
}

/** The file name a response offers (Content-Disposition), else `fallback`. */
function offeredName(response, fallback) {
  const header = response.headers.get("content-disposition") || "";
  const match = /filename\*=UTF-8''([^;]+)|filename="?([^";]+)"?/i.exec(header);
  if (!match) return fallback;
  return match[1] ? decodeURIComponent(match[1]) : match[2];
}

/**
 * Download an authenticated file: a plain link cannot carry the Bearer header, so the body is read here (with
 * progress), handed to the browser as a blob, and, where the browser offers SHA-256 (a secure context such as
 * localhost) and the server sent one as the ETag, checked against it.
 */
export async function download(path, fallbackName, onProgress = () => {}) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  } catch {
    throw new ApiError(0, "The loraq server cannot be reached. Is it still running?");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) unauthorized(error);
    throw error;
  }
  const total = Number(response.headers.get("content-length")) || null;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const blob = new Blob(chunks, { type: response.headers.get("content-type") || "application/octet-stream" });
  const expected = (response.headers.get("x-checksum-sha256") || response.headers.get("etag") || "").replaceAll(
    '"',
    "",
  );
  let verified = null;
  if (/^[0-9a-f]{64}$/.test(expected) && globalThis.crypto?.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
    const actual = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    if (actual !== expected)
      throw new ApiError(0, `The download's SHA-256 (${actual}) is not the server's (${expected}).`);
    verified = actual;
  }
  const name = offeredName(response, fallbackName);
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { name, bytes: received, sha256: verified };
}
