// The pre-call echo test: the server's own WebRTC peer (aiortc) sends back what it receives.

import { PeerCall, iceServers } from "../call.js";
import * as rt from "../realtime.js";
import { state } from "../state.js";
import { $, guarded, showError } from "../ui.js";

const GATHER_MAX_MS = 3000; // the server takes no trickled candidates: wait for them, this long at most

function waitForCandidates(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MAX_MS);
  });
}

export async function start() {
  stop();
  const video = $("#echo-video").checked;
  const call = new PeerCall({
    video,
    box: $("#echo"),
    localEl: $("#echo-local"),
    remoteEl: $("#echo-remote"),
    stateEl: $("#echo-state"),
    iceServers: await iceServers(),
    signal: {
      // One round trip: the offer with every candidate, the answer in the acknowledgement.
      offer: async () => {
        await waitForCandidates(call.pc);
        const d = call.pc.localDescription;
        return rt.request("rtc:echo", { sdp: d.sdp, type: d.type }, 20000);
      },
      answer: async () => ({}),
      ice: async () => ({}), // gathered into the offer instead
    },
  });
  call.onerror = showError;
  state.echo = call;
  await call.start();
}

export function stop() {
  if (state.echo) {
    state.echo.hangup();
    state.echo = null;
    rt.request("rtc:echo:stop", {}).catch(() => { /* the server closes it by itself anyway */ });
  }
  $("#echo-rtt").textContent = "";
}

export async function show() {}

export function wire() {
  $("#echo-start").addEventListener("click", (ev) => guarded(ev.currentTarget, start));
  $("#echo-stop").addEventListener("click", () => stop());
  rt.on("rtc:echo:stats", (d) => {
    $("#echo-rtt").textContent = `· round trip ${d.kind}: ${d.rtt_ms} ms`;
  });
}
