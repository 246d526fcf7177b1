// One open consultation: its status, the per-minute meter, chat with typing and read receipts,
// the call (voice / video over WebRTC), the end with its receipt, and the review.

import { api } from "../api.js";
import { PeerCall } from "../call.js";
import * as rt from "../realtime.js";
import { state } from "../state.js";
import { $, guarded, h, money, notice, randomId, showError, when } from "../ui.js";

const TYPING_SHOW_MS = 3000; // how long "typing…" stays after the last chat:typing
const TYPING_SEND_MS = 2000; // send chat:typing at most this often while typing
const LIVE = new Set(["requested", "accepted", "active"]);

let lastSeq = 0;
let theirReadSeq = 0;
let joinedId = null;
let typingTimer = null;
let lastTypingSent = 0;
const seen = new Set(); // message ids already shown

const current = () => state.consultation;
const isMe = (id) => id && state.user && String(id) === String(state.user.id);
const mineAsUser = (c) => isMe(c.user?.id || c.user_id);

function otherLabel(c) {
  return mineAsUser(c) ? (c.astrologer?.display_name || "your astrologer") : (c.user?.name || "your client");
}

function sameConsultation(data) {
  const c = current();
  return Boolean(c && data && String(data.consultation_id || data.consultation?.id || data.id) === String(c.id));
}

// --- rendering -------------------------------------------------------------------------------

function render() {
  const c = current();
  if (!c) return;
  const me = state.user?.role;
  $("#session-title").textContent = `Consultation with ${otherLabel(c)}`;
  $("#session-with").textContent = otherLabel(c);
  $("#session-type").textContent = `${c.type} at ${money(c.rate)}/min`;
  const pill = $("#session-status");
  pill.textContent = c.status + (c.end_reason ? ` (${c.end_reason.replaceAll("_", " ")})` : "");
  pill.dataset.status = c.status;
  $("#screen-session").dataset.status = c.status;
  $("#screen-session").dataset.consultationId = c.id;
  $("#session-accept").hidden = !(me === "astrologer" && c.status === "requested");
  $("#session-reject").hidden = !(me === "astrologer" && c.status === "requested");
  $("#session-cancel").hidden = !(mineAsUser(c) && ["requested", "accepted", "scheduled"].includes(c.status));
  $("#session-end").hidden = c.status !== "active";
  const isCall = c.type === "voice" || c.type === "video";
  $("#call").hidden = !isCall || !["accepted", "active"].includes(c.status);
  $("#chat-form").hidden = !LIVE.has(c.status) && c.status !== "completed";
  const ended = c.status === "completed";
  if (ended) showReceipt({ reason: c.end_reason, billed_minutes: c.billed_minutes, total_charged: c.total_charged });
  $("#review-form").hidden = !(ended && mineAsUser(c) && !c.reviewed && !c.review);
  $("#complaint-form").hidden = !(ended && mineAsUser(c));
  document.getElementById("nav-session")?.removeAttribute("hidden");
}

function showReceipt(d) {
  $("#receipt").hidden = false;
  $("#receipt-reason").textContent = (d.reason || "ended").replaceAll("_", " ");
  $("#receipt-minutes").textContent = String(d.billed_minutes ?? "–");
  $("#receipt-total").textContent = money(d.total_charged);
  $("#receipt").dataset.totalCharged = String(d.total_charged ?? "");
}

function showMeter(d) {
  state.meter = { ...(state.meter || {}), ...d };
  const m = state.meter;
  const meter = $("#session-meter");
  if (d.minute !== undefined) {
    meter.dataset.minute = String(d.minute);
    $("#meter-minute").textContent = String(d.minute);
  }
  if (d.charged !== undefined) $("#meter-charged").textContent = money(d.charged);
  if (m.balance !== undefined) $("#meter-balance").textContent = money(m.balance);
  const left = d.minutes_left ?? d.max_minutes;
  if (left !== undefined && left !== null) $("#meter-left").textContent = String(left);
}

function addMessage(msg, { pending = false } = {}) {
  if (msg.id && seen.has(msg.id)) return;
  if (msg.id) seen.add(msg.id);
  const mine = isMe(msg.sender_id);
  const li = h("li", { class: mine ? "mine" : "theirs", dataset: { seq: msg.seq ?? "", id: msg.id || "", read: "false" } },
    attachmentView(msg.attachment), // issue 17
    msg.text,
    h("span", { class: "meta" }, when(msg.sent_at), mine ? h("span", { class: "receipt-mark" }, pending ? " · sending" : " · sent") : ""));
  // Keep the log in sequence order even when an ack and a relayed message cross.
  const log = $("#chat-log");
  const after = [...log.children].find((el) => Number(el.dataset.seq) > Number(msg.seq));
  log.insertBefore(li, after || null);
  li.scrollIntoView({ block: "nearest" });
  if (msg.seq > lastSeq) lastSeq = msg.seq;
  if (mine) markRead(theirReadSeq);
  else sendRead();
}

// Issue 17: an image is shown inline (its URL is signed and short-lived), a PDF is a link.
// The local file store's URLs are made with PUBLIC_BASE_URL; this page uses its own origin.
function fileUrl(url) {
  const u = new URL(url, location.href);
  return u.pathname === "/v1/files" ? `${u.pathname}${u.search}` : u.href;
}

function attachmentView(a) {
  if (!a) return "";
  if (a.content_type.startsWith("image/")) {
    return h("img", { class: "attachment", src: fileUrl(a.url), alt: "image sent in the chat", dataset: { attachmentId: a.id } });
  }
  return h("a", { href: fileUrl(a.url), target: "_blank", rel: "noopener", dataset: { attachmentId: a.id } }, "PDF document");
}

async function sendFile(file) {
  const c = current();
  if (!c || !file) return;
  const slot = await api("POST", `/v1/consultations/${c.id}/attachments`, { content_type: file.type, size: file.size });
  const headers = { "Content-Type": slot.headers["Content-Type"] }; // the browser sets the length
  const put = await fetch(fileUrl(slot.upload_url), { method: slot.method, headers, body: file });
  if (!put.ok) throw new Error(`upload failed (${put.status})`);
  const text = $("#chat-text").value;
  const ack = await rt.request("chat:send", { consultation_id: c.id, client_msg_id: randomId(), text, attachment_id: slot.attachment_id });
  $("#chat-text").value = "";
  addMessage({ id: ack.id, seq: ack.seq, sent_at: ack.sent_at, text, sender_id: state.user.id, attachment: ack.attachment });
}

function system(text) {
  $("#chat-log").append(h("li", { class: "system" }, text));
}

function markRead(upTo) {
  theirReadSeq = Math.max(theirReadSeq, upTo);
  for (const li of document.querySelectorAll("#chat-log li.mine")) {
    if (Number(li.dataset.seq) <= theirReadSeq && li.dataset.read !== "true") {
      li.dataset.read = "true";
      const mark = li.querySelector(".receipt-mark");
      if (mark) mark.textContent = " · read";
    }
  }
}

function sendRead() {
  const c = current();
  if (!c || document.visibilityState !== "visible" || state.screen !== "session") return;
  rt.request("chat:read", { consultation_id: c.id, up_to_seq: lastSeq }).catch(() => {
    // a read receipt is a nicety: never bother the person with its failure
  });
}

// --- lifecycle -------------------------------------------------------------------------------

function reset() {
  lastSeq = 0;
  theirReadSeq = 0;
  joinedId = null;
  seen.clear();
  state.meter = null;
  $("#chat-log").replaceChildren();
  $("#typing").textContent = "";
  $("#receipt").hidden = true;
  $("#low-balance").hidden = true;
  $("#review-form").hidden = true;
  $("#complaint-form").hidden = true;
  $("#session-meter").dataset.minute = "0";
  for (const id of ["#meter-minute"]) $(id).textContent = "0";
  for (const id of ["#meter-charged", "#meter-balance", "#meter-left"]) $(id).textContent = "–";
  hangup();
}

/** Open a consultation on the session screen and join its room for live events. */
export async function open(c) {
  if (!current() || current().id !== c.id) reset();
  state.consultation = c;
  render();
  if (c.status === "requested") {
    system(`Waiting for ${otherLabel(c)} to accept` + (c.expires_at ? ` (until ${when(c.expires_at)}).` : "."));
  }
  await state.show("session");
  await join();
}

export async function openById(id) {
  await open(await api("GET", `/v1/consultations/${id}`));
}

let joining = false;

async function join() {
  const c = current();
  if (!c || !rt.connected()) {
    if (c && LIVE.has(c.status)) system("Not connected to the real-time server: live events are off.");
    if (c) await loadHistoryRest();
    return;
  }
  joining = true;
  let ack;
  try {
    ack = await rt.request("consultation:join", { consultation_id: c.id });
  } finally {
    joining = false;
  }
  joinedId = c.id;
  // Accepted while this join was on its way (the ack still says requested): join once more.
  const raced = ack.consultation?.status === "requested" && current()?.status === "accepted";
  if (ack.consultation && !raced) update(ack.consultation);
  if (raced) return join();
  await catchUp();
}

async function catchUp() {
  const c = current();
  let more = true;
  while (more && c === current()) {
    const ack = await rt.request("chat:history", { consultation_id: c.id, after_seq: lastSeq });
    for (const m of ack.messages || []) addMessage(m);
    more = Boolean(ack.has_more) && (ack.messages || []).length > 0;
  }
}

async function loadHistoryRest() {
  const c = current();
  const page = await api("GET", `/v1/consultations/${c.id}/messages?after_seq=${lastSeq}`);
  for (const m of page.items || page.messages || []) addMessage(m);
}

// Statuses only move forward. An answer fetched before the session ended (or before the worker
// finalized it) may arrive after `session:ended`: it must not take the screen back to `active`.
const RANK = { scheduled: 0, requested: 1, accepted: 2, active: 3 };
const rank = (status) => RANK[status] ?? 4;

function update(next) {
  const c = current();
  if (!c || c.id !== next.id) return;
  const before = c.status;
  if (rank(next.status) < rank(before)) return; // a stale answer: what we hold is newer
  state.consultation = { ...c, ...next };
  render();
  if (before !== next.status) system(`The consultation is ${next.status}` +
    (next.end_reason ? ` (${next.end_reason.replaceAll("_", " ")})` : "") + ".");
  if (["rejected", "missed", "cancelled"].includes(next.status)) hangup();
  // The meter starts the session when both participants have joined an *accepted* consultation:
  // a join made while it was still requested does not count, so join again now.
  if (before !== "accepted" && next.status === "accepted" && !joining) join().catch(showError);
}

/** Leave the screen's consultation (sign-out). */
export function close() {
  hangup();
  state.consultation = null;
}

// --- calls -----------------------------------------------------------------------------------

function ensureCall() {
  const c = current();
  if (state.call && !state.call.closed) return state.call;
  const call = new PeerCall({
    video: c.type === "video",
    box: $("#call"),
    localEl: $("#local-video"),
    remoteEl: $("#remote-video"),
    stateEl: $("#call-state"),
    signal: {
      offer: (d) => rt.request("rtc:offer", { consultation_id: c.id, ...d }),
      answer: (d) => rt.request("rtc:answer", { consultation_id: c.id, ...d }),
      ice: (cand) => rt.request("rtc:ice", { consultation_id: c.id, candidate: cand }),
    },
  });
  call.onerror = showError;
  call.onstate = (s) => {
    $("#call-start").textContent = ["new", "closed", "failed"].includes(s) ? "Start call" : "Restart call";
  };
  state.call = call;
  return call;
}

async function startCall() {
  const c = current();
  // Calls only in a live session (API.md: rtc:* only while active; the server refuses otherwise).
  if (!c || !["voice", "video"].includes(c.type) || c.status !== "active") return;
  hangup();
  await ensureCall().start();
}

function hangup() {
  if (state.call) state.call.hangup();
  state.call = null;
}

// --- wiring ----------------------------------------------------------------------------------

export function wire() {
  $("#chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("#chat-text");
    const text = input.value;
    if (!text.trim() || !current()) return;
    const c = current();
    guarded($("#chat-send"), async () => {
      const ack = await rt.request("chat:send", { consultation_id: c.id, client_msg_id: randomId(), text });
      input.value = "";
      addMessage({ id: ack.id, seq: ack.seq, sent_at: ack.sent_at, text, sender_id: state.user.id });
      input.focus();
    });
  });
  $("#chat-file").addEventListener("change", (ev) => { // issue 17
    const input = ev.currentTarget;
    const file = input.files?.[0];
    guarded($("#chat-send"), async () => {
      try {
        await sendFile(file);
      } finally {
        input.value = "";
      }
    });
  });
  $("#chat-text").addEventListener("input", () => {
    const c = current();
    if (!c || Date.now() - lastTypingSent < TYPING_SEND_MS) return;
    lastTypingSent = Date.now();
    rt.send("chat:typing", { consultation_id: c.id });
  });
  $("#session-end").addEventListener("click", (ev) => guarded(ev.currentTarget, async () => {
    const c = await api("POST", `/v1/consultations/${current().id}/end`);
    if (c?.id) update(c);
  }));
  $("#session-cancel").addEventListener("click", (ev) => guarded(ev.currentTarget, async () => {
    update(await api("POST", `/v1/consultations/${current().id}/cancel`));
  }));
  $("#session-accept").addEventListener("click", (ev) => guarded(ev.currentTarget, async () => {
    await acceptConsultation(current().id);
  }));
  $("#session-reject").addEventListener("click", (ev) => guarded(ev.currentTarget, async () => {
    update(await api("POST", `/v1/consultations/${current().id}/reject`));
  }));
  $("#call-start").addEventListener("click", (ev) => guarded(ev.currentTarget, startCall));
  $("#call-hangup").addEventListener("click", () => hangup());
  $("#call-mute").addEventListener("click", (ev) => {
    const muted = state.call?.toggleMute();
    ev.currentTarget.setAttribute("aria-pressed", String(Boolean(muted)));
    ev.currentTarget.textContent = muted ? "Unmute" : "Mute";
  });
  $("#review-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.currentTarget;
    guarded(ev.submitter, async () => {
      const body = { rating: Number(form.elements.rating.value) };
      const comment = form.elements.comment.value.trim();
      if (comment) body.comment = comment;
      await api("POST", `/v1/consultations/${current().id}/review`, body);
      state.consultation = { ...current(), reviewed: true };
      form.hidden = true;
      notice("Thank you for the review.");
    });
  });
  $("#complaint-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.currentTarget;
    guarded(ev.submitter, async () => {
      await api("POST", `/v1/consultations/${current().id}/complaint`, { reason: form.elements.reason.value.trim() });
      form.hidden = true;
      notice("Your complaint was sent; support will review a refund.");
    });
  });
  document.addEventListener("visibilitychange", () => {
    if (lastSeq) sendRead();
  });

  rt.on("$connect", () => {
    // After a reconnect: join again, then fetch what was missed (join first, so nothing falls between).
    if (current() && LIVE.has(current().status)) join().catch(showError);
  });
  rt.on("consultation:updated", (d) => {
    const next = d.consultation || d;
    if (sameConsultation({ id: next.id })) update(next);
    else if (mineAsUser(next) && next.status === "accepted") notice(`${next.astrologer?.display_name || "The astrologer"} accepted.`);
  });
  rt.on("chat:message", (m) => {
    if (sameConsultation(m)) addMessage(m);
    else if (!isMe(m.sender_id)) notice(`New message: ${(m.text || (m.attachment ? "an attachment" : "")).slice(0, 80)}`);
  });
  rt.on("chat:typing", (d) => {
    if (!sameConsultation(d) || isMe(d.user_id)) return;
    $("#typing").textContent = `${otherLabel(current())} is typing…`;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => { $("#typing").textContent = ""; }, TYPING_SHOW_MS);
  });
  rt.on("chat:read", (d) => {
    if (sameConsultation(d) && !isMe(d.user_id)) markRead(d.up_to_seq);
  });
  rt.on("session:started", (d) => {
    if (!sameConsultation(d)) return;
    state.consultation = { ...current(), status: "active", started_at: d.started_at };
    render();
    showMeter(d);
    system("The session started; minutes are now charged.");
    // The user calls; the astrologer answers the offer when it arrives.
    if (mineAsUser(current())) startCall().catch(showError);
  });
  rt.on("session:tick", (d) => {
    if (sameConsultation(d)) showMeter(d);
  });
  rt.on("session:low_balance", (d) => {
    if (!sameConsultation(d)) return;
    const warn = $("#low-balance");
    warn.hidden = false;
    // The user's money figures go to the user only: the astrologer's copy has no minutes_left.
    warn.textContent = mineAsUser(current())
      ? `Low balance: about ${d.minutes_left} minute(s) left. Recharge in the Wallet to keep talking.`
      : "The client's wallet is running out.";
  });
  rt.on("session:ended", (d) => {
    if (!sameConsultation(d)) return;
    state.consultation = { ...current(), status: "completed", end_reason: d.reason,
      billed_minutes: d.billed_minutes, total_charged: d.total_charged ?? current().total_charged };
    hangup();
    render();
    showReceipt(d);
    system(`The session ended (${String(d.reason || "").replaceAll("_", " ")}).`);
    // The stored record is the receipt of truth; refresh from it.
    api("GET", `/v1/consultations/${current().id}`).then(update).catch(showError);
  });
  rt.on("rtc:offer", (d) => {
    if (!sameConsultation(d)) return;
    // Never answer a call before the session is active: that would be an unbilled call
    // (issue 12). The server refuses such offers too; this is the console's own rule.
    if (current()?.status !== "active") {
      system("A call was offered before the session started; it was not answered.");
      return;
    }
    hangup();
    ensureCall().acceptOffer(d).catch(showError);
  });
  rt.on("rtc:answer", (d) => {
    if (sameConsultation(d)) state.call?.acceptAnswer(d).catch(showError);
  });
  rt.on("rtc:ice", (d) => {
    if (sameConsultation(d) && d.candidate) ensureCall().addIce(d.candidate).catch(showError);
  });
}

/** The astrologer accepts a request and opens it. */
export async function acceptConsultation(id) {
  const c = await api("POST", `/v1/consultations/${id}/accept`);
  await open(c);
}

export { joinedId };
