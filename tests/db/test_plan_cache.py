"""plan_cache_mode=force_custom_plan is scoped to the transactions that need it (issue 15): a
pooled connection plans as PostgreSQL does by default, a ledger/meter transaction custom."""

from __future__ import annotations

from typing import Any

import asyncpg

from db.pool import custom_plans


async def test_custom_plans_last_only_for_their_transaction(db: asyncpg.Pool[Any]) -> None:
    async with db.acquire() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
        async with conn.transaction():
            await custom_plans(conn)
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            async with conn.transaction():  # a savepoint inherits it
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
