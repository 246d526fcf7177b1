// Browser WebRTC through the server's signalling: one RTCPeerConnection per call, ICE servers from
// GET /v1/rtc/ice-servers, offers / answers / candidates over Socket.IO. The state is mirrored on
// the call's element (data-pc-state, data-remote-playing) and on window.__astrolive for tests.

import { api } from "./api.js";

let iceCache = null; // {servers, until}

export async function iceServers() {
  if (iceCache && iceCache.until > Date.now()) return iceCache.servers;
  const body = await api("GET", "/v1/rtc/ice-servers");
  const servers = (body.ice_servers || []).map((s) => {
    const out = { urls: s.urls };
    if (s.username) out.username = s.username;
    if (s.credential) out.credential = s.credential;
    return out;
  });
  // Renew well before the TURN credentials expire.
  iceCache = { servers, until: Date.now() + Math.max(10, (body.ttl || 60) / 2) * 1000 };
  return servers;
}

export function mediaProblem(err) {
  if (!navigator.mediaDevices?.getUserMedia) {
    return "this page cannot use the microphone or camera: open it over https or on 127.0.0.1 / localhost";
  }
  return `microphone / camera unavailable: ${err?.message || err}`;
}

export class PeerCall {
  /**
   * @param {object} o
   * @param {boolean} o.video        ask for the camera as well as the microphone
   * @param {HTMLElement} o.box      gets data-pc-state and data-remote-playing
   * @param {HTMLVideoElement} o.localEl
   * @param {HTMLVideoElement} o.remoteEl
   * @param {HTMLElement} o.stateEl  human-readable state
   * @param {object} o.signal        {offer(desc), answer(desc), ice(candidate)} → Promise
   * @param {Array} [o.iceServers]   use these instead of GET /v1/rtc/ice-servers
   */
  constructor(o) {
    Object.assign(this, o);
    this.pc = null;
    this.stream = null;
    this.pendingIce = [];
    this.closed = false;
    this.setState("new");
    this.box.dataset.remotePlaying = "false";
  }

  setState(state) {
    this.state = state;
    this.box.dataset.pcState = state;
    this.stateEl.textContent = state;
    this.onstate?.(state);
  }

  async ensurePeer() {
    if (this.pc) return this.pc;
    const servers = this.iceServers ?? (await iceServers());
    if (!this.stream) {
      try {
        this.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: this.video });
      } catch (err) {
        throw new Error(mediaProblem(err));
      }
      this.localEl.srcObject = this.stream;
    }
    const pc = new RTCPeerConnection({ iceServers: servers });
    this.pc = pc;
    for (const track of this.stream.getTracks()) pc.addTrack(track, this.stream);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return;
      const c = ev.candidate;
      this.signal.ice({ candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex })
        .catch((err) => this.onerror?.(err));
    };
    pc.onconnectionstatechange = () => this.setState(pc.connectionState);
    pc.ontrack = (ev) => {
      const stream = ev.streams[0] || new MediaStream([ev.track]);
      if (this.remoteEl.srcObject !== stream) {
        this.remoteEl.srcObject = stream;
        this.remoteEl.onplaying = () => { this.box.dataset.remotePlaying = "true"; };
        this.remoteEl.play().catch(() => { /* autoplay policy: the person presses play */ });
      }
    };
    this.setState("connecting");
    return pc;
  }

  /** The caller's side. */
  async start() {
    const pc = await this.ensurePeer();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const reply = await this.signal.offer({ sdp: pc.localDescription.sdp, type: pc.localDescription.type });
    // An echo peer answers in the acknowledgement; a person answers with an rtc:answer event.
    if (reply?.sdp && reply?.type === "answer") await this.acceptAnswer(reply);
  }

  /** The callee's side: answer an offer relayed by the server. */
  async acceptOffer(desc) {
    const pc = await this.ensurePeer();
    await pc.setRemoteDescription({ type: desc.type || "offer", sdp: desc.sdp });
    await this.flushIce();
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    await this.signal.answer({ sdp: pc.localDescription.sdp, type: pc.localDescription.type });
  }

  async acceptAnswer(desc) {
    if (!this.pc || this.pc.signalingState !== "have-local-offer") return;
    await this.pc.setRemoteDescription({ type: desc.type || "answer", sdp: desc.sdp });
    await this.flushIce();
  }

  async addIce(candidate) {
    if (!candidate) return;
    const init = typeof candidate === "string" ? { candidate, sdpMid: "0", sdpMLineIndex: 0 } : candidate;
    if (!this.pc || !this.pc.remoteDescription) {
      this.pendingIce.push(init);
      return;
    }
    await this.pc.addIceCandidate(init);
  }

  async flushIce() {
    const queued = this.pendingIce.splice(0);
    for (const c of queued) {
      try {
        await this.pc.addIceCandidate(c);
      } catch (err) {
        console.warn("ICE candidate refused", err);
      }
    }
  }

  toggleMute() {
    const tracks = this.stream?.getAudioTracks() || [];
    const muted = tracks.some((t) => t.enabled);
    for (const t of tracks) t.enabled = !muted;
    return muted;
  }

  async stats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let rtt = null;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime;
      }
    });
    return { rtt };
  }

  hangup() {
    this.closed = true;
    this.pc?.close();
    this.pc = null;
    for (const t of this.stream?.getTracks() || []) t.stop();
    this.stream = null;
    this.localEl.srcObject = null;
    this.remoteEl.srcObject = null;
    this.box.dataset.remotePlaying = "false";
    this.setState("closed");
  }
}
