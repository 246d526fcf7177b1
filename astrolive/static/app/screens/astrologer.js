// The astrologer's screens: going online, incoming requests, earnings, the profile.

import { api, qs } from "../api.js";
import * as rt from "../realtime.js";
import { state } from "../state.js";
import { $, guarded, h, money, notice, rupeesToMinor, when } from "../ui.js";
import * as session from "./session.js";

function setDeskStatus(status) {
  const pill = $("#desk-status");
  pill.dataset.status = status;
  pill.textContent = status;
}

function requestItem(c) {
  const who = c.user?.name || "a client";
  return h("li", { dataset: { consultationId: c.id } },
    h("span", { class: "grow" }, `${c.type} request from ${who} at ${money(c.rate)}/min · ${when(c.requested_at)}`),
    h("button", { type: "button", dataset: { action: "accept" },
      onclick: (ev) => guarded(ev.currentTarget, async () => {
        await session.acceptConsultation(c.id);
        ev.target.closest("li")?.remove();
        emptyState();
      }) }, "Accept"),
    h("button", { type: "button", class: "secondary", dataset: { action: "reject" },
      onclick: (ev) => guarded(ev.currentTarget, async () => {
        await api("POST", `/v1/consultations/${c.id}/reject`);
        ev.target.closest("li")?.remove();
        emptyState();
      }) }, "Reject"));
}

function emptyState() {
  $("#requests-empty").hidden = $("#requests").children.length > 0;
}

function addRequest(c) {
  const list = $("#requests");
  if (list.querySelector(`[data-consultation-id="${CSS.escape(c.id)}"]`)) return;
  list.append(requestItem(c));
  emptyState();
}

export async function showDesk() {
  const page = await api("GET", `/v1/consultations${qs({ status: "requested", limit: 50 })}`);
  $("#requests").replaceChildren();
  for (const c of page.items || []) if (c.status === "requested") addRequest(c);
  emptyState();
  try {
    const me = await api("GET", `/v1/astrologers/${state.user.id}`);
    if (me?.status) setDeskStatus(me.status);
  } catch {
    setDeskStatus("offline"); // not listed (not verified yet): the profile screen says why
  }
}

export async function showEarnings() {
  const e = await api("GET", "/v1/astrologer/earnings");
  $("#earnings-balance").textContent = money(e.balance, e.currency);
  $("#earnings-balance").dataset.amount = String(e.balance);
  $("#earnings-lifetime").textContent = money(e.lifetime, e.currency);
  $("#earnings-pending").textContent = money(e.pending_payout, e.currency);
  const rows = e.items || e.ledger?.items || (Array.isArray(e.ledger) ? e.ledger : []);
  const body = $("#earnings-ledger tbody");
  body.replaceChildren();
  for (const r of rows) {
    body.append(h("tr", {}, h("td", {}, when(r.created_at)), h("td", {}, String(r.kind || "").replaceAll("_", " ")),
      h("td", { class: "num" }, money(r.amount, e.currency))));
  }
  if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 3, class: "muted" }, "Nothing earned yet.")));
}

export async function showProfile() {
  // Prefill from the public listing when the profile is verified; a pending one starts blank.
  try {
    const p = await api("GET", `/v1/astrologers/${state.user.id}`);
    const f = $("#profile-form").elements;
    f.display_name.value = p.display_name || "";
    f.bio.value = p.bio || "";
    f.skills.value = (p.skills || []).join(", ");
    f.languages.value = (p.languages || []).join(", ");
    f.experience_years.value = p.experience_years ?? 0;
    for (const t of ["chat", "voice", "video"]) f[`rate_${t}`].value = p.rates?.[t] ? p.rates[t] / 100 : "";
  } catch {
    // not listed yet
  }
}

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

export function wire() {
  $("#go-online").addEventListener("click", (ev) => guarded(ev.currentTarget, async () => {
    const r = await api("POST", "/v1/astrologer/status", { status: "online" });
    setDeskStatus(r?.status || "online");
  }));
  $("#go-offline").addEventListener("click", (ev) => guarded(ev.currentTarget, async () => {
    const r = await api("POST", "/v1/astrologer/status", { status: "offline" });
    setDeskStatus(r?.status || "offline");
  }));
  $("#profile-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget.elements;
    guarded(ev.submitter, async () => {
      const rates = {};
      for (const t of ["chat", "voice", "video"]) rates[t] = f[`rate_${t}`].value === "" ? null : rupeesToMinor(f[`rate_${t}`].value);
      const p = await api("PUT", "/v1/astrologer/profile", {
        display_name: f.display_name.value.trim(),
        bio: f.bio.value.trim(),
        skills: list(f.skills.value),
        languages: list(f.languages.value),
        experience_years: Number(f.experience_years.value || 0),
        rates,
      });
      notice(`Profile saved (verification: ${p?.verification || "pending"}).`);
    });
  });
  rt.on("consultation:requested", (d) => {
    const c = d.consultation || d;
    addRequest(c);
    notice(`New ${c.type} request from ${c.user?.name || "a client"}.`);
  });
  rt.on("consultation:updated", (d) => {
    const c = d.consultation || d;
    if (c.status !== "requested") {
      $(`#requests [data-consultation-id="${CSS.escape(c.id)}"]`)?.remove();
      emptyState();
    }
  });
}
