// Issue 17: booking a slot; a wallet that is short pays the rest at a gateway (the test gateway
// completes by itself through the worker), and the booking turns `scheduled` once it settles.

import { api, qs } from "../api.js";
import { $, guarded, h, money, notice, randomId, when } from "../ui.js";

let bookingKey = null; // one Idempotency-Key per booking the person means to make

export async function showBook() {
  const page = await api("GET", `/v1/astrologers${qs({ limit: 50 })}`);
  const select = $("#book-astrologer");
  const chosen = select.value;
  select.replaceChildren(...(page.items || []).map((a) =>
    h("option", { value: a.id, selected: a.id === chosen }, a.display_name)));
  const date = $("#book-date");
  if (!date.value) date.value = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
}

async function findSlots() {
  const id = $("#book-astrologer").value;
  const res = await api("GET", `/v1/astrologers/${id}/slots${qs({ date: $("#book-date").value })}`);
  const box = $("#book-slots");
  box.replaceChildren(h("legend", {}, "Free slots"));
  for (const s of res.slots || []) {
    box.append(h("label", {}, h("input", { type: "radio", name: "slot", value: s.start }), ` ${when(s.start)}`));
  }
  if (!(res.slots || []).length) box.append(h("p", { class: "muted" }, "No free slot that day."));
}

async function book() {
  const start = document.querySelector("#book-slots input[name=slot]:checked")?.value;
  const status = $("#book-status");
  if (!start) {
    status.textContent = "Choose a slot first.";
    return;
  }
  const body = { astrologer_id: $("#book-astrologer").value, type: $("#book-type").value, scheduled_at: start };
  if ($("#book-shortfall").checked) body.pay_shortfall = { gateway: $("#book-gateway").value };
  bookingKey ??= randomId();
  let c = await api("POST", "/v1/consultations", body, { idempotencyKey: bookingKey });
  bookingKey = null;
  status.dataset.status = c.status;
  if (c.status !== "awaiting_payment") {
    status.textContent = `Booked for ${when(c.scheduled_at)}: ${c.status}.`;
    return;
  }
  const r = c.recharge || {};
  status.textContent = `Your wallet is short: pay ${money(r.total)} (${money(r.amount)} + GST) ` +
    `before ${when(c.payment_due_at)} to keep the slot.`;
  if (r.gateway !== "test") {
    status.textContent += ` Finish the payment in the gateway's checkout (reference ${r.order_id || r.client_secret || r.id}).`;
  }
  // The settle path confirms the booking; follow it (the test gateway pays within seconds).
  for (let i = 0; i < 60 && c.status === "awaiting_payment"; i++) {
    await new Promise((resolve) => setTimeout(resolve, 750));
    c = await api("GET", `/v1/consultations/${c.id}`);
  }
  status.dataset.status = c.status;
  status.textContent = c.status === "scheduled"
    ? `Paid and booked for ${when(c.scheduled_at)}.`
    : `Booking ${c.status}.`;
  if (c.status === "scheduled") notice("Booking confirmed.");
}

export function wire() {
  $("#book-find").addEventListener("click", (ev) => guarded(ev.currentTarget, findSlots));
  $("#book-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded($("#book-submit"), book);
  });
}
