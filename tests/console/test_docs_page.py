"""The API reference at /docs: Swagger UI from npm, served by the app, rendered by Chromium with
the app's own Content-Security-Policy and without a single request to another host."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from astrolive.docs_page import SWAGGER_UI_DIR


@pytest.fixture
def swagger_ui() -> None:
    if not (SWAGGER_UI_DIR / "swagger-ui-bundle.js").is_file():
        pytest.skip("swagger-ui-dist is not installed (npm install in astrolive/static)")


async def test_docs_files_are_served_locally(
    client: TestClient[Any, Any], swagger_ui: None
) -> None:
    page = await client.get("/docs")
    assert page.status == 200
    html = await page.text()
    assert "https://" not in html.replace("https://github.com", "")  # no CDN
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert (await client.get("/vendor/swagger-ui/swagger-ui-bundle.js")).status == 200
    assert (await client.get("/vendor/swagger-ui/swagger-ui.css")).status == 200
    # Only the two files the page needs; nothing else of node_modules is reachable.
    refused = await client.get("/vendor/swagger-ui/package.json")
    assert refused.status == 404
    assert (await refused.json())["error"]["code"] == "not_found"


@pytest.mark.slow
async def test_docs_page_renders_in_chromium(
    client: TestClient[Any, Any], browser: Any, swagger_ui: None, shots: Path
) -> None:
    """Slow: a browser renders Swagger UI (about two seconds)."""
    base = str(client.make_url("/")).rstrip("/")
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    hosts: set[str] = set()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("request", lambda req: hosts.add(urlsplit(req.url).netloc))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        await page.goto(f"{base}/docs")
        await page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        await page.wait_for_selector("text=astrolive API")
        # An operation, its error codes and the documented headers are on the page.
        operation = page.locator("#operations-wallet-post_create_recharge")
        await operation.locator("button").first.click()
        await operation.locator("text=idempotency_conflict").first.wait_for()
        await operation.locator("text=X-Request-ID").first.wait_for()
        await page.screenshot(path=str(shots / "docs-page.png"), full_page=False)
    finally:
        await context.close()
    assert errors == []
    assert hosts == {urlsplit(base).netloc}  # nothing from a CDN or a validator
