// Load for tests/bench/chat.py: pairs of clients sending chat messages with acks, or idle sockets.
// usage: node bench.js load PAIRS_JSON SECONDS   (PAIRS_JSON: {url, pairs: [{cid, user, astrologer}]})
//        node bench.js idle PAIRS_JSON [COUNT] [join]
//            connects every token (or COUNT sockets, cycling over the tokens; with "join", each
//            socket also joins its consultation), prints "ready", waits for stdin to close
"use strict";
const fs = require("fs");
const { io } = require("socket.io-client");

const [mode, file, secondsArg] = process.argv.slice(2);
const spec = JSON.parse(fs.readFileSync(file, "utf8"));

function connect(token) {
  return new Promise((resolve, reject) => {
    const socket = io(spec.url, { auth: { token }, transports: ["websocket"], reconnection: false });
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (err) => reject(err));
  });
}

async function idle() {
  const sockets = [];
  const [countArg, joinArg] = process.argv.slice(4);
  const count = Number(countArg || 2 * spec.pairs.length);
  for (let i = 0; sockets.length < count; i++) {
    const p = spec.pairs[Math.floor(i / 2) % spec.pairs.length];
    const socket = await connect(i % 2 ? p.astrologer : p.user);
    if (joinArg === "join") {
      const ack = await socket.timeout(10000).emitWithAck("consultation:join", { consultation_id: p.cid });
      if (!ack.ok) throw new Error("join failed: " + JSON.stringify(ack));
    }
    sockets.push(socket);
  }
  console.log(JSON.stringify({ ready: sockets.length }));
  process.stdin.resume();
  process.stdin.on("end", () => { sockets.forEach((s) => s.close()); process.exit(0); });
}

async function load() {
  const seconds = Number(secondsArg || 10);
  const clients = [];
  for (const p of spec.pairs) {
    for (const token of [p.user, p.astrologer]) {
      const socket = await connect(token);
      const c = { socket, cid: p.cid, received: 0 };
      socket.on("chat:message", () => { c.received += 1; });
      const join = await socket.timeout(10000).emitWithAck("consultation:join", { consultation_id: p.cid });
      if (!join.ok) throw new Error("join failed: " + JSON.stringify(join));
      clients.push(c);
    }
  }
  const latencies = [];
  let errors = 0;
  const start = Date.now();
  const deadline = start + seconds * 1000;
  await Promise.all(clients.map(async (c, n) => {
    let i = 0;
    while (Date.now() < deadline) {
      const t0 = process.hrtime.bigint();
      try {
        const ack = await c.socket.timeout(10000).emitWithAck("chat:send", {
          consultation_id: c.cid, client_msg_id: `${n}-${i++}`, text: "bench message " + i,
        });
        if (!ack.ok) errors += 1; else latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      } catch (e) { errors += 1; }
    }
  }));
  const elapsed = (Date.now() - start) / 1000;
  await new Promise((r) => setTimeout(r, 500));
  latencies.sort((a, b) => a - b);
  const pct = (q) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : null;
  const received = clients.reduce((s, c) => s + c.received, 0);
  clients.forEach((c) => c.socket.close());
  console.log(JSON.stringify({ acked: latencies.length, errors, elapsed, received,
    per_second: latencies.length / elapsed, p50_ms: pct(0.5), p99_ms: pct(0.99) }));
}

(mode === "idle" ? idle() : load()).catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
