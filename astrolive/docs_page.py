"""The API reference page at `/docs`: Swagger UI over `/v1/openapi.json`, served by the app.

    /docs                 the page (astrolive/static/docs/index.html)
    /docs/docs.js         its start-up script (no inline script: the CSP stays as it is)
    /vendor/swagger-ui/   swagger-ui-dist's CSS and bundle, from `npm install` in
                          astrolive/static (./dev does it); nothing comes from a CDN

Without the npm package the page answers 503 saying how to get it; the JSON documents are served
either way.
"""

from __future__ import annotations

from aiohttp import web

from api.framework import INFRA_PATHS
from astrolive.console import NO_CACHE, STATIC_DIR
from core.errors import AppError

DOCS_DIR = STATIC_DIR / "docs"
SWAGGER_UI_DIR = STATIC_DIR / "node_modules" / "swagger-ui-dist"
SWAGGER_UI_FILES = {"swagger-ui.css", "swagger-ui-bundle.js"}


class DocsDependencyMissing(AppError):
    status, code = 503, "docs_dependency_missing"
    message = "the /docs page needs swagger-ui-dist: run npm install in astrolive/static"


async def docs_page(request: web.Request) -> web.StreamResponse:
    """GET /docs — the API reference."""
    if not (SWAGGER_UI_DIR / "swagger-ui-bundle.js").is_file():
        raise DocsDependencyMissing()
    return web.FileResponse(DOCS_DIR / "index.html", headers=NO_CACHE)


async def docs_script(request: web.Request) -> web.StreamResponse:
    """GET /docs/docs.js — starts Swagger UI on the served OpenAPI document."""
    return web.FileResponse(
        DOCS_DIR / "docs.js", headers={**NO_CACHE, "Content-Type": "text/javascript"}
    )


async def swagger_ui_file(request: web.Request) -> web.StreamResponse:
    """GET /vendor/swagger-ui/{name} — one of swagger-ui-dist's two files the page loads."""
    name = request.match_info["name"]
    path = SWAGGER_UI_DIR / name
    if name not in SWAGGER_UI_FILES or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=NO_CACHE)


def setup_docs(app: web.Application) -> None:
    """Serve `/docs` from `app` and declare its paths as infrastructure (not API) routes."""
    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs/docs.js", docs_script)
    app.router.add_get("/vendor/swagger-ui/{name}", swagger_ui_file)
    app.setdefault(INFRA_PATHS, set()).update({"/docs", "/vendor/swagger-ui"})
