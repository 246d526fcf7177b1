"""Bookings paid by shortfall (issue 17): `awaiting_payment` with a recharge of exactly what is
missing, confirmed once by the settle path (test gateway job, Stripe webhook, Razorpay verify),
expired otherwise with the slot freed, and late money left in the wallet."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from billing import recharges
from consultations import booking, shortfall
from core.services import Services
from core.settings import Settings
from tests.factories import auth, fund, make_bookable_astrologer, make_user, slot_in
from tests.payments import fake_gateways as fg
from tests.payments.fake_gateways import FakeGateways
from tests.payments.support import balance, queued, run
from workers.bookings import bookings_sweep, expire_booking_payment
from workers.payments import complete_test_recharge, settle_payment

Client = TestClient[Any, Any]
HOLD = 30 * 1000  # a 30-minute slot at ₹10 a minute


def _slot(hours: float = 30) -> str:
    return slot_in(hours).isoformat().replace("+00:00", "Z")


async def _book(client: Client, headers: dict[str, str], a: Any, at: str, **extra: Any) -> Any:
    return await client.post(
        "/v1/consultations",
        json={"astrologer_id": str(a.id), "type": "chat", "scheduled_at": at, **extra},
        headers=headers,
    )


async def _notified(db: asyncpg.Pool[Any], user_id: Any) -> list[str]:
    rows = await db.fetch("SELECT event FROM notifications WHERE user_id = $1", user_id)
    return sorted(r["event"] for r in rows)


async def test_test_gateway_pays_the_shortfall_once(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, services: Services
) -> None:
    a, user = await make_bookable_astrologer(db), await make_user(db)
    await fund(db, user.id, 10_000)
    headers = await auth(db, settings, user)
    at = _slot()
    # Without pay_shortfall: 402 saying how much is missing, nothing kept.
    resp = await _book(client, headers, a, at)
    assert resp.status == 402
    error = (await resp.json())["error"]
    assert error["details"]["shortfall"] == HOLD - 10_000
    assert await db.fetchval("SELECT count(*) FROM consultations") == 0
    # With it: awaiting_payment, a recharge of exactly the shortfall (GST on top).
    resp = await _book(client, headers, a, at, pay_shortfall={"gateway": "test"})
    assert resp.status == 201, await resp.text()
    out = await resp.json()
    assert out["status"] == "awaiting_payment"
    assert out["recharge"]["amount"] == HOLD - 10_000
    assert out["recharge"]["tax"] == (HOLD - 10_000) * 18 // 100
    assert out["recharge"]["total"] == out["recharge"]["amount"] + out["recharge"]["tax"]
    due = datetime.fromisoformat(out["payment_due_at"])
    assert timedelta(seconds=590) < due - datetime.now(UTC) <= timedelta(seconds=600)
    # The slot is kept: nobody else can book it meanwhile.
    other = await make_user(db)
    await fund(db, other.id, 100_000)
    taken = await _book(client, await auth(db, settings, other), a, at)
    assert taken.status == 409
    day = at[:10]
    slots = await (await client.get(f"/v1/astrologers/{a.id}/slots?date={day}")).json()
    assert at not in [s["start"] for s in slots["slots"]]
    # The test gateway completes the payment through the settle path, twice: confirmed once.
    for _ in range(2):
        await run(services, complete_test_recharge, out["recharge"]["id"])
    got = await (await client.get(f"/v1/consultations/{out['id']}", headers=headers)).json()
    assert got["status"] == "scheduled"
    row = await db.fetchrow("SELECT balance, held FROM accounts WHERE owner_id = $1", user.id)
    assert row is not None
    assert (row["balance"], row["held"]) == (HOLD, HOLD)
    assert await db.fetchval("SELECT count(*) FROM holds") == 1
    assert await _notified(db, user.id) == ["booking_confirmed", "recharge_succeeded"]
    assert await _notified(db, a.id) == ["booking_confirmed"]
    # The expiry job that comes later finds it paid.
    assert await run(services, expire_booking_payment, out["id"]) == "paid, or not due"


async def test_stripe_webhook_and_razorpay_verify_confirm(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    a, user = await make_bookable_astrologer(db), await make_user(db)
    headers = await auth(db, settings, user)
    # Stripe: the webhook queues the settle job; it confirms the booking.
    stripe = await (
        await _book(client, headers, a, _slot(30), pay_shortfall={"gateway": "stripe"})
    ).json()
    assert stripe["recharge"]["client_secret"]
    assert stripe["recharge"]["amount"] == HOLD
    paying = await recharges.get_recharge(db, _uuid(stripe["recharge"]["id"]))
    assert paying is not None
    assert paying.gateway_order_id is not None
    intent_id = paying.gateway_order_id
    fake.succeed_intent(intent_id)
    payload = fg.stripe_event("payment_intent.succeeded", fake.intents[intent_id], "evt_1")
    resp = await client.post(
        "/v1/payments/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": fg.stripe_signature(payload)},
    )
    assert resp.status == 200
    jobs = [args for name, args in await queued(services) if name == "settle_payment"]
    await asyncio.gather(*[run(services, settle_payment, *args) for args in jobs * 2])
    got = await (await client.get(f"/v1/consultations/{stripe['id']}", headers=headers)).json()
    assert got["status"] == "scheduled"
    # Razorpay: the checkout's verify call settles it; the booking is confirmed.
    rzp = await (
        await _book(client, headers, a, _slot(40), pay_shortfall={"gateway": "razorpay"})
    ).json()
    assert rzp["status"] == "awaiting_payment"
    order_id = rzp["recharge"]["order_id"]
    assert rzp["recharge"]["key_id"] == fg.RAZORPAY_KEY_ID
    payment_id = fake.capture(order_id)
    signature = fg.razorpay_signature(f"{order_id}|{payment_id}", fg.RAZORPAY_KEY_SECRET)
    resp = await client.post(
        "/v1/payments/razorpay/verify",
        json={"order_id": order_id, "payment_id": payment_id, "signature": signature},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    for _name, args in await queued(services):
        if _name == "settle_payment":
            await run(services, settle_payment, *args)
    got = await (await client.get(f"/v1/consultations/{rzp['id']}", headers=headers)).json()
    assert got["status"] == "scheduled"
    assert await db.fetchval("SELECT sum(amount) FROM holds WHERE status = 'open'") == 2 * HOLD


def _uuid(value: str) -> Any:
    import uuid

    return uuid.UUID(value)


async def test_payment_after_expiry_stays_in_the_wallet(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    a, user = await make_bookable_astrologer(db), await make_user(db)
    headers = await auth(db, settings, user)
    at = _slot()
    out = await (await _book(client, headers, a, at, pay_shortfall={"gateway": "stripe"})).json()
    # Not yet due: the expiry job does nothing.
    assert await run(services, expire_booking_payment, out["id"]) == "paid, or not due"
    # The slot's time is up (the clock moved: the due time set in the past).
    await db.execute(
        "UPDATE consultations SET payment_due_at = now() - interval '1 second' WHERE id = $1",
        _uuid(out["id"]),
    )
    # The sweep (the job's backup) expires it; the job then finds nothing to do.
    assert (await run(services, bookings_sweep))["payments_expired"] == 1
    assert await run(services, expire_booking_payment, out["id"]) == "paid, or not due"
    got = await (await client.get(f"/v1/consultations/{out['id']}", headers=headers)).json()
    assert got["status"] == "expired"
    assert "booking_expired" in await _notified(db, user.id)
    # The slot is free again.
    other = await make_user(db)
    await fund(db, other.id, HOLD)
    resp = await _book(client, await auth(db, settings, other), a, at)
    assert resp.status == 201, await resp.text()
    # The money arrives late: credited to the wallet, the booking stays expired, nothing held.
    recharge = await recharges.get_recharge(db, _uuid(out["recharge"]["id"]))
    assert recharge is not None
    assert recharge.gateway_order_id is not None
    fake.succeed_intent(recharge.gateway_order_id)
    await run(services, settle_payment, out["recharge"]["id"], None)
    assert await balance(db, "user_wallet", user.id) == HOLD
    held = await db.fetchval("SELECT held FROM accounts WHERE owner_id = $1", user.id)
    assert held == 0
    got = await (await client.get(f"/v1/consultations/{out['id']}", headers=headers)).json()
    assert got["status"] == "expired"


async def test_a_recharge_that_settled_before_its_booking_row_is_confirmed(
    db: asyncpg.Pool[Any], services: Services
) -> None:
    """The settle path can win the race against the booking's insert; the checkout then sees
    the recharge succeeded under its row lock and confirms the booking itself."""
    a, user = await make_bookable_astrologer(db), await make_user(db)
    original = recharges.create_recharge

    async def create_and_pay(*args: Any, **kwargs: Any) -> Any:
        made = await original(*args, **kwargs)
        await recharges.settle(services, made.id)  # the test gateway says paid at once
        return made

    recharges.create_recharge = create_and_pay  # a hook for this race
    try:
        c = await booking.book(
            services,
            user_id=user.id,
            astrologer_id=a.id,
            type_="chat",
            scheduled_at=datetime.fromisoformat(_slot()),
            pay_shortfall="test",
        )
    finally:
        recharges.create_recharge = original
    assert c.status == "scheduled"
    assert c.hold_id is not None


async def test_bad_shortfall_requests(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    a, user = await make_bookable_astrologer(db), await make_user(db)
    headers = await auth(db, settings, user)
    bad: list[dict[str, Any]] = [
        {"pay_shortfall": {"gateway": "paypal"}},
        {"pay_shortfall": {}},
        {"pay_shortfall": "test"},
        {"pay_shortfall": {"gateway": "test", "amount": 5}},
    ]
    for extra in bad:
        resp = await _book(client, headers, a, _slot(), **extra)
        assert resp.status == 422, extra
    # Without a slot a shortfall cannot be paid (instant requests need the minimum balance).
    resp = await client.post(
        "/v1/consultations",
        json={"astrologer_id": str(a.id), "type": "chat", "pay_shortfall": {"gateway": "test"}},
        headers=headers,
    )
    assert resp.status == 422
    out = await (await _book(client, headers, a, _slot(), pay_shortfall={"gateway": "test"})).json()
    stranger = await auth(db, settings, await make_user(db))
    assert (await client.get(f"/v1/consultations/{out['id']}", headers=stranger)).status == 404
    assert shortfall.EXPIRE_PAYMENT_JOB == "expire_booking_payment"


async def test_recharge_outcomes_reach_the_inbox_once(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    made = []
    for _ in range(2):
        resp = await client.post(
            "/v1/wallet/recharges", json={"amount": 5000, "gateway": "stripe"}, headers=headers
        )
        assert resp.status == 201
        made.append(await resp.json())
    paid, declined = made
    fake.succeed_intent(paid["order_id"])
    fake.fail_intent(declined["order_id"])
    for recharge in (paid, declined, paid, declined):  # settled twice each: told once each
        await run(services, settle_payment, recharge["id"], None)
    rows = await db.fetch("SELECT event, data FROM notifications WHERE user_id = $1", user.id)
    assert sorted(r["event"] for r in rows) == ["recharge_failed", "recharge_succeeded"]
