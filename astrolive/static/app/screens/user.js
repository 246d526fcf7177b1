// The user's screens: discovery with live presence, the wallet with test-gateway recharges, and
// the list of consultations (shared with astrologers).

import { api, qs } from "../api.js";
import * as rt from "../realtime.js";
import { state } from "../state.js";
import { $, guarded, h, money, notice, randomId, rupeesToMinor, setCurrency, showError, when } from "../ui.js";
import * as session from "./session.js";

let astroCursor = null;
let historyCursor = null;
let rechargeKey = null; // one Idempotency-Key per recharge the person means to make

// --- discovery ---------------------------------------------------------------------------------

function filters() {
  const form = $("#filters");
  const maxRupees = form.elements.max_rate.value;
  return {
    q: form.elements.q.value.trim(),
    skill: form.elements.skill.value.trim(),
    language: form.elements.language.value.trim(),
    type: form.elements.type.value,
    sort: form.elements.sort.value,
    online: form.elements.online.checked ? "true" : "",
    max_rate: maxRupees === "" ? "" : rupeesToMinor(maxRupees),
  };
}

function astrologerCard(a) {
  const rates = a.rates || {};
  const status = a.status || "offline";
  const buttons = ["chat", "voice", "video"].map((type) => {
    const rate = rates[type];
    return h("button", {
      type: "button",
      class: type === "chat" ? "" : "secondary",
      disabled: rate === null || rate === undefined,
      dataset: { action: "request", type },
      "aria-label": `${type} with ${a.display_name}${rate ? `, ${money(rate)} a minute` : ", not offered"}`,
      onclick: (ev) => guarded(ev.currentTarget, () => requestConsultation(a, type)),
    }, `${type} ${rate ? money(rate) + "/min" : "–"}`);
  });
  const rating = a.rating?.count ? `★ ${Number(a.rating.average).toFixed(1)} (${a.rating.count})` : "no reviews yet";
  return h("li", { dataset: { astrologerId: a.id, name: a.display_name } },
    h("h3", {}, a.display_name, " ",
      h("span", { class: "pill presence", dataset: { status }, "aria-label": `status ${status}` }, status)),
    h("p", { class: "muted" }, `${(a.skills || []).join(", ")} · ${(a.languages || []).join(", ")} · ` +
      `${a.experience_years ?? 0} years · ${rating}`),
    h("div", { class: "row" }, buttons));
}

async function loadAstrologers(more = false) {
  const list = $("#astrologers");
  const params = { ...filters(), limit: 20, cursor: more ? astroCursor : "" };
  const page = await api("GET", `/v1/astrologers${qs(params)}`);
  if (!more) list.replaceChildren();
  for (const a of page.items || []) list.append(astrologerCard(a));
  watchPresence((page.items || []).map((a) => a.id), { replace: !more });
  if (!list.children.length) list.append(h("li", { class: "muted" }, "No astrologer matches these filters."));
  astroCursor = page.next_cursor || null;
  $("#astrologers-more").hidden = !astroCursor;
}

export async function showDiscover() {
  await loadAstrologers(false);
}

// Presence comes only for the astrologers this tab watches (`presence:watch`): the listed ones.
let watchedIds = [];

async function watchPresence(ids, { replace = false } = {}) {
  if (replace && watchedIds.length) rt.send("presence:unwatch", {});
  watchedIds = replace ? ids : [...watchedIds, ...ids];
  if (!ids.length) return;
  try {
    const ack = await rt.request("presence:watch", { astrologer_ids: ids });
    for (const p of ack.presence || []) onPresence(p);
  } catch (err) {
    console.warn("presence:watch failed; statuses refresh with the list", err);
  }
}

function onPresence(data) {
  for (const pill of document.querySelectorAll(`[data-astrologer-id="${CSS.escape(data.astrologer_id)}"] .presence`)) {
    pill.dataset.status = data.status;
    pill.textContent = data.status;
    pill.setAttribute("aria-label", `status ${data.status}`);
  }
  if (state.user?.id === data.astrologer_id) {
    const desk = $("#desk-status");
    desk.dataset.status = data.status;
    desk.textContent = data.status;
  }
}

async function requestConsultation(astrologer, type) {
  const c = await api("POST", "/v1/consultations", { astrologer_id: astrologer.id, type },
    { idempotencyKey: randomId() });
  notice(`Asked ${astrologer.display_name} for a ${type} consultation; waiting for them to accept.`);
  await session.open(c);
}

// --- wallet ------------------------------------------------------------------------------------

async function loadWallet() {
  const w = await api("GET", "/v1/wallet");
  setCurrency(w.currency);
  const bal = $("#wallet-balance");
  bal.textContent = money(w.balance, w.currency);
  bal.dataset.amount = String(w.balance);
  $("#wallet-held").textContent = money(w.held, w.currency);
  return w;
}

async function loadTransactions() {
  const page = await api("GET", "/v1/wallet/transactions?limit=20");
  const body = $("#transactions tbody");
  body.replaceChildren();
  for (const t of page.items || []) {
    body.append(h("tr", {},
      h("td", {}, when(t.created_at)), h("td", {}, t.kind.replaceAll("_", " ")),
      h("td", { class: "num" }, money(t.amount)), h("td", { class: "num" }, money(t.balance_after))));
  }
  if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No transactions yet.")));
}

async function loadPacks() {
  const packs = await api("GET", "/v1/recharge-packs");
  const box = $("#packs");
  box.replaceChildren(h("legend", {}, "Packs"));
  for (const p of Array.isArray(packs) ? packs : packs.items || []) {
    const bonus = p.bonus ? ` + ${money(p.bonus)} bonus` : "";
    box.append(h("label", {}, h("input", { type: "radio", name: "pack_id", value: p.id }),
      ` ${money(p.amount)}${bonus} (pay ${money(p.total)})`));
  }
  box.append(h("label", {}, h("input", { type: "radio", name: "pack_id", value: "", checked: true }), " custom amount"));
}

export async function showWallet() {
  await Promise.all([loadWallet(), loadPacks().catch(showError), loadTransactions().catch(showError)]);
}

async function recharge() {
  const form = $("#recharge-form");
  const packId = form.querySelector("input[name=pack_id]:checked")?.value || "";
  const gateway = form.elements.gateway.value;
  const body = { gateway };
  if (packId) body.pack_id = packId;
  else body.amount = rupeesToMinor(form.elements.amount.value);
  rechargeKey ??= randomId();
  const status = $("#recharge-status");
  const r = await api("POST", "/v1/wallet/recharges", body, { idempotencyKey: rechargeKey });
  rechargeKey = null;
  status.dataset.status = r.status;
  status.textContent = `Recharge of ${money(r.amount)} (you pay ${money(r.total)}): ${r.status}`;
  if (gateway !== "test") {
    status.textContent += ". Finish the payment in the gateway's checkout (the mobile app does this; " +
      `this console shows the reference only: ${r.order_id || r.client_secret || r.id}).`;
    return;
  }
  // The test gateway settles by itself through the worker within a few seconds.
  for (let i = 0; i < 40; i++) {
    await new Promise((resolve) => setTimeout(resolve, 750));
    const cur = await api("GET", `/v1/wallet/recharges/${r.id}`);
    status.dataset.status = cur.status;
    status.textContent = `Recharge of ${money(cur.amount)}: ${cur.status}`;
    if (cur.status !== "pending") break;
  }
  if (status.dataset.status === "pending") {
    status.textContent += " — still pending: is the worker running (astrolive worker)?";
  }
  await showWallet();
}

// --- consultations list ------------------------------------------------------------------------

function otherName(c) {
  if (state.user?.id === (c.user?.id || c.user_id)) return c.astrologer?.display_name || "astrologer";
  return c.user?.name || c.user?.phone || "user";
}

async function loadHistory(more = false) {
  const list = $("#history");
  const page = await api("GET", `/v1/consultations${qs({ limit: 20, cursor: more ? historyCursor : "" })}`);
  if (!more) list.replaceChildren();
  for (const c of page.items || []) {
    list.append(h("li", { dataset: { consultationId: c.id, status: c.status } },
      h("span", { class: "grow" }, `${c.type} with ${otherName(c)} · ${when(c.requested_at || c.started_at)}` +
        (c.billed_minutes ? ` · ${c.billed_minutes} min, ${money(c.total_charged)}` : "")),
      h("span", { class: "pill", dataset: { status: c.status } }, c.status + (c.end_reason ? ` (${c.end_reason.replaceAll("_", " ")})` : "")),
      h("button", { type: "button", class: "secondary", onclick: () => guarded(null, () => session.openById(c.id)) }, "Open")));
  }
  if (!list.children.length) list.append(h("li", { class: "muted" }, "No consultations yet."));
  historyCursor = page.next_cursor || null;
  $("#history-more").hidden = !historyCursor;
}

export async function showHistory() {
  await loadHistory(false);
}

export function wire() {
  $("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(ev.submitter, () => loadAstrologers(false));
  });
  $("#astrologers-more").addEventListener("click", (ev) => guarded(ev.currentTarget, () => loadAstrologers(true)));
  $("#history-more").addEventListener("click", (ev) => guarded(ev.currentTarget, () => loadHistory(true)));
  $("#recharge-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded($("#recharge-submit"), recharge);
  });
  rt.on("presence", onPresence);
  // A new socket (a reconnect) watches nothing yet: watch the listed ones again.
  rt.on("$connect", () => watchPresence(watchedIds.slice(-100), { replace: true }));
  rt.on("session:tick", (d) => {
    if (state.screen === "wallet" && d?.balance !== undefined) $("#wallet-balance").textContent = money(d.balance);
  });
}
