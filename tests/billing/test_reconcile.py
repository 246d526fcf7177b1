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

from billing import keys, rules
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
    """A live consultation charged by the money rules: list 100, a 50 % promo (rate 50), share
    60 %, one free minute and a flat credit of 30; four minutes charged, its meter agreeing, and a
    booking hold on the wallet."""
    s = await make_session(db, funded=1000)
    row = await db.fetchrow(
        "UPDATE consultations SET status = 'active', list_rate = 100, rate = 50,"
        " share_percent = 60, free_minutes = 1, promo_credit = 30 WHERE id = $1"
        " RETURNING rate, list_rate, share_percent, free_minutes, promo_credit, currency,"
        " max_minutes",
        s.consultation,
    )
    assert row is not None
    terms = rules.Terms.from_record(row)
    prices = [rules.minute_price(terms, m) for m in range(1, 5)]
    async with db.acquire() as conn:
        await post_charges(
            conn, [s.charge(p.minute, p.user, p.astrologer, p.promotions) for p in prices]
        )
        await conn.execute(
            "INSERT INTO meters (consultation_id, started_at, minute_seconds, charged_minutes,"
            " charged_amount, free_amount)"
            " VALUES ($1, now() - interval '4 minutes', 60, 4, $2, $3)",
            s.consultation,
            sum(p.user for p in prices),
            sum(p.promotions for p in prices),
        )
        await place_hold(
            conn, key="h", user_id=s.user, amount=200, currency="INR", reason="booking",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip
    return s


def _of(report: Any, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


async def test_a_healthy_ledger_has_no_breaks(db: Pool) -> None:
    await _busy_ledger(db)
    report = await _report(db)
    assert report.ok, report.findings
    assert set(report.counts()) >= {
        "transfers_balanced", "ledger_zero_sum", "owned_balances", "balance_after",
        "system_balances", "no_negative_wallet", "held_matches_holds", "earnings_not_negative",
        "consultation_totals", "charge_terms", "question_charges", "payment_anomalies",
        "card_refunds_stuck", "payouts_stuck", "recharges_stuck", "recharges_credited",
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


# --- Money breaks (issue 13): each check sees the break planted for it ---------------------------


async def test_meter_and_consultation_totals_that_disagree_with_the_ledger(
    db: Pool, raw: asyncpg.Connection[Any]
) -> None:
    s = await _busy_ledger(db)
    await raw.execute(
        "UPDATE meters SET charged_amount = charged_amount + 50 WHERE consultation_id = $1",
        s.consultation,
    )
    [finding] = _of(await _report(db), "consultation_totals")
    assert finding.subject == str(s.consultation)
    assert (finding.details["meter_charged"], finding.details["ledger_paid"]) == (170, 120)
    await raw.execute(
        "UPDATE meters SET charged_amount = charged_amount - 50 WHERE consultation_id = $1",
        s.consultation,
    )
    assert (await _report(db)).ok
    # Completed, with its totals rewritten: billed 4 minutes, said to have charged 999.
    await raw.execute(
        "UPDATE consultations SET status = 'completed', end_reason = 'user_ended',"
        " billed_minutes = 4, total_charged = 999 WHERE id = $1",
        s.consultation,
    )
    [finding] = _of(await _report(db), "consultation_totals")
    assert (finding.details["total_charged"], finding.details["ledger_paid"]) == (999, 120)


async def test_a_charge_paying_the_astrologer_everything_is_a_break(db: Pool) -> None:
    s = await _busy_ledger(db)
    async with db.acquire() as conn:  # minute 5 should be user 50, promo 50, share 60
        await post_charges(conn, [s.charge(5, 50, 100, 50)])
        await conn.execute(
            "UPDATE meters SET charged_minutes = 5, charged_amount = charged_amount + 50,"
            " free_amount = free_amount + 50 WHERE consultation_id = $1",
            s.consultation,
        )
    report = await _report(db)
    [finding] = _of(report, "charge_terms")
    assert finding.details["minute"] == 5
    assert finding.details["paid"]["astrologer"] == 100
    assert finding.details["expected"] == {
        "user": 50, "promotions": 50, "astrologer": 60, "platform": 40, "others": 0,
    }  # fmt: skip
    assert report.counts()["consultation_totals"] == 0  # the totals agree: only the price is off


async def test_negative_earnings_and_wallets_are_breaks(
    db: Pool, raw: asyncpg.Connection[Any]
) -> None:
    """The database refuses negative earnings since 0013; a row from before it (the constraint
    is NOT VALID for old rows) is what this check catches. Planted in a rolled-back transaction
    with the constraint dropped."""
    s = await _busy_ledger(db)
    async with db.acquire() as conn:
        earnings = await account_id(conn, "astrologer_earnings", s.astrologer)
    tx = raw.transaction()
    await tx.start()
    try:
        await raw.execute("ALTER TABLE accounts DROP CONSTRAINT earnings_not_negative")
        await raw.execute("UPDATE accounts SET balance = -60 WHERE id = $1", earnings)
        findings = await CHECKS["earnings_not_negative"](raw)
    finally:
        await tx.rollback()
    assert [(f.subject, f.details["balance"]) for f in findings] == [(str(earnings), -60)]
    assert (await _report(db)).ok
    # The same for a wallet (its CHECK is as old as the ledger, so the plant needs it dropped too).
    tx = raw.transaction()
    await tx.start()
    try:
        await raw.execute("ALTER TABLE accounts DROP CONSTRAINT wallet_not_negative")
        await raw.execute("UPDATE accounts SET balance = 100 WHERE id = $1", s.wallet)  # held 200
        findings = await CHECKS["no_negative_wallet"](raw)
    finally:
        await tx.rollback()
    assert [(f.subject, f.details["balance"]) for f in findings] == [(str(s.wallet), 100)]


async def test_a_flagged_gateway_payment_is_a_break(db: Pool) -> None:
    from billing.gateways.base import CapturedPayment, PaymentState
    from billing.recharges import apply_payment_state_txn

    s = await _busy_ledger(db)
    recharge_id = await db.fetchval(
        "INSERT INTO recharges (user_id, gateway, amount, tax, total, gateway_order_id)"
        " VALUES ($1, 'razorpay', 1000, 180, 1180, 'order_x') RETURNING id",
        s.user,
    )
    extra = CapturedPayment("pay_2", 1180, "INR")
    async with db.acquire() as conn, conn.transaction():
        await apply_payment_state_txn(
            conn, recharge_id, PaymentState("succeeded", "pay_1", 1180, "INR", extra=(extra,))
        )
    [finding] = _of(await _report(db), "payment_anomalies")
    assert (finding.details["payment_id"], finding.details["kind"]) == ("pay_2", "extra_payment")
    await db.execute("UPDATE payment_anomalies SET status = 'resolved', resolved_at = now()")
    assert (await _report(db)).ok


async def test_stuck_refunds_payouts_and_recharges_are_breaks(
    db: Pool, raw: asyncpg.Connection[Any]
) -> None:
    from billing.gateways.base import PaymentState
    from billing.payouts import approve_payout, request_payout
    from billing.recharges import apply_payment_state_txn
    from billing.refunds import request_card_refund

    s = await _busy_ledger(db)
    paid, pending = [
        await db.fetchval(
            "INSERT INTO recharges (user_id, gateway, amount, tax, total, gateway_order_id)"
            " VALUES ($1, 'razorpay', 1000, 180, 1180, $2) RETURNING id",
            s.user,
            order,
        )
        for order in ("order_paid", "order_pending")
    ]
    async with db.acquire() as conn:
        async with conn.transaction():
            await apply_payment_state_txn(
                conn, paid, PaymentState("succeeded", "pay_ok", 1180, "INR")
            )
        refund = await request_card_refund(
            conn, recharge_id=paid, amount=500, reason="r", actor_id=None
        )
        payout = await request_payout(
            conn, astrologer_id=s.astrologer, amount=200, currency="INR", min_payout=100
        )
        await approve_payout(conn, payout_id=payout.id, admin_id=s.user)
    await db.execute(
        "INSERT INTO payment_events (gateway, event_id, type, recharge_id, payload)"
        " VALUES ('razorpay', 'evt_p', 'payment.failed', $1, '{}')",
        pending,
    )
    assert (await _report(db)).ok  # fresh: the sweep has time to finish them
    await raw.execute("UPDATE card_refunds SET updated_at = now() - interval '2 hours'")
    await raw.execute("UPDATE payouts SET approved_at = now() - interval '2 hours'")
    await raw.execute(
        "UPDATE recharges SET created_at = now() - interval '2 hours' WHERE id = $1", pending
    )
    report = await _report(db)
    assert [f.subject for f in _of(report, "card_refunds_stuck")] == [str(refund.id)]
    assert [f.subject for f in _of(report, "payouts_stuck")] == [str(payout.id)]
    assert [f.subject for f in _of(report, "recharges_stuck")] == [str(pending)]


async def test_a_question_charge_split_against_the_rules_is_a_break(db: Pool) -> None:
    from billing.holds import capture_hold
    from billing.ledger import Leg

    s = await _busy_ledger(db)
    async with db.acquire() as conn:
        hold = await place_hold(
            conn, key="q", user_id=s.user, amount=500, currency="INR", reason="question",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip
        wallet = await account_id(conn, "user_wallet", s.user)
        earnings = await account_id(conn, "astrologer_earnings", s.astrologer)
        transfer = await capture_hold(
            conn, hold.id, key="question:charge:x", kind="question_charge",
            legs=[Leg(wallet, -500), Leg(earnings, 500)],  # the astrologer took all of it
        )  # fmt: skip
    question = await db.fetchval(
        "INSERT INTO questions (user_id, astrologer_id, status, text_enc, answer_enc, price,"
        " share_percent, hold_id, charge_transfer_id, idempotency_key, request_hash,"
        " answer_due_at, answered_at, closed_at)"
        " VALUES ($1, $2, 'answered', '\\x00', '\\x00', 500, 60, $3, $4, 'k', 'h',"
        " now() + interval '1 day', now(), now()) RETURNING id",
        s.user,
        s.astrologer,
        hold.id,
        transfer.id,
    )
    [finding] = _of(await _report(db), "question_charges")
    assert finding.subject == str(question)
    assert finding.details == {"expected": (500, 300, 200), "paid": (500, 500, 0)}


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
    from workers.metrics import WorkerMetrics

    ctx: JobContext = {"services": services, "metrics": WorkerMetrics()}
    assert await rollup_system_balances_job(ctx) == 3  # clearing, platform revenue, promotions
    assert await rollup_system_balances_job(ctx) == 0
    assert await expire_holds_job(ctx) == 1
    counts = await reconcile_ledger_job(ctx)
    assert set(counts.values()) == {0}
    # Every check is a series of the worker's /metrics, a break counted under its check's name.
    await db.execute("UPDATE meters SET charged_amount = charged_amount + 1")
    assert (await reconcile_ledger_job(ctx))["consultation_totals"] == 1
    text = generate_latest(ctx["metrics"].registry).decode()
    assert 'ledger_reconcile_last_breaks{check="consultation_totals"} 1.0' in text
    assert 'ledger_reconcile_last_breaks{check="payouts_stuck"} 0.0' in text
    assert 'ledger_reconcile_breaks_total{check="consultation_totals"} 1.0' in text
    await db.execute("UPDATE meters SET charged_amount = charged_amount - 1")
    counts = await reconcile_ledger_job(ctx)
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
