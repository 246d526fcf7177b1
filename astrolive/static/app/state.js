// What the console knows about the signed-in person and the open consultation. Also exposed as
// window.__astrolive so that people debugging (and the browser tests) can read it.

export const state = {
  user: null, // {id, phone, role, name, ...}
  screen: "loading",
  consultation: null, // the open one
  call: null, // PeerCall of the open consultation
  echo: null, // PeerCall of the echo test
  meter: null, // last session:tick / session:started
  events: [], // the last real-time events received, newest last
};

export function recordEvent(name, data) {
  state.events.push({ name, data, at: Date.now() });
  if (state.events.length > 200) state.events.shift();
}

globalThis.__astrolive = state;
