"""The console's questions screen in a real browser (issue 16): a user asks an astrologer who
takes questions, the astrologer answers from their inbox, the user reads the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import factories
from tests.console.conftest import OpenPage
from tests.console.helpers import ASTRO_PHONE, USER_PHONE, shot, sign_in

pytestmark = pytest.mark.slow


async def test_ask_and_answer_a_question(
    pool: asyncpg.Pool[Any], open_page: OpenPage, shots: Path
) -> None:
    astro = await factories.make_astrologer(pool, phone=ASTRO_PHONE, display_name="Acharya Test")
    await pool.execute(
        "UPDATE astrologer_profiles SET rate_question = 5000 WHERE user_id = $1", astro.id
    )
    user = await factories.make_user(pool, phone=USER_PHONE, name="Asha")
    await factories.fund(pool, user.id, 20_000)

    asker = await open_page()
    await sign_in(asker, USER_PHONE)
    page = asker.page
    await page.get_by_role("button", name="Questions").click()
    await page.wait_for_selector("body[data-screen=questions]")
    await page.locator("#question-astrologer option", has_text="Acharya Test").wait_for(
        state="attached"
    )
    await page.get_by_label("Your question").fill("Will I travel this year?")
    await page.get_by_role("button", name="Ask").click()
    item = page.locator("#question-list li[data-status=open]")
    await item.wait_for()
    assert "Will I travel this year?" in await item.inner_text()
    await shot(asker, shots, "question-asked")

    answerer = await open_page()
    await sign_in(answerer, ASTRO_PHONE, role="astrologer")
    apage = answerer.page
    await apage.get_by_role("button", name="Questions").click()
    await apage.wait_for_selector("#question-list li[data-status=open]")
    await apage.get_by_label("Your answer").fill("Yes, in the winter.")
    await apage.get_by_role("button", name="Send answer").click()
    await apage.wait_for_selector("#question-list li[data-status=answered]")
    await shot(answerer, shots, "question-answered")

    # The asker's screen follows the question:updated event.
    answered = page.locator("#question-list li[data-status=answered]")
    await answered.wait_for()
    assert "Yes, in the winter." in await answered.inner_text()
    await asker.assert_clean()
    await answerer.assert_clean()
    assert await pool.fetchval("SELECT status FROM questions") == "answered"
