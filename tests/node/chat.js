// A chat between a user and an astrologer through the official Socket.IO client.
// usage: node chat.js URL USER_TOKEN ASTROLOGER_TOKEN CONSULTATION_ID COUNT
// Prints one JSON line: what each side was acked and received, and a refused connection's error.
"use strict";
const { io } = require("socket.io-client");

const [url, userToken, astroToken, consultationId, countArg] = process.argv.slice(2);
const count = Number(countArg || 5);

function connect(token) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (err) => reject(err));
  });
}

async function refused() {
  try {
    const s = await connect("not-a-token");
    s.close();
    return null;
  } catch (err) {
    return { message: err.message, data: err.data };
  }
}

async function main() {
  const user = await connect(userToken);
  const astro = await connect(astroToken);
  const received = { user: [], astrologer: [] };
  user.on("chat:message", (m) => received.user.push(m));
  astro.on("chat:message", (m) => received.astrologer.push(m));
  const joins = await Promise.all([
    user.timeout(5000).emitWithAck("consultation:join", { consultation_id: consultationId }),
    astro.timeout(5000).emitWithAck("consultation:join", { consultation_id: consultationId }),
  ]);
  const send = (socket, who, i) =>
    socket.timeout(5000).emitWithAck("chat:send", {
      consultation_id: consultationId,
      client_msg_id: `${who}-${i}`,
      text: `${who} says ${i}`,
    });
  const acks = { user: [], astrologer: [] };
  // Both sides send at once, each waiting for its own acks in turn.
  await Promise.all([
    (async () => { for (let i = 0; i < count; i++) acks.user.push(await send(user, "user", i)); })(),
    (async () => { for (let i = 0; i < count; i++) acks.astrologer.push(await send(astro, "astrologer", i)); })(),
  ]);
  const deadline = Date.now() + 5000;
  while ((received.user.length < count || received.astrologer.length < count) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const badAck = await user.timeout(5000).emitWithAck("chat:send", { consultation_id: consultationId });
  user.close();
  astro.close();
  console.log(JSON.stringify({ joins, acks, received, badAck, refused: await refused() }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
