"""Issue 17 in the console, in a real browser: a booking paid by shortfall with the test gateway,
an image sent in the chat and shown inline, and a refund ticket resolved by an admin."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image

from consultations import booking
from tests import factories
from tests.console.conftest import ConsoleServer, OpenPage
from tests.console.helpers import ADMIN_PHONE, USER_PHONE, shot, sign_in
from tests.console.test_console_browser import (
    RATES,
    astrologer_accepts,
    astrologer_goes_online,
    seed,
    user_requests,
)
from tests.payments.support import charged_consultation

pytestmark = pytest.mark.slow


async def test_booking_paid_by_shortfall_with_the_test_gateway(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require("/v1/consultations", "/v1/astrologers/{id}/slots")
    # ₹100 in the wallet; a 30-minute chat slot holds ₹300: ₹200 short.
    _, astro = await seed(pool, funds=10_000)
    async with pool.acquire() as conn:  # bookable all day, every day (UTC)
        await booking.set_availability(
            conn, astro.id, "UTC", [booking.Window(d, 0, 1440) for d in range(7)]
        )
    user = await open_page()
    await sign_in(user, USER_PHONE)
    page = user.page
    await page.locator("#nav button[data-screen=book]").click()
    await page.wait_for_selector("body[data-screen=book]")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    await page.get_by_label("Date").fill(tomorrow)
    await page.get_by_role("button", name="Show free slots").click()
    await page.locator("#book-slots input[name=slot]").first.check()
    await page.locator("#book-submit").click()
    await page.wait_for_selector("#book-status[data-status=scheduled]", timeout=30_000)
    await shot(user, shots, "booking-paid-by-shortfall")
    row = await pool.fetchrow(
        "SELECT status, hold_id FROM consultations WHERE astrologer_id = $1", astro.id
    )
    assert row is not None
    assert row["status"] == "scheduled"
    held = await pool.fetchval(
        "SELECT held FROM accounts WHERE kind = 'user_wallet' AND owner_id ="
        " (SELECT id FROM users WHERE phone = $1)",
        USER_PHONE,
    )
    assert held == 30 * RATES[0]
    await user.assert_clean()


async def test_an_image_sent_in_the_chat_shows_inline(
    console: ConsoleServer,
    open_page: OpenPage,
    pool: asyncpg.Pool[Any],
    shots: Path,
    tmp_path: Path,
) -> None:
    await console.require("/v1/consultations/{id}/attachments")
    await seed(pool)
    astro = await astrologer_goes_online(open_page)
    user = await open_page()
    await sign_in(user, USER_PHONE)
    await user_requests(user, "chat")
    await astrologer_accepts(astro)
    u, a = user.page, astro.page
    await u.wait_for_selector("#screen-session[data-status=active]")
    photo = tmp_path / "palm.jpg"
    out = io.BytesIO()
    Image.new("RGB", (120, 80), (180, 130, 90)).save(out, format="JPEG")
    photo.write_bytes(out.getvalue())
    await u.locator("#chat-file").set_input_files(str(photo))
    for side in (u, a):
        image = side.locator("#chat-log li img.attachment").first
        await image.wait_for()
        await side.wait_for_function(
            "() => { const i = document.querySelector('#chat-log li img.attachment');"
            " return i && i.complete && i.naturalWidth === 120; }"
        )
    await shot(astro, shots, "chat-image-astrologer")
    await user.assert_clean()
    await astro.assert_clean()


async def test_a_refund_ticket_resolved_by_an_admin(
    console: ConsoleServer, open_page: OpenPage, pool: asyncpg.Pool[Any], shots: Path
) -> None:
    await console.require("/v1/support/tickets", "/v1/admin/tickets")
    user_row, astro = await seed(pool)
    await factories.make_user(pool, role="admin", phone=ADMIN_PHONE)
    cid = await charged_consultation(pool, user_row.id, astro.id, minutes=4, rate=RATES[0])
    user = await open_page()
    await sign_in(user, USER_PHONE)
    u = user.page
    await u.locator("#nav button[data-screen=support]").click()
    await u.wait_for_selector("body[data-screen=support]")
    await u.get_by_label("Category").select_option("refund")
    await u.locator("#ticket-consultation").fill(str(cid))
    await u.get_by_label("What happened").fill("The astrologer stopped answering.")
    await u.get_by_role("button", name="Open ticket").click()
    await u.locator("#tickets li[data-status=open]").wait_for()

    admin = await open_page()
    await sign_in(admin, ADMIN_PHONE, role="user")
    p = admin.page
    await p.locator("#nav button[data-screen=tickets]").click()
    item = p.locator("#ticket-queue li").first
    await item.wait_for()
    assert "stopped answering" in await item.inner_text()
    await shot(admin, shots, "ticket-queue")
    await item.get_by_label("Refund ₹").fill("20")
    await item.get_by_role("button", name="Refund", exact=True).click()
    await p.wait_for_selector("#ticket-queue-empty:not([hidden])")

    await u.locator("#nav button[data-screen=support]").click()
    await u.locator("#tickets li[data-status=resolved]").wait_for()
    assert "₹20.00" in await u.locator("#tickets li").first.inner_text()
    refunded = await pool.fetchval("SELECT sum(amount) FROM consultation_refunds")
    assert refunded == 2000
    await user.assert_clean()
    await admin.assert_clean()
