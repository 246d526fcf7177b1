"""The asyncpg pool every process uses."""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# What query functions take: a connection (in or out of a transaction) or a pool.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
Executor: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any] | asyncpg.Pool[Any]"

SERVER_SETTINGS = {
    "application_name": "astrolive",
    "timezone": "UTC",
}

# Batched ledger and meter statements (arrays of ids) got a generic plan ~9x slower than a custom
# one (DESIGN.md pitfalls). Everything else (discovery above all) gains from the plans asyncpg's
# prepared statements cache, so the setting is scoped to those transactions, not set on every
# pooled connection (issue 15): `custom_plans(conn)` first thing inside them. SET LOCAL ends with
# the transaction; inside a savepoint it lasts until the outer transaction ends.
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


async def custom_plans(conn: Conn) -> None:
    """Plan this transaction's statements for their actual parameters (see CUSTOM_PLANS)."""
    await conn.execute(CUSTOM_PLANS)


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings=SERVER_SETTINGS,
        command_timeout=30,
    )
    assert pool is not None  # create_pool returns None only when awaited lazily
    return pool


async def connect(dsn: str) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    await _init_connection(conn)
    return conn
