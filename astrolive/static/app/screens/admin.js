// The admin's screens: the astrologers' verification queue and refunds.

import { api } from "../api.js";
import { $, guarded, h, money, notice, randomId, rupeesToMinor, when } from "../ui.js";

function queueItem(a) {
  const id = a.id || a.user_id;
  const reasonId = `reason-${id}`;
  const docs = (a.documents || []).map((d) =>
    h("a", { href: d.download_url || d.url, target: "_blank", rel: "noopener" }, d.kind || "document"));
  const decide = (decision) => (ev) => guarded(ev.currentTarget, async () => {
    const reason = document.getElementById(reasonId).value.trim();
    const body = { decision };
    if (reason) body.reason = reason;
    await api("POST", `/v1/admin/astrologers/${id}/verification`, body);
    ev.target.closest("li")?.remove();
    notice(`${a.display_name}: ${decision === "approve" ? "approved" : "rejected"}.`);
    $("#verify-empty").hidden = $("#verify-queue").children.length > 0;
  });
  return h("li", { dataset: { astrologerId: id } },
    h("div", { class: "grow" },
      h("strong", {}, a.display_name || a.phone || id),
      h("p", { class: "muted" }, `${(a.skills || []).join(", ")} · ${a.experience_years ?? 0} years · ` +
        `since ${when(a.created_at || a.submitted_at)}`),
      docs.length ? h("p", {}, "Documents: ", ...docs.flatMap((d, i) => (i ? [", ", d] : [d]))) : h("p", { class: "muted" }, "No documents uploaded.")),
    h("label", { for: reasonId, class: "sr-only" }, `Reason for ${a.display_name}`),
    h("input", { id: reasonId, placeholder: "reason (for a rejection)" }),
    h("button", { type: "button", onclick: decide("approve") }, "Approve"),
    h("button", { type: "button", class: "secondary", onclick: decide("reject") }, "Reject"));
}

export async function showQueue() {
  const page = await api("GET", "/v1/admin/astrologers?verification=pending");
  const list = $("#verify-queue");
  list.replaceChildren(...(page.items || []).map(queueItem));
  $("#verify-empty").hidden = list.children.length > 0;
}

export async function showRefunds() {
  $("#refund-status").textContent = "";
}

export function wire() {
  $("#refund-lookup").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(ev.submitter, async () => {
      const c = await api("GET", `/v1/consultations/${$("#refund-consultation").value.trim()}`);
      const box = $("#refund-details");
      box.hidden = false;
      box.replaceChildren(
        h("p", {}, `${c.type} · ${c.status}${c.end_reason ? ` (${c.end_reason})` : ""} · ` +
          `${c.user?.name || c.user?.id || ""} with ${c.astrologer?.display_name || ""}`),
        h("p", {}, `${c.billed_minutes ?? 0} minute(s), charged ${money(c.total_charged)}; ` +
          `${when(c.started_at)} – ${when(c.ended_at)}`));
    });
  });
  $("#refund-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget.elements;
    guarded(ev.submitter, async () => {
      const body = { consultation_id: $("#refund-consultation").value.trim(), reason: f.reason.value.trim() };
      const amount = rupeesToMinor(f.amount.value);
      if (amount !== undefined) body.amount = amount;
      const r = await api("POST", "/v1/admin/refunds", body, { idempotencyKey: randomId() });
      $("#refund-status").textContent = `Refund ${r.id || ""}: ${money(r.amount)} ${r.status || "done"}.`;
    });
  });
}
