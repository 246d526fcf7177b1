"""What the browser tests do to the console, as a person would: type, click, read the screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TEST_PHONES

USER_PHONE, ASTRO_PHONE, ADMIN_PHONE = (p.split(":")[0] for p in TEST_PHONES.split(","))
TEST_CODE = "123456"

PHONE_VIEWPORT = {"width": 390, "height": 844}  # a phone-sized screen
DESKTOP_VIEWPORT = {"width": 1200, "height": 900}


class Watched:
    """A page plus what went wrong on it: uncaught exceptions and failed-request messages."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )

    async def toasts(self) -> list[str]:
        texts: list[str] = await self.page.locator(
            "#errors .error:not(.notice) p"
        ).all_inner_texts()
        return texts

    async def assert_clean(self) -> None:
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not await self.toasts(), f"errors shown to the person: {await self.toasts()}"


async def new_page(
    browser: Any, base_url: str, *, phone_sized: bool = False, prepare: Any = None
) -> Watched:
    context = await browser.new_context(
        base_url=base_url,
        viewport=PHONE_VIEWPORT if phone_sized else DESKTOP_VIEWPORT,
        permissions=["camera", "microphone"],
    )
    context.set_default_timeout(20_000)  # generous: CI machines run other suites too
    page = await context.new_page()
    watched = Watched(page)
    if prepare is not None:
        await prepare(page)
    await page.goto("/")
    await page.wait_for_selector("body[data-ready=true]")
    return watched


async def sign_in(w: Watched, phone: str, *, role: str = "user") -> None:
    page = w.page
    await page.get_by_label("Mobile number").fill(phone)
    await page.locator(f"input[name=role][value={role}]").check()
    await page.get_by_role("button", name="Send code").click()
    await page.get_by_label("Code sent to").fill(TEST_CODE)
    await page.get_by_role("button", name="Verify and sign in").click()
    await page.wait_for_selector("#who:not([hidden])")
    await page.wait_for_selector("#socket-state[data-state=on]")


async def shot(w: Watched, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    await w.page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path
