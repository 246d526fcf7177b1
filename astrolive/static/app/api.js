// The REST client: bearer tokens, one refresh on 401, and every error as an ApiError carrying the
// contract's {code, message, details}.

const STORE = "astrolive.session"; // sessionStorage: one sign-in per tab, gone with the tab

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let session = null; // {access_token, refresh_token, user}
const listeners = new Set();

export function loadSession() {
  try {
    session = JSON.parse(sessionStorage.getItem(STORE) || "null");
  } catch {
    session = null;
  }
  return session;
}

export function currentSession() {
  return session;
}

export function onSessionChange(fn) {
  listeners.add(fn);
}

function saveSession(next) {
  session = next;
  if (next) sessionStorage.setItem(STORE, JSON.stringify(next));
  else sessionStorage.removeItem(STORE);
  for (const fn of listeners) fn(session);
}

async function parse(resp) {
  if (resp.status === 204) return null;
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (resp.ok) return body;
  const err = body?.error;
  if (err) throw new ApiError(resp.status, err.code, err.message, err.details || {});
  throw new ApiError(resp.status, "http_" + resp.status,
    `the server answered ${resp.status} ${resp.statusText || ""}`.trim());
}

async function send(method, path, body, headers) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (session?.access_token) init.headers.Authorization = `Bearer ${session.access_token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (cause) {
    throw new ApiError(0, "network_error", `cannot reach the server (${cause.message})`);
  }
  return resp;
}

let refreshing = null;
async function refresh() {
  if (!session?.refresh_token) return false;
  refreshing ??= (async () => {
    try {
      const resp = await send("POST", "/v1/auth/refresh", { refresh_token: session.refresh_token });
      const next = await parse(resp);
      saveSession({ ...session, ...next });
      return true;
    } catch {
      saveSession(null);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** api("POST", "/v1/x", body, {idempotencyKey}) → parsed JSON; throws ApiError. */
export async function api(method, path, body, { idempotencyKey } = {}) {
  const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
  let resp = await send(method, path, body, headers);
  if (resp.status === 401 && session?.refresh_token && !path.startsWith("/v1/auth/")) {
    if (await refresh()) resp = await send(method, path, body, headers);
  }
  return parse(resp);
}

/** A query string from an object, skipping empty values. */
export function qs(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "" && v !== false) search.set(k, String(v));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export async function requestOtp(phone, role) {
  return api("POST", "/v1/auth/otp", { phone, role });
}

export async function verifyOtp(phone, code) {
  const result = await api("POST", "/v1/auth/verify", { phone, code });
  saveSession(result);
  return result;
}

export async function signOut() {
  const token = session?.refresh_token;
  if (token) {
    try {
      await api("POST", "/v1/auth/logout", { refresh_token: token });
    } catch {
      // Signing out locally is what matters; a dead server session expires on its own.
    }
  }
  saveSession(null);
}

export function updateUser(user) {
  if (session) saveSession({ ...session, user });
}

/** The current access token, refreshed first when the server said it expired. */
export async function freshToken(force = false) {
  if (force) await refresh();
  return session?.access_token || "";
}
