// Issue 16: questions (e-mail consultations). A user asks an astrologer who takes questions (the
// price is held from the wallet) and reads the answer; an astrologer answers from their inbox.

import { api } from "../api.js";
import * as rt from "../realtime.js";
import { state } from "../state.js";
import { $, guarded, h, money, notice, when } from "../ui.js";

function profiles(q) {
  if (!q.profiles || !q.profiles.length) return "";
  return h("ul", { class: "profiles" }, ...q.profiles.map((p) =>
    h("li", {}, `${p.name} (${p.relation}) · born ${p.birth_date || "?"}${p.birth_time ? ` ${p.birth_time}` : ""}` +
      `${p.birth_place ? ` in ${p.birth_place}` : ""}`)));
}

function item(q, asAstrologer) {
  const answerId = `answer-${q.id}`;
  const open = q.status === "open";
  const who = asAstrologer ? (q.user?.name || "A user") : (q.astrologer?.display_name || "Astrologer");
  return h("li", { class: "card", dataset: { questionId: q.id, status: q.status } },
    h("strong", {}, `${who} · ${money(q.price)} · `),
    h("span", { class: "pill", dataset: { status: q.status } }, q.status),
    h("span", { class: "muted" }, open ? ` · answer by ${when(q.answer_due_at)}` : ""),
    h("p", { class: "question-text" }, q.text),
    profiles(q),
    q.answer ? h("p", { class: "answer-text" }, h("em", {}, "Answer: "), q.answer) : "",
    open && asAstrologer ? h("form", { class: "stack", onsubmit: (ev) => {
      ev.preventDefault();
      guarded(ev.submitter, async () => {
        await api("POST", `/v1/questions/${q.id}/answer`, { text: document.getElementById(answerId).value.trim() });
        notice("Answer sent; the price was charged to the user.");
        await show();
      });
    } },
    h("label", { for: answerId }, "Your answer"),
    h("textarea", { id: answerId, required: true, maxlength: "8000" }),
    h("button", { type: "submit" }, "Send answer")) : "",
    open && !asAstrologer ? h("button", { type: "button", class: "secondary", onclick: (ev) =>
      guarded(ev.currentTarget, async () => {
        await api("POST", `/v1/questions/${q.id}/cancel`);
        notice("Question withdrawn; the held amount is available again.");
        await show();
      }) }, "Withdraw") : "");
}

function askForm() {
  return h("form", { id: "question-form", class: "card stack", onsubmit: (ev) => {
    ev.preventDefault();
    guarded(ev.submitter, async () => {
      const astrologerId = $("#question-astrologer").value;
      if (!astrologerId) throw new Error("Choose an astrologer who takes questions.");
      const q = await api("POST", "/v1/questions", {
        astrologer_id: astrologerId, text: $("#question-text").value.trim(),
      }, { idempotencyKey: crypto.randomUUID() });
      notice(`Question sent; ${money(q.price)} is held until it is answered.`);
      $("#question-text").value = "";
      await show();
    });
  } },
  h("label", { for: "question-astrologer" }, "Astrologer"),
  h("select", { id: "question-astrologer", required: true }),
  h("label", { for: "question-text" }, "Your question"),
  h("textarea", { id: "question-text", required: true, maxlength: "2000" }),
  h("button", { type: "submit", id: "question-submit" }, "Ask"));
}

async function fillAstrologers() {
  const page = await api("GET", "/v1/astrologers?limit=100");
  const offering = (page.items || []).filter((a) => a.rates?.question);
  const select = $("#question-astrologer");
  select.replaceChildren(...offering.map((a) =>
    h("option", { value: a.id }, `${a.display_name} · ${money(a.rates.question)} a question`)));
  if (!offering.length) select.append(h("option", { value: "" }, "Nobody takes questions yet"));
}

/** The questions screen: ask + my questions (user), or the inbox (astrologer). */
export async function show() {
  const asAstrologer = state.user?.role === "astrologer";
  const body = $("#questions-body");
  const list = h("ul", { id: "question-list", class: "list" });
  body.replaceChildren(...(asAstrologer ? [] : [askForm()]), list);
  if (!asAstrologer) await fillAstrologers();
  const page = await api("GET", "/v1/questions");
  list.replaceChildren(...(page.items || []).map((q) => item(q, asAstrologer)));
  if (!list.children.length) list.append(h("li", { class: "muted" }, asAstrologer ? "No questions yet." : "You have not asked anything yet."));
}

/** Refresh the screen when a question arrives or changes while it is shown. */
export function wire() {
  for (const event of ["question:created", "question:updated"]) {
    rt.on(event, () => { if (state.screen === "questions") guarded(null, show); });
  }
}
