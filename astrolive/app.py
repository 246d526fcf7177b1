"""The one composition root: `create_app(settings)` builds the aiohttp app, the Socket.IO server,
the PostgreSQL pool, the Redis clients and the arq pool, and wires the packages together.

Settings must already name the database and Redis (`astrolive.cli` resolves local or embedded
ones before calling this). Nothing is created at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from api.framework import (
    AUTHENTICATOR,
    INFRA_PATHS,
    SERVICES,
    assert_all_routes_declared,
    install,
)
from api.middleware import (
    HTTP_METRICS,
    MAX_REQUEST_LINE_BYTES,
    METRICS_REGISTRY,
    HttpMetrics,
    build_middlewares,
)
from api.routes import ROUTERS
from astrolive.console import setup_console
from astrolive.docs_page import setup_docs
from astrolive.resources import close_services, open_services
from auth.authenticator import authenticate
from core.settings import Settings
from core.storage import STORAGE, make_storage
from live.meter import running_loop
from realtime.server import SIO, SioEmitter, create_sio, register

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=build_middlewares(settings),
        handler_args={"max_line_size": MAX_REQUEST_LINE_BYTES},  # issue 14: see its comment
    )
    app[SETTINGS] = settings
    registry = CollectorRegistry()
    app[METRICS_REGISTRY] = registry
    app[HTTP_METRICS] = HttpMetrics(registry)
    app[AUTHENTICATOR] = authenticate  # auth/authenticator.py: token + revoked/blocked check
    # S3 when S3_BUCKET is set, else a local folder served by /v1/files: built once, shared by
    # the views (app[STORAGE]) and the use cases (Services.storage).
    storage = make_storage(settings)
    app[STORAGE] = storage
    app[INFRA_PATHS] = {"/socket.io"}

    assert settings.redis_url, "resolve the services first"
    sio = create_sio(settings, settings.redis_url)
    sio.attach(app, socketio_path="socket.io")
    app[SIO] = sio
    register(sio, lambda: app[SERVICES], app)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(settings, SioEmitter(sio), storage=storage)
        app[SERVICES] = services
        yield
        await close_services(services)

    app.cleanup_ctx.append(services_ctx)

    async def meter_ctx(app: web.Application) -> AsyncIterator[None]:
        async with running_loop(app[SERVICES]):  # the minute meter: charges due minutes
            yield

    if settings.meter_loop:
        app.cleanup_ctx.append(meter_ctx)
    install(app, ROUTERS)
    setup_console(app)  # the web console at /
    setup_docs(app)  # the API reference at /docs
    assert_all_routes_declared(app)
    return app
