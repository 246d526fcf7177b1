// The console's entry point: sign-in, the per-role navigation and the real-time connection.

import { api, loadSession, onSessionChange, requestOtp, signOut, verifyOtp } from "./api.js";
import * as rt from "./realtime.js";
import { recordEvent, state } from "./state.js";
import { $, $$, banner, guarded, h, showError } from "./ui.js";
import * as user from "./screens/user.js";
import * as session from "./screens/session.js";
import * as astrologer from "./screens/astrologer.js";
import * as admin from "./screens/admin.js";
import * as echo from "./screens/echo.js";
import * as booking from "./screens/booking.js"; // issue 17
import * as support from "./screens/support.js"; // issue 17
import * as questions from "./screens/questions.js"; // issue 16

// Screens each role sees, in nav order: [id, label, on-show].
const SCREENS = {
  user: [
    ["discover", "Astrologers", user.showDiscover],
    ["wallet", "Wallet", user.showWallet],
    ["history", "Consultations", user.showHistory],
    ["book", "Book", booking.showBook],
    ["questions", "Questions", questions.show], // issue 16
    ["support", "Support", support.showSupport],
    ["echo", "Echo test", echo.show],
  ],
  astrologer: [
    ["desk", "Desk", astrologer.showDesk],
    ["history", "Consultations", user.showHistory],
    ["questions", "Questions", questions.show], // issue 16
    ["earnings", "Earnings", astrologer.showEarnings],
    ["profile", "Profile", astrologer.showProfile],
    ["echo", "Echo test", echo.show],
  ],
  admin: [
    ["verify", "Verification", admin.showQueue],
    ["refunds", "Refunds", admin.showRefunds],
    ["tickets", "Tickets", support.showQueue],
  ],
};

const EVENTS = [
  "presence", "consultation:requested", "consultation:updated", "chat:message", "chat:typing",
  "chat:read", "rtc:offer", "rtc:answer", "rtc:ice", "session:started", "session:tick",
  "session:low_balance", "session:ended", "session:tip",
];

function screensOf(role) {
  return SCREENS[role] || [];
}

/** Show one screen (and its nav entry as current); "session" is reachable from any role. */
export async function show(name, { focus = true } = {}) {
  const role = state.user?.role;
  const entry = screensOf(role).find(([id]) => id === name);
  const allowed = entry || (name === "session" && role) || name === "signin";
  if (!allowed) name = role ? screensOf(role)[0][0] : "signin";
  state.screen = name;
  document.body.dataset.screen = name;
  for (const section of $$(".screen")) section.hidden = section.id !== `screen-${name}`;
  for (const btn of $$("#nav button")) {
    if (btn.dataset.screen === name) btn.setAttribute("aria-current", "page");
    else btn.removeAttribute("aria-current");
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (focus) $(`#screen-${name} h2`)?.setAttribute("tabindex", "-1");
  if (focus) $(`#screen-${name} h2`)?.focus({ preventScroll: false });
  const onShow = entry?.[2];
  if (onShow) await guarded(null, onShow);
}
state.show = show;

function renderNav() {
  const nav = $("#nav");
  nav.replaceChildren();
  const role = state.user?.role;
  for (const [id, label] of screensOf(role)) {
    nav.append(h("button", { type: "button", dataset: { screen: id }, onclick: () => show(id) }, label));
  }
  nav.append(h("button", { type: "button", id: "nav-session", dataset: { screen: "session" },
    hidden: !state.consultation, onclick: () => show("session") }, "Session"));
  nav.hidden = !role;
  $("#who").hidden = !role;
  const u = state.user;
  $("#who-label").textContent = u ? `${u.name || u.phone} · ${u.role}` : "";
  document.body.dataset.role = role || "";
}

async function enter(signedIn) {
  state.user = signedIn.user;
  renderNav();
  const problem = await rt.loadClient();
  if (problem) banner(problem);
  else await rt.connect();
  const wanted = location.hash.slice(1);
  await show(screensOf(state.user.role).some(([id]) => id === wanted) ? wanted : screensOf(state.user.role)[0][0]);
  guarded(null, async () => {
    state.user = await api("GET", "/v1/me");
    renderNav();
  });
}

function leave() {
  rt.disconnect();
  session.close();
  state.user = null;
  state.consultation = null;
  renderNav();
  show("signin");
}

function wireSignIn() {
  let phone = "";
  $("#otp-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.currentTarget;
    guarded($("#send-otp"), async () => {
      phone = $("#phone").value.trim();
      const role = form.elements.role.value;
      const res = await requestOtp(phone, role);
      $("#otp-phone").textContent = phone;
      $("#otp-hint").textContent = `The code is valid for ${Math.round((res?.expires_in || 300) / 60)} min; ` +
        `a new one can be sent after ${res?.resend_after ?? 30} s.`;
      $("#otp-form").hidden = true;
      $("#verify-form").hidden = false;
      $("#otp-code").focus();
    });
  });
  $("#verify-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded($("#verify-otp"), async () => {
      const res = await verifyOtp(phone, $("#otp-code").value.trim());
      $("#otp-code").value = "";
      $("#verify-form").hidden = true;
      $("#otp-form").hidden = false;
      await enter(res);
    });
  });
  $("#otp-back").addEventListener("click", () => {
    $("#verify-form").hidden = true;
    $("#otp-form").hidden = false;
    $("#phone").focus();
  });
  $("#sign-out").addEventListener("click", () => guarded($("#sign-out"), async () => {
    await signOut();
  }));
}

function wireRealtime() {
  for (const name of EVENTS) rt.on(name, (data) => recordEvent(name, data));
  rt.onState((s, detail) => {
    const pill = $("#socket-state");
    pill.dataset.state = s;
    pill.textContent = s === "on" ? "live" : "offline";
    pill.title = detail ? `Real-time connection: ${detail}` : "Real-time connection";
  });
  user.wire();
  session.wire();
  astrologer.wire();
  admin.wire();
  echo.wire();
  booking.wire();
  questions.wire(); // issue 16
  support.wire();
}

async function boot() {
  wireSignIn();
  wireRealtime();
  window.addEventListener("hashchange", () => {
    const name = location.hash.slice(1);
    if (name && name !== state.screen) show(name);
  });
  onSessionChange((s) => {
    if (!s && state.user) leave();
  });
  const saved = loadSession();
  if (saved?.access_token) await enter(saved);
  else await show("signin");
  document.body.dataset.ready = "true";
}

state.renderNav = renderNav;
window.addEventListener("unhandledrejection", (ev) => showError(ev.reason));
boot().catch(showError);
