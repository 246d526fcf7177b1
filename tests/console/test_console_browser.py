"""The console in a real browser (Debian's Chromium through Playwright): a user and an astrologer
in two browser contexts complete a paid chat and a video call, and every main screen is captured
under test-output/console/. Minutes last one second here (BILLING_MINUTE_SECONDS=1)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import factories
from tests.console.conftest import ConsoleServer, OpenPage
from tests.console.helpers import ADMIN_PHONE, ASTRO_PHONE, USER_PHONE, Watched, shot, sign_in

pytestmark = pytest.mark.slow

RATES = (1000, 1500, 2000)  # ₹10 / ₹15 / ₹20 a minute for chat / voice / video
SIGN_IN = ("/v1/auth/otp", "/v1/auth/verify", "/v1/me")
LIVE_FLOW = (
    *SIGN_IN,
    "/v1/astrologers",
    "/v1/astrologer/status",
    "/v1/consultations",
    "/v1/consultations/{id}",
    "/v1/consultations/{id}/accept",
    "/v1/consultations/{id}/end",
)


async def seed(pool: asyncpg.Pool[Any], *, funds: int = 50_000) -> tuple[Any, Any]:
    astro = await factories.make_astrologer(
        pool, phone=ASTRO_PHONE, display_name="Acharya Test", rates=RATES
    )
    user = await factories.make_user(pool, phone=USER_PHONE, name="Asha")
    await factories.fund(pool, user.id, funds)
    return user, astro


async def astrologer_goes_online(open_page: OpenPage) -> Watched:
    astro = await open_page()
    await sign_in(astro, ASTRO_PHONE, role="astrologer")
    page = astro.page
    await page.wait_for_selector("body[data-screen=desk]")
    await page.get_by_role("button", name="Go online").click()
    await page.wait_for_selector("#desk-status[data-status=online]")
    return astro


async def user_requests(user: Watched, kind: str) -> None:
    page = user.page
    await page.wait_for_selector("body[data-screen=discover]")
    card = page.locator("#astrologers li", has_text="Acharya Test")
    # Live presence: the card shows the astrologer online.
    await card.locator(".presence[data-status=online]").wait_for()
    await card.get_by_role("button", name=re.compile(f"^{kind} with Acharya Test")).click()
    await page.wait_for_selector("body[data-screen=session]")


async def astrologer_accepts(astro: Watched) -> None:
    page = astro.page
    request = page.locator("#requests li").first
    await request.wait_for()
    await request.get_by_role("button", name="Accept").click()
    await page.wait_for_selector("#screen-session[data-status=active]")


async def test_paid_chat_with_ticks_and_an_end(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require(*LIVE_FLOW, "/v1/consultations/{id}/review", "/v1/astrologer/earnings")
    _, astro_row = await seed(pool)
    astro = await astrologer_goes_online(open_page)
    user = await open_page(phone_sized=True)
    await sign_in(user, USER_PHONE)
    await user_requests(user, "chat")
    await astrologer_accepts(astro)
    u, a = user.page, astro.page
    await u.wait_for_selector("#screen-session[data-status=active]")

    # Chat both ways, with typing and read receipts.
    await u.get_by_label("Message", exact=True).fill("Namaste, will I get the job?")
    await u.get_by_role("button", name="Send").click()
    await a.locator("#chat-log li.theirs", has_text="will I get the job").wait_for()
    await a.get_by_label("Message", exact=True).press_sequentially("Yes", delay=20)
    await u.locator("#typing", has_text="is typing").wait_for()
    await a.get_by_role("button", name="Send").click()
    await u.locator("#chat-log li.theirs", has_text="Yes").wait_for()
    await u.locator("#chat-log li.mine[data-read=true]").wait_for()

    # Per-minute ticks reach both sides.
    await u.wait_for_function(
        "() => Number(document.querySelector('#session-meter').dataset.minute) >= 3"
    )
    await a.wait_for_function(
        "() => Number(document.querySelector('#session-meter').dataset.minute) >= 2"
    )
    await shot(user, shots, "session-chat-user")
    await shot(astro, shots, "session-chat-astrologer")

    # The user ends it; both see the receipt.
    await u.get_by_role("button", name="End session").click()
    for page in (u, a):
        await page.wait_for_selector("#receipt:not([hidden])")
        await page.wait_for_selector("#screen-session[data-status=completed]")
    billed = int(await u.locator("#receipt-minutes").inner_text())
    assert billed >= 3
    total = int(await u.locator("#receipt").get_attribute("data-total-charged") or "0")
    assert total == billed * RATES[0]
    assert "user ended" in await u.locator("#receipt-reason").inner_text()
    # What the ledger says: the wallet paid exactly the receipt.
    balance = await pool.fetchval(
        "SELECT balance FROM accounts WHERE kind = 'user_wallet' AND owner_id = "
        "(SELECT id FROM users WHERE phone = $1)",
        USER_PHONE,
    )
    assert balance == 50_000 - total
    await shot(user, shots, "session-receipt")

    # Review it.
    await u.locator("#review-form input[name=rating][value='4']").check()
    await u.get_by_label("Comment (optional)").fill("Clear and kind.")
    await u.get_by_role("button", name="Send review").click()
    await u.wait_for_selector("#review-form[hidden]", state="attached")
    assert await pool.fetchval("SELECT count(*) FROM reviews") == 1

    # The astrologer's earnings show their share.
    await a.get_by_role("button", name="Earnings").click()
    await a.wait_for_function(
        "() => Number(document.querySelector('#earnings-balance').dataset.amount) > 0"
    )
    await shot(astro, shots, "earnings")
    assert astro_row.id
    await user.assert_clean()
    await astro.assert_clean()


async def test_video_call_connects(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require(*LIVE_FLOW, "/v1/rtc/ice-servers")
    await seed(pool)
    astro = await astrologer_goes_online(open_page)
    user = await open_page()
    await sign_in(user, USER_PHONE)
    await user_requests(user, "video")
    await astrologer_accepts(astro)
    for side in (user, astro):
        page = side.page
        await page.wait_for_selector("#call[data-pc-state=connected]", state="attached")
        await page.wait_for_selector("#call[data-remote-playing=true]", state="attached")
        state = await page.evaluate(
            """() => ({pc: window.__astrolive.call?.pc?.connectionState,
                       playing: (() => { const v = document.querySelector('#remote-video');
                         return !v.paused && v.readyState >= 2 && v.videoWidth > 0; })()})"""
        )
        assert state == {"pc": "connected", "playing": True}
    await shot(user, shots, "session-video-user")
    await shot(astro, shots, "session-video-astrologer")
    await astro.page.get_by_role("button", name="End session").click()
    for side in (user, astro):
        await side.page.wait_for_selector("#screen-session[data-status=completed]")
        await side.page.wait_for_selector("#call[data-pc-state=closed]", state="attached")
    assert "astrologer ended" in await user.page.locator("#receipt-reason").inner_text()
    await user.assert_clean()
    await astro.assert_clean()


async def test_low_balance_warning_then_the_session_ends_itself(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require(*LIVE_FLOW)
    await seed(pool, funds=6 * RATES[0])  # six minutes of chat, just above the five to start
    astro = await astrologer_goes_online(open_page)
    user = await open_page(phone_sized=True)
    await sign_in(user, USER_PHONE)
    await user_requests(user, "chat")
    await astrologer_accepts(astro)
    u = user.page
    await u.wait_for_selector("#low-balance:not([hidden])")
    assert "minute" in await u.locator("#low-balance").inner_text()
    await shot(user, shots, "session-low-balance")
    await u.wait_for_selector("#screen-session[data-status=completed]")
    assert "insufficient balance" in await u.locator("#receipt-reason").inner_text()
    assert int(await u.locator("#receipt-minutes").inner_text()) == 6
    await user.assert_clean()


async def test_screenshots_of_every_screen(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require(
        *SIGN_IN, "/v1/astrologers", "/v1/wallet", "/v1/recharge-packs", "/v1/wallet/recharges"
    )
    await seed(pool)
    await factories.make_astrologer(pool, verification="pending", display_name="Pending Pandit")
    await factories.make_user(pool, role="admin", phone=ADMIN_PHONE)

    anon = await open_page(phone_sized=True)
    await shot(anon, shots, "signin")
    # A refused code shows the API's own message to the person.
    await anon.page.get_by_label("Mobile number").fill(USER_PHONE)
    await anon.page.get_by_role("button", name="Send code").click()
    await anon.page.get_by_label("Code sent to").fill("000000")
    await anon.page.get_by_role("button", name="Verify and sign in").click()
    await anon.page.locator("#errors .error[data-code=invalid_otp]").wait_for()
    await shot(anon, shots, "signin-error")

    user = await open_page(phone_sized=True)
    await sign_in(user, USER_PHONE)
    u = user.page
    await u.locator("#astrologers li", has_text="Acharya Test").wait_for()
    # Filters go to the API: no tarot reader is seeded.
    await u.get_by_label("Skill", exact=True).fill("tarot")
    await u.get_by_role("button", name="Search").click()
    await u.locator("#astrologers li", has_text="No astrologer matches").wait_for()
    await u.get_by_label("Skill", exact=True).fill("")
    await u.get_by_role("button", name="Search").click()
    await u.locator("#astrologers li", has_text="Acharya Test").wait_for()
    await shot(user, shots, "discover")

    # Live presence: the astrologer goes online and the user's list follows without a reload.
    card = u.locator("#astrologers li", has_text="Acharya Test")
    await card.locator(".presence[data-status=offline]").wait_for()
    astro = await open_page()
    await sign_in(astro, ASTRO_PHONE, role="astrologer")
    a = astro.page
    await a.wait_for_selector("body[data-screen=desk]")
    await a.get_by_role("button", name="Go online").click()
    await card.locator(".presence[data-status=online]").wait_for()
    await shot(astro, shots, "desk")

    # Recharge through the test gateway (the worker settles it).
    await u.get_by_role("button", name="Wallet").click()
    await u.wait_for_selector("#wallet-balance[data-amount='50000']")
    await u.get_by_label("custom amount").check()
    await u.get_by_label("or an amount in ₹").fill("100")
    await u.get_by_role("button", name="Pay").click()
    await u.wait_for_selector("#recharge-status[data-status=succeeded]", timeout=20_000)
    await u.wait_for_selector("#wallet-balance[data-amount='60000']")
    await shot(user, shots, "wallet")
    await u.get_by_role("button", name="Consultations").click()
    await u.wait_for_selector("body[data-screen=history]")
    await shot(user, shots, "history")
    await u.get_by_role("button", name="Echo test").click()
    await shot(user, shots, "echo")
    # Keyboard use: the first control is reachable and visibly focused.
    await u.keyboard.press("Tab")
    outline = await u.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    await user.assert_clean()

    await a.get_by_role("button", name="Profile").click()
    await a.wait_for_selector("body[data-screen=profile]")
    await shot(astro, shots, "profile")

    if {"/v1/admin/astrologers", "/v1/admin/refunds"} <= await console.routes():
        admin = await open_page()
        await sign_in(admin, ADMIN_PHONE)
        p = admin.page
        await p.wait_for_selector("body[data-screen=verify]")
        await p.locator("#verify-queue li", has_text="Pending Pandit").wait_for()
        await shot(admin, shots, "admin-verification")
        await (
            p.locator("#verify-queue li", has_text="Pending Pandit")
            .get_by_role("button", name="Approve")
            .click()
        )
        await p.locator("#verify-queue li", has_text="Pending Pandit").wait_for(state="detached")
        assert (
            await pool.fetchval(
                "SELECT verification FROM astrologer_profiles WHERE display_name = 'Pending Pandit'"
            )
            == "approved"
        )
        await p.get_by_role("button", name="Refunds").click()
        await shot(admin, shots, "admin-refunds")
        await admin.assert_clean()


async def test_pre_call_echo_test_plays_back(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require(*SIGN_IN, "/v1/rtc/ice-servers")
    await seed(pool)
    user = await open_page()
    await sign_in(user, USER_PHONE)
    page = user.page
    await page.get_by_role("button", name="Echo test").click()
    await page.get_by_role("button", name="Start echo test").click()
    await page.wait_for_selector("#echo[data-pc-state=connected]", state="attached")
    await page.wait_for_selector("#echo[data-remote-playing=true]", state="attached")
    assert await page.evaluate(
        "() => { const v = document.querySelector('#echo-remote');"
        " return !v.paused && v.videoWidth > 0; }"
    )
    await shot(user, shots, "echo-running")
    await page.get_by_role("button", name="Stop").click()
    await page.wait_for_selector("#echo[data-pc-state=closed]", state="attached")
    await user.assert_clean()


async def test_console_explains_a_missing_socket_io_client(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    """Without `npm install` the server answers /vendor/socket.io.js with a 503 (tested without a
    browser in test_console_http.py); here the browser gets that answer and the page says what to
    do, while sign-in and the REST screens keep working."""
    await console.require(*SIGN_IN, "/v1/wallet")
    await seed(pool)

    async def without_client(page: Any) -> None:
        async def answer(route: Any) -> None:
            await route.fulfill(
                status=503,
                content_type="application/json",
                body='{"error": {"code": "console_dependency_missing", "message": "the console '
                "needs Node's socket.io-client: run npm install in astrolive/static\"}}",
            )

        await page.route("**/vendor/socket.io.js", answer)

    user = await open_page(prepare=without_client)
    page = user.page
    await page.get_by_label("Mobile number").fill(USER_PHONE)
    await page.get_by_role("button", name="Send code").click()
    await page.get_by_label("Code sent to").fill("123456")
    await page.get_by_role("button", name="Verify and sign in").click()
    await page.locator("#banner", has_text="run npm install in astrolive/static").wait_for()
    await page.get_by_role("button", name="Wallet").click()
    await page.wait_for_selector("#wallet-balance[data-amount='50000']")
    await shot(user, shots, "without-socket-io-client")
    assert not user.page_errors
