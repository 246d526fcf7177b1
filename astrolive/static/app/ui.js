// Small DOM helpers shared by every screen. No framework: elements, text and events.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** h("li", {class: "x", dataset: {id}}, "text", child) → an element; strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let currency = "INR";
export function setCurrency(code) {
  if (code) currency = code;
}

/** Minor units → "₹25.00" (API money is an integer count of paise / cents). */
export function money(amount, code = currency) {
  if (amount === null || amount === undefined) return "–";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: code }).format(amount / 100);
  } catch {
    return `${(amount / 100).toFixed(2)} ${code}`;
  }
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Show an error to the person: the API's `error.message` (and code), never a silent failure. */
export function showError(err) {
  const message = err?.message || String(err);
  const code = err?.code ? ` (${err.code})` : "";
  const fields = err?.details?.fields
    ? " — " + Object.entries(err.details.fields).map(([f, why]) => `${f}: ${why}`).join("; ")
    : "";
  const box = $("#errors");
  const item = h("div", { class: "error", dataset: { code: err?.code || "" } },
    h("p", {}, message + fields + code),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"));
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => item.remove(), 12000);
  console.warn("astrolive:", err);
}

export function notice(text) {
  const box = $("#errors");
  const item = h("div", { class: "error notice", role: "status" }, h("p", {}, text),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"));
  box.append(item);
  setTimeout(() => item.remove(), 6000);
}

export function banner(text) {
  const el = $("#banner");
  el.textContent = text || "";
  el.hidden = !text;
}

/** Run an async action from a button or form: disable while running, show any error. */
export async function guarded(control, action) {
  if (control) control.disabled = true;
  try {
    return await action();
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (control) control.disabled = false;
  }
}

/** A random id for client_msg_id / Idempotency-Key, also outside secure contexts. */
export function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export function rupeesToMinor(value) {
  if (value === "" || value === null || value === undefined) return undefined;
  return Math.round(Number(value) * 100);
}
