"""Gateways tell the truth (issue 13): a wallet is credited only for money the gateway captured,
of the order's exact amount and currency; anything else captured is recorded and flagged for a
refund, never credited. Fault tests against the loopback gateway fakes, through the real webhook
and verify routes with real signature verification."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from core.services import Services
from core.settings import Settings
from tests.factories import auth, make_user
from tests.payments import fake_gateways as fg
from tests.payments.fake_gateways import FakeGateways
from tests.payments.support import (
    balance,
    new_recharge,
    queued,
    razorpay_captured_hook,
    run,
)
from workers.payments import settle_payment, sweep_payments

Client = TestClient[Any, Any]


async def _verify(
    client: Client, headers: dict[str, str], order_id: str, payment_id: str
) -> dict[str, Any]:
    signature = fg.razorpay_signature(f"{order_id}|{payment_id}", fg.RAZORPAY_KEY_SECRET)
    resp = await client.post(
        "/v1/payments/razorpay/verify",
        json={"order_id": order_id, "payment_id": payment_id, "signature": signature},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def _stripe_hook(client: Client, intent: dict[str, Any], event_id: str) -> None:
    payload = fg.stripe_event("payment_intent.succeeded", intent, event_id)
    resp = await client.post(
        "/v1/payments/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": fg.stripe_signature(payload)},
    )
    assert resp.status == 200, await resp.text()


async def _run_queued(services: Services) -> list[Any]:
    jobs = await queued(services, "settle_payment")
    return [await run(services, settle_payment, *args) for _, args in jobs]


async def _anomalies(db: asyncpg.Pool[Any]) -> list[tuple[str, str, int, str]]:
    rows = await db.fetch(
        "SELECT payment_id, kind, amount, currency FROM payment_anomalies ORDER BY created_at"
    )
    return [(r["payment_id"], r["kind"], r["amount"], r["currency"]) for r in rows]


async def test_razorpay_authorised_then_auto_refunded_is_never_credited(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, fake: FakeGateways
) -> None:
    """Issue 13 item 4: Razorpay auto-refunded a payment it only authorised (`refunded`,
    `captured: false`). Replaying verify must not credit the wallet."""
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await new_recharge(client, headers, "razorpay")
    payment_id = fake.capture(out["order_id"], status="refunded", captured=False)
    for _ in range(3):
        settled = await _verify(client, headers, out["order_id"], payment_id)
        assert settled["status"] == "failed"
    assert settled["failure_reason"] == "refunded before capture"
    assert await balance(db, "user_wallet", user.id) == 0
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'recharge'") == 0


async def test_razorpay_second_capture_on_a_paid_order_is_flagged_not_credited(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await new_recharge(client, headers, "razorpay")
    first = fake.capture(out["order_id"])
    assert (await _verify(client, headers, out["order_id"], first))["status"] == "succeeded"
    second = fake.capture(out["order_id"])  # the user paid the same order again
    for n in range(2):  # webhooks delivered twice, and the settle jobs run
        await razorpay_captured_hook(client, fake.payments[second], f"evt_second_{n}")
        await _run_queued(services)
    assert await balance(db, "user_wallet", user.id) == 10_000  # credited once
    total = out["total"]
    assert await _anomalies(db) == [(second, "extra_payment", total, "INR")]
    row = await db.fetchrow("SELECT status, gateway_payment_id FROM recharges")
    assert row is not None
    assert tuple(row) == ("succeeded", first)
    # The payment sweep gives the extra payment back to the card, once, through the gateway.
    fake.refund_status = "pending"
    reports = await asyncio.gather(*(run(services, sweep_payments) for _ in range(3)))
    assert sum(r.get("extra_payments_refunding", 0) for r in reports) == 1
    [refund] = fake.rzp_refunds.values()
    assert (refund["payment_id"], refund["amount"]) == (second, total)
    refund["status"] = "processed"
    await db.execute("UPDATE payment_anomalies SET checked_at = NULL")
    assert (await run(services, sweep_payments))["extra_payments_resolved"] == 1
    assert fake.calls.count("razorpay.create_refund") == 1
    assert await db.fetchval("SELECT status FROM payment_anomalies") == "resolved"
    assert await balance(db, "user_wallet", user.id) == 10_000  # the ledger never had it


async def test_razorpay_two_captures_before_settling_credit_one_and_flag_the_other(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, fake: FakeGateways
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await new_recharge(client, headers, "razorpay")
    first = fake.capture(out["order_id"])
    second = fake.capture(out["order_id"])
    assert (await _verify(client, headers, out["order_id"], second))["status"] == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 10_000
    assert await _anomalies(db) == [(first, "extra_payment", out["total"], "INR")]


async def test_razorpay_currency_mismatch_is_not_credited(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, fake: FakeGateways
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await new_recharge(client, headers, "razorpay")
    payment_id = fake.capture(out["order_id"], currency="USD")
    settled = await _verify(client, headers, out["order_id"], payment_id)
    assert (settled["status"], settled["failure_reason"]) == ("failed", "currency_mismatch")
    assert await balance(db, "user_wallet", user.id) == 0
    assert await _anomalies(db) == [(payment_id, "currency_mismatch", out["total"], "USD")]


async def test_stripe_amount_received_and_currency_are_checked(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    short = await new_recharge(client, headers, "stripe")
    fake.succeed_intent_with(short["order_id"], received=short["total"] - 1, currency="inr")
    await _stripe_hook(client, fake.intents[short["order_id"]], "evt_short")
    other = await new_recharge(client, headers, "stripe")
    fake.succeed_intent_with(other["order_id"], received=other["total"], currency="usd")
    await _stripe_hook(client, fake.intents[other["order_id"]], "evt_usd")
    assert sorted(await _run_queued(services)) == ["failed", "failed"]
    assert await balance(db, "user_wallet", user.id) == 0
    assert sorted(await _anomalies(db)) == sorted(
        [
            (short["order_id"], "amount_mismatch", short["total"] - 1, "INR"),
            (other["order_id"], "currency_mismatch", other["total"], "USD"),
        ]
    )
    # A good payment is still credited once, whatever the deliveries.
    good = await new_recharge(client, headers, "stripe")
    fake.succeed_intent(good["order_id"])
    for n in range(3):
        await _stripe_hook(client, fake.intents[good["order_id"]], f"evt_good_{n}")
    assert "succeeded" in await _run_queued(services)
    assert await balance(db, "user_wallet", user.id) == 10_000
