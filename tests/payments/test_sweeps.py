"""The payment sweep finishes what got stuck (issue 13): a paid recharge whose settle job ran out
of retries during a gateway outage, a card refund whose job was lost, an approved payout whose job
was lost. Idempotent, and safe with several workers running it at once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import Retry

from billing import payouts, refunds
from core.services import Services
from core.settings import Settings
from tests.factories import auth, make_astrologer, make_user
from tests.payments.fake_gateways import FakeGateways
from tests.payments.support import (
    balance,
    charged_consultation,
    new_recharge,
    razorpay_captured_hook,
    run,
)
from workers.payments import settle_payment, sweep_payments

Client = TestClient[Any, Any]


async def _age(db: asyncpg.Pool[Any], table: str, column: str) -> None:
    """Time passes: every row of `table` looks older than the sweep's staleness, and unchecked."""
    await db.execute(
        f"UPDATE {table} SET {column} = now() - interval '1 hour', checked_at = NULL"  # fixed names
    )


async def test_an_outage_longer_than_the_retry_budget_is_finished_by_the_sweep(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    out = await new_recharge(client, await auth(db, settings, user), "razorpay")
    payment_id = fake.capture(out["order_id"])
    fake.down = True
    # Answered 200 (the event is recorded, its settle job queued): Razorpay will not send it again.
    await razorpay_captured_hook(client, fake.payments[payment_id], "e1")
    for attempt in range(1, 6):  # the settle job's whole retry budget, all during the outage
        with pytest.raises(Retry):
            await run(services, settle_payment, out["id"], payment_id, job_try=attempt)
    await services.arq.delete("arq:queue")  # the job is gone for good
    await _age(db, "recharges", "created_at")
    # The sweep while the gateway is still down: nothing decided, nothing lost.
    report = await run(services, sweep_payments)
    assert report["recharges_unreachable"] == 1
    assert await db.fetchval("SELECT status FROM recharges") == "pending"
    # The outage ends; the next rounds of several workers at once credit it exactly once.
    fake.down = False
    await db.execute("UPDATE recharges SET checked_at = NULL")
    reports = await asyncio.gather(*(run(services, sweep_payments) for _ in range(4)))
    assert sum(r["recharges_settled"] for r in reports) == 1
    assert await db.fetchval("SELECT status FROM recharges") == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 10_000
    await _age(db, "recharges", "created_at")
    again = await run(services, sweep_payments)
    assert again["recharges_settled"] == 0  # succeeded: never looked at again
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'recharge'") == 1


async def test_a_recharge_never_paid_is_failed_after_the_give_up_time(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    await new_recharge(client, await auth(db, settings, user), "razorpay")
    await _age(db, "recharges", "created_at")
    report = await run(services, sweep_payments)
    assert report["recharges_still_pending"] == 1  # an hour old: the user may still pay
    await db.execute(
        "UPDATE recharges SET created_at = now() - interval '2 days', checked_at = NULL"
    )
    assert (await run(services, sweep_payments))["recharges_failed"] == 1
    row = await db.fetchrow("SELECT status, failure_reason FROM recharges")
    assert row is not None
    assert tuple(row) == ("failed", "not paid in time")


async def test_a_card_refund_whose_job_was_lost_is_resubmitted_once(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    out = await new_recharge(client, await auth(db, settings, user), "razorpay")
    payment_id = fake.capture(out["order_id"])
    assert await run(services, settle_payment, out["id"], payment_id) == "succeeded"
    async with db.acquire() as conn:  # requested; its process_refund job is never run
        refund = await refunds.request_card_refund(
            conn, recharge_id=out["id"], amount=4_000, reason="r", actor_id=None
        )
    assert (await run(services, sweep_payments))["recharges_settled"] == 0
    assert await db.fetchval("SELECT status FROM card_refunds") == "requested"  # fresh: not yet
    await _age(db, "card_refunds", "updated_at")
    fake.refund_status = "pending"
    reports = await asyncio.gather(*(run(services, sweep_payments) for _ in range(3)))
    assert sum(r.get("refunds_submitted", 0) for r in reports) == 1
    assert fake.calls.count("razorpay.create_refund") == 1
    # Still pending at the gateway a while later: the sweep asks, it does not submit again.
    [rzp] = fake.rzp_refunds.values()
    rzp["status"] = "processed"
    await _age(db, "card_refunds", "updated_at")
    assert (await run(services, sweep_payments))["refunds_succeeded"] == 1
    assert fake.calls.count("razorpay.create_refund") == 1
    done = await refunds.get_card_refund(db, refund.id)
    assert done is not None
    assert done.status == "succeeded"


async def test_an_approved_payout_whose_job_was_lost_is_paid_once(
    db: asyncpg.Pool[Any], services: Services
) -> None:
    user, astrologer = await make_user(db), await make_astrologer(db)
    from tests.factories import fund

    await fund(db, user.id, 100_000)
    await charged_consultation(db, user.id, astrologer.id, 10, 5_000)  # 30,000 earned
    admin = await make_user(db, role="admin")
    async with db.acquire() as conn:
        payout = await payouts.request_payout(
            conn, astrologer_id=astrologer.id, amount=20_000, currency="INR", min_payout=10_000
        )
        await payouts.approve_payout(conn, payout_id=payout.id, admin_id=admin.id)
    assert (await run(services, sweep_payments)).get("payouts_paid", 0) == 0  # fresh
    await db.execute("UPDATE payouts SET approved_at = now() - interval '1 hour'")
    reports = await asyncio.gather(*(run(services, sweep_payments) for _ in range(3)))
    assert sum(r.get("payouts_paid", 0) for r in reports) == 1
    row = await db.fetchrow("SELECT status, provider_ref FROM payouts")
    assert row is not None
    assert row["status"] == "paid"
    assert await balance(db, "astrologer_earnings", astrologer.id) == 10_000
