"""Reconciliation finds every kind of break, reports it, and the CLI exits non-zero on one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from billing import keys
from billing.holds import place_hold
from billing.ledger import account_id, post_charges
from billing.reconcile import CHECKS, Finding, ReconcileMetrics, reconcile, reconcile_check
from core.services import Services
from db.pool import Conn
from tests.billing.support import make_session
from workers.context import JobContext
from workers.ledger import expire_holds_job, reconcile_ledger_job, rollup_system_balances_job

Pool: TypeAlias = "asyncpg.Pool[Any]"


@pytest.fixture
async def raw(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection that can bypass the ledger's triggers, to forge the breaks a bug would make."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _report(db: Pool) -> Any:
    async with db.acquire() as conn:
        return await reconcile(conn)


async def _busy_ledger(db: Pool) -> Any:
    s = await make_session(db, funded=1000)
    async with db.acquire() as conn:
        await post_charges(conn, [s.charge(m) for m in range(1, 4)])
        await post_charges(conn, [s.charge(9, 0, 60, 100)])
        await place_hold(
            conn, key="h", user_id=s.user, amount=200, currency="INR", reason="booking",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip
    return s


async def test_a_healthy_ledger_has_no_breaks(db: Pool) -> None:
    await _busy_ledger(db)
    report = await _report(db)
    assert report.ok, report.findings
    assert set(report.counts()) >= {
        "transfers_balanced", "ledger_zero_sum", "owned_balances", "balance_after",
        "system_balances", "no_negative_wallet", "held_matches_holds",
    }  # fmt: skip
    assert set(report.counts().values()) == {0}


async def test_a_balance_that_drifted_from_its_entries_is_a_break(
    db: Pool, raw: asyncpg.Connection[Any]
) -> None:
    s = await _busy_ledger(db)
    await raw.execute("UPDATE accounts SET balance = balance + 5 WHERE id = $1", s.wallet)
    counts = (await _report(db)).counts()
    assert counts["owned_balances"] == 1
    assert counts["balance_after"] == 1  # the last entry no longer matches the balance
    assert counts["transfers_balanced"] == 0


async def test_held_that_no_open_hold_explains_is_a_break(
    db: Pool, raw: asyncpg.Connection[Any]
) -> None:
    s = await _busy_ledger(db)
    await raw.execute("UPDATE accounts SET held = held + 1 WHERE id = $1", s.wallet)
    report = await _report(db)
    assert report.counts()["held_matches_holds"] == 1
    [finding] = report.findings
    assert finding.subject == str(s.wallet)
    assert finding.details == {"held": 201, "open_holds": 200}


async def test_an_unbalanced_transfer_is_a_break(db: Pool, raw: asyncpg.Connection[Any]) -> None:
    await _busy_ledger(db)
    async with db.acquire() as conn:
        revenue = await account_id(conn, "platform_revenue", None)
    transfer = await raw.fetchval("SELECT id FROM transfers LIMIT 1")
    # What a bug writing entries outside the ledger would leave (the triggers are bypassed).
    await raw.execute("SET session_replication_role = replica")
    await raw.execute(
        "INSERT INTO entries (transfer_id, account_id, amount) VALUES ($1, $2, 7)",
        transfer,
        revenue,
    )
    counts = (await _report(db)).counts()
    assert counts["transfers_balanced"] == 1
    assert counts["ledger_zero_sum"] == 1
    assert counts["system_balances"] == 1  # no delta was queued for it either


async def test_registered_checks_run_and_metrics_record_breaks(db: Pool) -> None:
    async def gateway_check(conn: Conn) -> list[Finding]:
        return [Finding("test_gateway", "pay_1", {"why": "credited twice"})]

    reconcile_check("test_gateway")(gateway_check)
    try:
        report = await _report(db)
    finally:
        del CHECKS["test_gateway"]
    assert report.counts()["test_gateway"] == 1
    assert not report.ok
    registry = CollectorRegistry()
    metrics = ReconcileMetrics(registry)
    metrics.record(report)
    text = generate_latest(registry).decode()
    assert 'ledger_reconcile_last_breaks{check="test_gateway"} 1.0' in text
    assert 'ledger_reconcile_last_breaks{check="owned_balances"} 0.0' in text
    assert 'ledger_reconcile_breaks_total{check="test_gateway"} 1.0' in text
    assert "ledger_reconcile_runs_total 1.0" in text


async def test_jobs_roll_up_expire_and_reconcile(db: Pool, services: Services) -> None:
    s = await _busy_ledger(db)
    async with db.acquire() as conn:
        await place_hold(
            conn, key="old", user_id=s.user, amount=100, currency="INR", reason="booking",
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )  # fmt: skip
    ctx: JobContext = {"services": services}
    assert await rollup_system_balances_job(ctx) == 3  # clearing, platform revenue, promotions
    assert await rollup_system_balances_job(ctx) == 0
    assert await expire_holds_job(ctx) == 1
    counts = await reconcile_ledger_job(ctx)
    assert set(counts.values()) == {0}
    summary = json.loads(await services.redis.get(keys.RECONCILE_LAST))
    assert summary["ok"] is True
    assert 0 < await services.redis.ttl(keys.RECONCILE_LAST) <= keys.RECONCILE_LAST_TTL_SECONDS


async def _cli(database_url: str, redis_url: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_FORMAT": "text"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "astrolive", "reconcile", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_cli_exits_non_zero_on_a_break(
    db: Pool, raw: asyncpg.Connection[Any], database_url: str, redis_url: str
) -> None:
    s = await _busy_ledger(db)
    code, out = await _cli(database_url, redis_url)
    assert code == 0, out
    assert "ledger ok" in out
    await raw.execute("UPDATE accounts SET balance = balance - 1 WHERE id = $1", s.wallet)
    code, out = await _cli(database_url, redis_url)
    assert code == 1
    assert "BREAK owned_balances" in out
    assert "LEDGER BROKEN" in out
