// The Socket.IO connection: one per signed-in tab, token in `auth`, acks as promises.

import { ApiError, freshToken } from "./api.js";

let ioFactory = null;
let loadProblem = null;
let socket = null;
const handlers = new Map(); // event → Set(fn)
const stateListeners = new Set();

/** Load the vendored socket.io-client; on failure return the server's explanation. */
export async function loadClient() {
  if (ioFactory || loadProblem) return loadProblem;
  try {
    const mod = await import("/vendor/socket.io.js");
    ioFactory = mod.io;
  } catch (cause) {
    loadProblem = `the real-time client did not load (${cause.message}): ` +
      "run npm install in astrolive/static and reload";
    try {
      const resp = await fetch("/vendor/socket.io.js");
      const body = await resp.json();
      if (body?.error?.message) loadProblem = body.error.message;
    } catch {
      // keep the import's own message
    }
  }
  return loadProblem;
}

export function onState(fn) {
  stateListeners.add(fn);
}

function setState(state, detail = "") {
  for (const fn of stateListeners) fn(state, detail);
}

/** on("chat:message", fn): handlers survive reconnects and sign-ins. */
export function on(event, fn) {
  if (!handlers.has(event)) {
    handlers.set(event, new Set());
    if (socket) socket.on(event, (data) => dispatch(event, data));
  }
  handlers.get(event).add(fn);
  return () => handlers.get(event).delete(fn);
}

function dispatch(event, data) {
  for (const fn of handlers.get(event) || []) {
    try {
      fn(data);
    } catch (err) {
      console.error(`handler of ${event} failed`, err);
    }
  }
}

export function connected() {
  return Boolean(socket?.connected);
}

export async function connect() {
  disconnect();
  if (await loadClient()) return false;
  socket = ioFactory({
    path: "/socket.io",
    transports: ["websocket", "polling"],
    // A function, so each reconnect presents the current (possibly refreshed) access token.
    auth: (cb) => freshToken().then((token) => cb({ token })),
  });
  for (const event of handlers.keys()) socket.on(event, (data) => dispatch(event, data));
  socket.on("connect", () => {
    setState("on");
    dispatch("$connect", null);
  });
  socket.on("disconnect", (reason) => setState("off", reason));
  socket.on("connect_error", async (err) => {
    const data = err?.data || {};
    setState("off", data.message || err.message);
    // An expired access token is refused at connect: refresh once and let the client retry.
    if (["token_expired", "invalid_token", "unauthorized"].includes(data.code)) {
      await freshToken(true);
      if (socket && !socket.active) socket.connect();
    }
  });
  return true;
}

export function disconnect() {
  if (socket) {
    socket.removeAllListeners();
    socket.disconnect();
    socket = null;
  }
  setState("off");
}

/** emit with an acknowledgement; resolves the ack, rejects with ApiError on {ok:false}. */
export function request(event, payload, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    if (!socket) {
      reject(new ApiError(0, "realtime_unavailable", loadProblem || "not connected to the real-time server"));
      return;
    }
    socket.timeout(timeoutMs).emit(event, payload, (err, ack) => {
      if (err) reject(new ApiError(0, "timeout", `the server did not answer ${event} in time`));
      else if (ack && ack.ok === false) {
        const e = ack.error || {};
        reject(new ApiError(0, e.code || "error", e.message || `${event} failed`, e.details || {}));
      } else resolve(ack || { ok: true });
    });
  });
}

/** Fire-and-forget (typing indicators). */
export function send(event, payload) {
  socket?.emit(event, payload);
}
