"""/readyz follows PostgreSQL and Redis going down and coming back, without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from astrolive.app import create_app
from tests.conftest import make_settings
from tests.tcp_proxy import CuttableProxy


def _opener(dsn: str) -> Any:
    parts = urlsplit(dsn)
    if parts.hostname:
        host, port = parts.hostname, parts.port or 5432
        return lambda: asyncio.open_connection(host, port)
    socket_dir = parse_qs(parts.query)["host"][0]
    return lambda: asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.5432")


def _through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    return urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", parts.path, "", ""))


async def _ready(client: Any) -> tuple[int, dict[str, str]]:
    resp = await client.get("/readyz")
    return resp.status, (await resp.json())["checks"]


async def test_readyz_follows_postgres_and_redis(
    aiohttp_client: Any, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    pg = CuttableProxy(_opener(database_url))
    await pg.start()
    redis_parts = urlsplit(redis_url)
    rhost, rport = redis_parts.hostname, redis_parts.port
    rd = CuttableProxy(lambda: asyncio.open_connection(rhost, rport))
    await rd.start()
    settings = make_settings(
        _through(database_url, pg.port),
        f"redis://127.0.0.1:{rd.port}/0",
        tmp_path,
    )
    client = await aiohttp_client(create_app(settings))
    assert await _ready(client) == (200, {"postgres": "ok", "redis": "ok"})

    await pg.cut()
    assert await _ready(client) == (503, {"postgres": "down", "redis": "ok"})
    await pg.start()
    assert await _ready(client) == (200, {"postgres": "ok", "redis": "ok"})

    await rd.cut()
    assert await _ready(client) == (503, {"postgres": "ok", "redis": "down"})
    await rd.start()
    assert await _ready(client) == (200, {"postgres": "ok", "redis": "ok"})
    await pg.cut()
    await rd.cut()
