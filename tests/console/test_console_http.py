"""The console is served by the API's own server, within the app's Content-Security-Policy.
No browser here: these are fast."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from astrolive import console

CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
    "media-src 'self' blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
)
IMPORT = re.compile(
    r"""(?:^|\s)(?:import|export)\s[^"';]*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)"""
)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


async def test_root_serves_the_console_under_the_csp(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    html = await resp.text()
    parsed = Tags()
    parsed.feed(html)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert scripts, "the console loads its code"
    assert not parsed.inline_script, "an inline script would be blocked by the CSP"
    for tag, attrs in parsed.tags:
        assert not any(k.startswith("on") for k in attrs), f"inline handler on <{tag}>"
        for attr in ("src", "href"):
            value = attrs.get(attr) or ""
            assert not value.startswith(("http:", "https:", "//")), f"off-site {attr} {value}"
    assert "style=" not in html  # styles live in console.css


async def test_every_asset_and_module_import_resolves(client: TestClient[Any, Any]) -> None:
    html = await (await client.get("/")).text()
    parsed = Tags()
    parsed.feed(html)
    todo = [a["src"] or "" for t, a in parsed.tags if t == "script"]
    todo += [
        a["href"] or "" for t, a in parsed.tags if t == "link" and a.get("rel") == "stylesheet"
    ]
    seen: set[str] = set()
    while todo:
        url = todo.pop()
        if url in seen or url == "/vendor/socket.io.js":
            continue
        seen.add(url)
        resp = await client.get(url)
        assert resp.status == 200, url
        assert resp.headers["Content-Security-Policy"] == CSP
        if url.endswith(".js"):
            assert "javascript" in resp.content_type, (url, resp.content_type)
            base = url.rsplit("/", 1)[0]
            for rel_a, rel_b in IMPORT.findall(await resp.text()):
                rel = rel_a or rel_b
                target = rel if rel.startswith("/") else f"{base}/{rel}"
                parts: list[str] = []
                for part in target.split("/"):
                    if part == "..":
                        parts.pop()
                    elif part != ".":
                        parts.append(part)
                todo.append("/".join(parts))
    assert {"/app/main.js", "/app/console.css", "/app/screens/session.js"} <= seen


async def test_socket_io_client_is_served_when_installed(client: TestClient[Any, Any]) -> None:
    if not console.SOCKET_IO_ESM.is_file():
        pytest.skip("run npm install in astrolive/static (./dev does) to serve the client")
    resp = await client.get("/vendor/socket.io.js")
    assert resp.status == 200
    assert "javascript" in resp.content_type
    assert "export{" in (await resp.text()).replace(" ", "")


async def test_missing_socket_io_client_is_explained_and_the_api_runs(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(console, "SOCKET_IO_ESM", tmp_path / "absent.js")
    resp = await client.get("/vendor/socket.io.js")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "console_dependency_missing"
    assert "npm install in astrolive/static" in body["error"]["message"]
    assert (await client.get("/")).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_only_the_console_files_are_served(client: TestClient[Any, Any]) -> None:
    for path in (
        "/app/../package.json",
        "/app/%2e%2e/package.json",
        "/package.json",
        "/node_modules/socket.io-client/package.json",
        "/index.html",
        "/app/nope.js",
    ):
        resp = await client.get(path)
        assert resp.status in (403, 404), path
    unknown = await client.get("/v1/nope")
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "not_found"


def test_console_paths_do_not_hide_undeclared_routes(settings: Any) -> None:
    from aiohttp import web

    from api.framework import assert_all_routes_declared
    from astrolive.app import create_app

    app = create_app(settings)

    async def sneaky(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/sneaky", sneaky)  # not under /app/ or /vendor/, and "/" is exact
    with pytest.raises(RuntimeError, match="does not declare its access"):
        assert_all_routes_declared(app)
