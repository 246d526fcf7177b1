"""The app served on a real loopback port, with short real-time timers, for Socket.IO clients."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from astrolive.app import create_app
from core.settings import Settings
from tests.conftest import make_settings

RT_OVERRIDES: dict[str, Any] = {
    "realtime_heartbeat_seconds": 0.5,
    "stun_urls": "stun:stun.example.org:3478",
    "turn_urls": "turn:turn.example.org:3478?transport=udp",
    "turn_secret": "turn-test-secret",
    "turn_ttl_seconds": 600,
}

ServerFactory = Callable[..., Awaitable[tuple[str, web.Application]]]


@pytest.fixture
def rt_settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, redis_url, tmp_path / "data", **RT_OVERRIDES)


@pytest.fixture
def start_server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> ServerFactory:
    """Start the app on 127.0.0.1 with RT_OVERRIDES plus `overrides`; returns (url, app)."""

    async def start(**overrides: Any) -> tuple[str, web.Application]:
        settings = make_settings(
            database_url, redis_url, tmp_path / "data", **{**RT_OVERRIDES, **overrides}
        )
        app = create_app(settings)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/"), app

    return start


@pytest.fixture
async def rt_url(start_server: ServerFactory) -> str:
    url, _ = await start_server()
    return url
