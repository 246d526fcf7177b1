// Issue 17: support tickets. The author opens and follows tickets; the admin works the queue
// (oldest first, with the consultation's bill and chat) and resolves, with a refund if need be.

import { api } from "../api.js";
import { $, guarded, h, money, notice, rupeesToMinor, when } from "../ui.js";

function messages(t) {
  return h("ul", { class: "ticket-messages" }, ...(t.messages || []).map((m) =>
    h("li", { dataset: { fromSupport: String(m.from_support) } },
      `${m.from_support ? "Support" : "You"} · ${when(m.created_at)}: ${m.text}`)));
}

function ticketItem(t) {
  const replyId = `reply-${t.id}`;
  const open = t.status === "open" || t.status === "in_review";
  return h("li", { class: "card", dataset: { ticketId: t.id, status: t.status } },
    h("strong", {}, `${t.category} · `), h("span", { class: "pill", dataset: { status: t.status } }, t.status.replace("_", " ")),
    t.outcome ? h("span", {}, ` · ${t.outcome}${t.refund_amount ? ` ${money(t.refund_amount)}` : ""}`) : "",
    h("p", {}, t.text),
    t.note ? h("p", { class: "muted" }, `Support: ${t.note}`) : "",
    messages(t),
    open ? h("form", { class: "row", onsubmit: (ev) => {
      ev.preventDefault();
      guarded(ev.submitter, async () => {
        await api("POST", `/v1/support/tickets/${t.id}/messages`, { text: document.getElementById(replyId).value.trim() });
        await showSupport();
      });
    } },
    h("label", { for: replyId, class: "sr-only" }, "Reply"),
    h("input", { id: replyId, required: true, placeholder: "Add a message" }),
    h("button", { type: "submit", class: "secondary" }, "Send")) : "");
}

export async function showSupport() {
  const page = await api("GET", "/v1/support/tickets");
  const list = $("#tickets");
  list.replaceChildren(...(page.items || []).map(ticketItem));
  if (!list.children.length) list.append(h("li", { class: "muted" }, "No tickets yet."));
}

function bill(t) {
  const c = t.consultation;
  if (!c) return "";
  const lines = (t.breakdown || []).filter((l) => l.kind === "charge" || l.kind === "refund");
  return h("div", { class: "ticket-bill" },
    h("p", {}, `${c.type} with ${c.astrologer_name || c.astrologer_id} · ${c.status}` +
      `${c.end_reason ? ` (${c.end_reason.replaceAll("_", " ")})` : ""} · ${c.billed_minutes} min, ${money(c.total_charged)}`),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Minute"), h("th", {}, "Kind"), h("th", {}, "Amount"), h("th", {}, "At"))),
      h("tbody", {}, ...lines.map((l) => h("tr", {}, h("td", {}, l.minute ?? ""), h("td", {}, l.kind),
        h("td", { class: "num" }, money(l.amount)), h("td", {}, when(l.at)))))),
    h("details", {}, h("summary", {}, `Chat (${(t.chat || []).length} messages)`),
      h("ul", {}, ...(t.chat || []).map((m) => h("li", {}, `#${m.seq} ${m.sender_id === c.user_id ? "user" : "astrologer"}: ${m.text}`)))));
}

function queueItem(t) {
  const id = t.id;
  const resolve = (outcome) => (ev) => guarded(ev.currentTarget, async () => {
    const body = { outcome, note: document.getElementById(`note-${id}`).value.trim() || outcome };
    const amount = rupeesToMinor(document.getElementById(`amount-${id}`).value);
    if (outcome === "refund" && amount !== undefined) body.refund_amount = amount;
    const done = await api("POST", `/v1/admin/tickets/${id}/resolve`, body);
    notice(`Ticket ${done.status}${done.refund_amount ? `: refunded ${money(done.refund_amount)}` : ""}.`);
    await showQueue();
  });
  return h("li", { class: "card", dataset: { ticketId: id, status: t.status } },
    h("strong", {}, `${t.category} · ${when(t.created_at)} · ${t.status.replace("_", " ")}`),
    h("p", {}, t.text), messages(t), bill(t),
    h("div", { class: "row" },
      h("label", { for: `amount-${id}` }, "Refund ₹ (empty: all that is left)"),
      h("input", { id: `amount-${id}`, type: "number", min: "0", step: "0.01" }),
      h("label", { for: `note-${id}`, class: "sr-only" }, "Note to the author"),
      h("input", { id: `note-${id}`, placeholder: "note to the author" })),
    h("div", { class: "row" },
      t.consultation ? h("button", { type: "button", onclick: resolve("refund") }, "Refund") : "",
      h("button", { type: "button", class: "secondary", onclick: resolve("answered") }, "Answered"),
      h("button", { type: "button", class: "secondary", onclick: resolve("rejected") }, "Reject")));
}

export async function showQueue() {
  const [open, review] = await Promise.all([
    api("GET", "/v1/admin/tickets?status=open"), api("GET", "/v1/admin/tickets?status=in_review"),
  ]);
  const items = [...(open.items || []), ...(review.items || [])]
    .sort((a, b) => a.created_at.localeCompare(b.created_at));
  const list = $("#ticket-queue");
  list.replaceChildren(...items.map(queueItem));
  $("#ticket-queue-empty").hidden = list.children.length > 0;
}

export function wire() {
  $("#ticket-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget.elements;
    guarded($("#ticket-submit"), async () => {
      const body = { category: f.category.value, text: f.text.value.trim() };
      const cid = f.consultation_id.value.trim();
      if (cid) body.consultation_id = cid;
      const t = await api("POST", "/v1/support/tickets", body);
      f.text.value = "";
      notice(`Ticket opened (${t.status}).`);
      await showSupport();
    });
  });
}
