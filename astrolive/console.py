"""The web console: plain HTML, CSS and ES modules served by the API's own aiohttp server.

    /                    the console page (astrolive/static/index.html)
    /app/...             its stylesheet and modules (astrolive/static/app/)
    /vendor/socket.io.js the official socket.io-client's ES module, from `npm install` in
                         astrolive/static; when it is absent the console shows how to get it and
                         the API keeps running

Nothing here is part of the JSON API, so the paths are declared in `INFRA_PATHS` instead of through
a `Router`. No inline scripts and no CDNs: the app's Content-Security-Policy stays as it is.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api.framework import INFRA_PATHS
from core.errors import AppError

STATIC_DIR = Path(__file__).resolve().parent / "static"
SOCKET_IO_ESM = STATIC_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
MISSING_SOCKET_IO = (
    "the console needs Node's socket.io-client: run npm install in astrolive/static "
    "(chat, presence, live sessions and calls stay off until then)"
)
# The page and the vendored client change with a deploy, not within one: a browser revalidates
# them on each load instead of running a stale console against a newer API.
NO_CACHE = {"Cache-Control": "no-cache"}


class ConsoleDependencyMissing(AppError):
    status, code, message = 503, "console_dependency_missing", MISSING_SOCKET_IO


async def index(request: web.Request) -> web.StreamResponse:
    """GET / — the console page."""
    return web.FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)


async def socket_io_client(request: web.Request) -> web.StreamResponse:
    """GET /vendor/socket.io.js — the socket.io-client ES module, or a 503 saying how to get it."""
    if not SOCKET_IO_ESM.is_file():
        raise ConsoleDependencyMissing()
    return web.FileResponse(
        SOCKET_IO_ESM,
        headers={**NO_CACHE, "Content-Type": "text/javascript; charset=utf-8"},
    )


def setup_console(app: web.Application) -> None:
    """Serve the console from `app` and declare its paths as infrastructure (not API) routes."""
    app.router.add_get("/", index)
    app.router.add_get("/vendor/socket.io.js", socket_io_client)
    app.router.add_static("/app/", STATIC_DIR / "app", append_version=False)
    app.setdefault(INFRA_PATHS, set()).update({"/", "/app", "/vendor/socket.io.js"})
