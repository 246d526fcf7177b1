// Load for tests/bench/presence.py: many watching sockets, then astrologers coming online.
// usage: node presence.js SPEC_JSON
//   SPEC_JSON: {url, watchers: [token], sockets, watch, astrologers: [{id, token}]}
// Opens `sockets` sockets (cycling over the watcher tokens), each watching `watch` astrologers
// with presence:watch (a server without it broadcasts to everyone: "broadcast" mode), then
// connects every astrologer and counts the `presence` events all sockets receive until none has
// arrived for QUIET_MS. Prints one JSON line.
"use strict";
const fs = require("fs");
const { io } = require("socket.io-client");

const QUIET_MS = 3000;
const MAX_MS = 900000;
const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
let received = 0;
let lastAt = Date.now();

function connect(token) {
  return new Promise((resolve, reject) => {
    const socket = io(spec.url, { auth: { token }, transports: ["websocket"], reconnection: false });
    socket.on("presence", () => { received += 1; lastAt = Date.now(); });
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (err) => reject(err));
  });
}

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(...await Promise.all(items.slice(i, i + size).map(fn)));
  }
  return out;
}

async function main() {
  const ids = spec.astrologers.map((a) => a.id);
  let mode = "watch";
  const indexes = Array.from({ length: spec.sockets }, (_, i) => i);
  const sockets = await inBatches(indexes, 100, async (i) => {
    const socket = await connect(spec.watchers[i % spec.watchers.length]);
    const watched = Array.from({ length: spec.watch }, (_, k) => ids[(i * spec.watch + k) % ids.length]);
    const ack = await socket.timeout(60000).emitWithAck("presence:watch", { astrologer_ids: watched });
    if (!ack.ok) {
      if (ack.error && ack.error.code === "unknown_event") mode = "broadcast";
      else throw new Error("watch failed: " + JSON.stringify(ack));
    }
    return socket;
  });
  received = 0;
  const start = Date.now();
  lastAt = start;
  const astrologers = await inBatches(spec.astrologers, 50, (a) => connect(a.token));
  const connectedAt = Date.now();
  while (Date.now() - lastAt < QUIET_MS && Date.now() - start < MAX_MS) {
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(JSON.stringify({
    mode,
    sockets: sockets.length,
    astrologers: astrologers.length,
    presence_events: received,
    seconds: (Math.max(lastAt, connectedAt) - start) / 1000,
    connect_seconds: (connectedAt - start) / 1000,
  }));
  [...sockets, ...astrologers].forEach((s) => s.close());
  process.exit(0);
}

main().catch((err) => { console.error(err); process.exit(1); });
