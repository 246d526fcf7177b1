"""Recharges end to end: the API, the gateways on loopback, webhooks and the settle job."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from billing import recharges
from billing.gateways import LocalGateway, PaymentState, gateway_for
from billing.gateways.base import GatewayDisabled
from billing.reconcile import reconcile
from core.services import Services
from core.settings import Settings
from tests.conftest import make_settings
from tests.factories import auth, make_user
from tests.payments import fake_gateways as fg
from tests.payments.fake_gateways import FakeGateways
from tests.payments.support import balance, queued, run
from workers.payments import complete_test_recharge, settle_payment

Client = TestClient[Any, Any]


async def _recharge(client: Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/wallet/recharges", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def _stripe_hook(client: Client, kind: str, intent: dict[str, Any], event_id: str) -> int:
    payload = fg.stripe_event(kind, intent, event_id)
    resp = await client.post(
        "/v1/payments/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": fg.stripe_signature(payload)},
    )
    return resp.status


async def test_recharge_packs_carry_server_computed_gst(client: Client) -> None:
    resp = await client.get("/v1/recharge-packs")
    assert resp.status == 200
    packs = await resp.json()
    assert len(packs) >= 3
    for pack in packs:
        assert pack["tax"] == (pack["amount"] * 18 + 50) // 100
        assert pack["total"] == pack["amount"] + pack["tax"]
    assert any(p["bonus"] > 0 for p in packs)


async def test_stripe_recharge_creates_payment_intent_with_our_key(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, fake: FakeGateways
) -> None:
    user = await make_user(db)
    out = await _recharge(client, await auth(db, settings, user), amount=10_000, gateway="stripe")
    assert out["status"] == "pending"
    assert (out["amount"], out["tax"], out["total"], out["bonus"]) == (10_000, 1_800, 11_800, 0)
    intent = fake.intents[out["order_id"]]
    assert out["client_secret"] == intent["client_secret"]
    assert intent["amount"] == 11_800
    assert intent["currency"] == "inr"
    assert intent["idempotency_key"] == f"recharge:{out['id']}"
    assert intent["metadata"]["recharge_id"] == out["id"]
    assert await balance(db, "user_wallet", user.id) == 0


async def test_recharge_input_errors(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    headers = await auth(db, settings, await make_user(db))
    cases: list[dict[str, Any]] = [
        {"gateway": "stripe"},
        {"amount": 10_000, "pack_id": str(recharges.RECHARGE_PACKS[0].id), "gateway": "stripe"},
        {"amount": 5, "gateway": "stripe"},
        {"amount": -100, "gateway": "stripe"},
        {"amount": 10_000, "gateway": "paypal"},
        {"pack_id": str(uuid.uuid4()), "gateway": "stripe"},
        {"amount": 10_000, "gateway": "stripe", "currency": "USD"},
    ]
    for body in cases:
        resp = await client.post("/v1/wallet/recharges", json=body, headers=headers)
        assert resp.status == 422, body
        assert (await resp.json())["error"]["code"] == "validation_error"
    astrologer = await make_user(db, role="astrologer")
    resp = await client.post(
        "/v1/wallet/recharges",
        json={"amount": 10_000, "gateway": "stripe"},
        headers=await auth(db, settings, astrologer),
    )
    assert resp.status == 403
    resp = await client.post("/v1/wallet/recharges", json={"amount": 10_000, "gateway": "stripe"})
    assert resp.status == 401
    assert await db.fetchval("SELECT count(*) FROM recharges") == 0


async def test_disabled_gateway_and_test_gateway_refused_in_production(
    database_url: str, redis_url: str, tmp_path: Any, services: Services
) -> None:
    bare = make_settings(database_url, redis_url, tmp_path, test_gateway=False)
    for name in ("stripe", "razorpay", "test"):
        with pytest.raises(GatewayDisabled):
            gateway_for(name, bare, services.http)
    with pytest.raises(ValueError, match="TEST_GATEWAY"):
        make_settings(
            database_url,
            redis_url,
            tmp_path,
            astrolive_env="production",
            sms_provider="sns",
            test_gateway=True,
        )
    production = make_settings(
        database_url, redis_url, tmp_path, astrolive_env="production", sms_provider="sns"
    )
    assert production.test_gateway is False
    with pytest.raises(GatewayDisabled):
        gateway_for("test", production, services.http)
    dev = make_settings(database_url, redis_url, tmp_path)
    assert isinstance(gateway_for("test", dev, services.http), LocalGateway)


async def test_idempotency_key_replays_and_conflicts(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, fake: FakeGateways
) -> None:
    headers = {**await auth(db, settings, await make_user(db)), "Idempotency-Key": "abc-1"}
    pack = recharges.RECHARGE_PACKS[2]
    body = {"pack_id": str(pack.id), "gateway": "stripe"}
    first = await client.post("/v1/wallet/recharges", json=body, headers=headers)
    again = await client.post("/v1/wallet/recharges", json=body, headers=headers)
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await client.post(
        "/v1/wallet/recharges", json={"amount": 20_000, "gateway": "stripe"}, headers=headers
    )
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "idempotency_conflict"
    assert await db.fetchval("SELECT count(*) FROM recharges") == 1
    assert len(fake.intents) == 1
    data = await first.json()
    assert (data["amount"], data["bonus"]) == (pack.amount, pack.bonus)


async def test_another_users_recharge_is_404(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    owner, other = await make_user(db), await make_user(db)
    out = await _recharge(client, await auth(db, settings, owner), amount=10_000, gateway="stripe")
    mine = await client.get(
        f"/v1/wallet/recharges/{out['id']}", headers=await auth(db, settings, owner)
    )
    assert mine.status == 200
    assert (await mine.json())["status"] == "pending"
    theirs = await client.get(
        f"/v1/wallet/recharges/{out['id']}", headers=await auth(db, settings, other)
    )
    assert theirs.status == 404
    junk = await client.get("/v1/wallet/recharges/nope", headers=await auth(db, settings, owner))
    assert junk.status == 404


async def test_stripe_webhook_five_times_concurrently_credits_once(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    pack = recharges.RECHARGE_PACKS[3]
    out = await _recharge(client, headers, pack_id=str(pack.id), gateway="stripe")
    fake.succeed_intent(out["order_id"])
    intent = fake.intents[out["order_id"]]
    # The same event delivered five times at once, plus two other deliveries of the outcome.
    statuses = await asyncio.gather(
        *[_stripe_hook(client, "payment_intent.succeeded", intent, "evt_same") for _ in range(5)],
        _stripe_hook(client, "payment_intent.succeeded", intent, "evt_other"),
    )
    assert statuses == [200] * 6
    jobs = await queued(services, "settle_payment")
    assert len(jobs) == 2  # one per event id: duplicate deliveries share a job
    # Every job runs, concurrently, and some twice (arq delivers at least once).
    results = await asyncio.gather(*[run(services, settle_payment, *args) for _, args in jobs * 3])
    assert set(results) == {"succeeded"}
    assert await balance(db, "user_wallet", user.id) == pack.amount + pack.bonus
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'recharge'") == 1
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'bonus'") == 1
    key = await db.fetchval("SELECT idempotency_key FROM transfers WHERE kind = 'recharge'")
    assert key == f"recharge:stripe:{out['order_id']}"
    status = await client.get(f"/v1/wallet/recharges/{out['id']}", headers=headers)
    assert (await status.json())["status"] == "succeeded"
    lines = await (await client.get("/v1/wallet/transactions", headers=headers)).json()
    kinds = [(line["kind"], line["amount"], line["balance_after"]) for line in lines["items"]]
    assert kinds == [
        ("bonus", pack.bonus, pack.amount + pack.bonus),
        ("recharge", pack.amount, pack.amount),
    ]
    wallet = await (await client.get("/v1/wallet", headers=headers)).json()
    assert wallet == {"balance": pack.amount + pack.bonus, "held": 0, "currency": "INR"}
    # Tax is payable, the gateway clearing paid the total, the bonus came from promotions.
    tax_payable = await db.fetchval(
        "SELECT sum(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE a.kind = 'tax_payable'"
    )
    assert tax_payable == out["tax"]
    assert await recharges.check_recharges(db) == []  # type: ignore[arg-type]  # a pool runs one query


async def test_razorpay_webhooks_and_verify_race_credit_once(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await _recharge(client, headers, amount=25_000, gateway="razorpay")
    assert out["order_id"] in fake.orders
    assert out["key_id"] == fg.RAZORPAY_KEY_ID
    assert fake.orders[out["order_id"]]["amount"] == out["total"]
    payment_id = fake.capture(out["order_id"])
    payment = fake.payments[payment_id]
    body = fg.razorpay_payment_event("payment.captured", payment)
    signature = fg.razorpay_signature(f"{out['order_id']}|{payment_id}", fg.RAZORPAY_KEY_SECRET)

    async def webhook(n: int) -> int:
        resp = await client.post(
            "/v1/payments/razorpay/webhook",
            data=body,
            headers={
                "X-Razorpay-Signature": fg.razorpay_signature(body),
                "X-Razorpay-Event-Id": f"evt_{n % 2}",
            },
        )
        return resp.status

    async def verify() -> dict[str, Any]:
        resp = await client.post(
            "/v1/payments/razorpay/verify",
            json={"order_id": out["order_id"], "payment_id": payment_id, "signature": signature},
            headers=headers,
        )
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    async def jobs_later() -> list[Any]:
        await asyncio.sleep(0.01)
        return list(
            await asyncio.gather(
                *[
                    run(services, settle_payment, *args)
                    for _, args in await queued(services, "settle_payment")
                ]
            )
        )

    # Out of order: some webhooks before the verify call, some with it, jobs racing both.
    assert await webhook(0) == 200
    first, *hooks, _, last = await asyncio.gather(
        verify(), *[webhook(n) for n in range(1, 5)], jobs_later(), verify()
    )
    assert hooks == [200] * 4
    assert isinstance(first, dict)
    assert isinstance(last, dict)
    assert first["status"] == last["status"] == "succeeded"
    for _, args in await queued(services, "settle_payment"):
        assert await run(services, settle_payment, *args) == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 25_000
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'recharge'") == 1
    row = await db.fetchrow("SELECT status, gateway_payment_id FROM recharges")
    assert row is not None
    assert (row["status"], row["gateway_payment_id"]) == ("succeeded", payment_id)


async def test_bad_signatures_are_400_and_change_nothing(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    stripe_out = await _recharge(client, headers, amount=10_000, gateway="stripe")
    fake.succeed_intent(stripe_out["order_id"])
    payload = fg.stripe_event("payment_intent.succeeded", fake.intents[stripe_out["order_id"]])
    tampered = payload.replace('"amount": 11800', '"amount": 99999')
    stale = int(time.time()) - 301
    stripe_cases = [
        {},  # unsigned
        {"Stripe-Signature": "garbage"},
        {"Stripe-Signature": fg.stripe_signature(payload, secret="whsec_wrong")},
        {"Stripe-Signature": fg.stripe_signature(payload, at=stale)},
    ]
    for extra in stripe_cases:
        resp = await client.post("/v1/payments/stripe/webhook", data=payload, headers=extra)
        assert resp.status == 400, extra
        assert (await resp.json())["error"]["code"] == "invalid_signature"
    resp = await client.post(
        "/v1/payments/stripe/webhook",
        data=tampered,
        headers={"Stripe-Signature": fg.stripe_signature(payload)},
    )
    assert resp.status == 400

    rzp_out = await _recharge(client, headers, amount=10_000, gateway="razorpay")
    payment_id = fake.capture(rzp_out["order_id"])
    body = fg.razorpay_payment_event("payment.captured", fake.payments[payment_id])
    for extra in (
        {},
        {"X-Razorpay-Signature": "0" * 64},
        {"X-Razorpay-Signature": fg.razorpay_signature(body, "nope")},
    ):
        resp = await client.post("/v1/payments/razorpay/webhook", data=body, headers=extra)
        assert resp.status == 400, extra
    bad_verify = await client.post(
        "/v1/payments/razorpay/verify",
        json={
            "order_id": rzp_out["order_id"],
            "payment_id": payment_id,
            "signature": fg.razorpay_signature(f"{rzp_out['order_id']}|{payment_id}", "wrong"),
        },
        headers=headers,
    )
    assert bad_verify.status == 400
    assert (await bad_verify.json())["error"]["code"] == "invalid_signature"

    assert await queued(services) == []
    assert await db.fetchval("SELECT count(*) FROM payment_events") == 0
    assert await db.fetchval("SELECT count(*) FROM recharges WHERE status <> 'pending'") == 0
    assert await balance(db, "user_wallet", user.id) == 0


async def test_verify_of_another_users_order_is_404(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, fake: FakeGateways
) -> None:
    owner, other = await make_user(db), await make_user(db)
    out = await _recharge(
        client, await auth(db, settings, owner), amount=10_000, gateway="razorpay"
    )
    payment_id = fake.capture(out["order_id"])
    signature = fg.razorpay_signature(f"{out['order_id']}|{payment_id}", fg.RAZORPAY_KEY_SECRET)
    resp = await client.post(
        "/v1/payments/razorpay/verify",
        json={"order_id": out["order_id"], "payment_id": payment_id, "signature": signature},
        headers=await auth(db, settings, other),
    )
    assert resp.status == 404
    assert await balance(db, "user_wallet", other.id) == 0
    assert await balance(db, "user_wallet", owner.id) == 0


class Crash(Exception):
    pass


async def test_settle_killed_after_gateway_confirmed_is_retried_and_credits_once(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    out = await _recharge(client, await auth(db, settings, user), amount=50_000, gateway="stripe")
    fake.succeed_intent(out["order_id"])
    recharge_id = uuid.UUID(out["id"])
    gateway = gateway_for("stripe", settings, services.http)
    confirmed = await gateway.payment_state(order_id=out["order_id"], payment_id=None)
    assert confirmed.status == "succeeded"
    # The job dies inside its transaction, after the gateway confirmed, before commit.

    async def die_before_commit() -> None:
        async with db.acquire() as conn, conn.transaction():
            credited = await recharges.apply_payment_state_txn(conn, recharge_id, confirmed)
            assert credited.status == "succeeded"
            raise Crash()

    with pytest.raises(Crash):
        await die_before_commit()
    assert await balance(db, "user_wallet", user.id) == 0
    assert await db.fetchval("SELECT status FROM recharges") == "pending"
    # arq runs it again (a second try), and once more for good measure.
    assert await run(services, settle_payment, out["id"], None, job_try=2) == "succeeded"
    assert await run(services, settle_payment, out["id"], None, job_try=3) == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 50_000
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'recharge'") == 1


async def test_gateway_outage_retries_without_deciding(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    from arq import Retry

    user = await make_user(db)
    out = await _recharge(client, await auth(db, settings, user), amount=10_000, gateway="razorpay")
    payment_id = fake.capture(out["order_id"])
    fake.down = True
    with pytest.raises(Retry):
        await run(services, settle_payment, out["id"], payment_id)
    assert await db.fetchval("SELECT status FROM recharges") == "pending"
    fake.down = False
    assert await run(services, settle_payment, out["id"], payment_id, job_try=2) == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 10_000


async def test_payment_failed_marks_failed_and_a_later_success_still_credits(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await _recharge(client, headers, amount=10_000, gateway="stripe")
    fake.fail_intent(out["order_id"])
    failed = await _stripe_hook(
        client, "payment_intent.payment_failed", fake.intents[out["order_id"]], "evt_f"
    )
    assert failed == 200
    for _, args in await queued(services, "settle_payment"):
        assert await run(services, settle_payment, *args) == "failed"
    data = await (await client.get(f"/v1/wallet/recharges/{out['id']}", headers=headers)).json()
    assert data["status"] == "failed"
    assert data["failure_reason"] == "card declined"
    # The user retries the same PaymentIntent with another card: money taken must be credited.
    fake.succeed_intent(out["order_id"])
    await _stripe_hook(client, "payment_intent.succeeded", fake.intents[out["order_id"]], "evt_s")
    results = [
        await run(services, settle_payment, *args)
        for _, args in await queued(services, "settle_payment")
    ]
    assert "succeeded" in results
    assert await balance(db, "user_wallet", user.id) == 10_000


async def test_amount_mismatch_is_not_credited_and_reconciliation_reports_it(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    user = await make_user(db)
    out = await _recharge(client, await auth(db, settings, user), amount=10_000, gateway="stripe")
    async with db.acquire() as conn, conn.transaction():
        r = await recharges.apply_payment_state_txn(
            conn, uuid.UUID(out["id"]), PaymentState("succeeded", out["order_id"], 1, "INR")
        )
    assert (r.status, r.failure_reason) == ("failed", "amount_mismatch")
    flagged = await db.fetchrow("SELECT kind, amount, status FROM payment_anomalies")
    assert flagged is not None
    assert tuple(flagged) == ("amount_mismatch", 1, "flagged")
    await db.execute(
        "INSERT INTO payment_events (gateway, event_id, type, recharge_id, payload, received_at)"
        " VALUES ('stripe', 'evt_old', 'payment_intent.succeeded', $1, '{}',"
        " now() - interval '1 hour')",
        uuid.UUID(out["id"]),
    )
    async with db.acquire() as conn:
        assert await recharges.check_recharges(conn) == []  # decided: failed, from the gateway
        report = await reconcile(conn)
    assert [(f.check, f.details["kind"]) for f in report.findings] == [
        ("payment_anomalies", "amount_mismatch")
    ]
    # A success reported an hour ago and still pending: the settle path is broken.
    await db.execute("UPDATE recharges SET status = 'pending', failure_reason = NULL")
    async with db.acquire() as conn:
        problems = await recharges.check_recharges(conn)
        findings = await recharges.reconcile_recharges(conn)
    assert problems == [f"recharge {out['id']}: the gateway reported success, not credited"]
    assert [f.check for f in findings] == ["recharges_credited"]


async def test_test_gateway_completes_by_itself_through_a_real_worker(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, services: Services
) -> None:
    from arq.worker import Worker

    from astrolive.worker import WorkerSettings

    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await _recharge(client, headers, amount=20_000, gateway="test")
    assert out["order_id"].startswith("test_order_")
    assert [f for f, _ in await queued(services)] == ["complete_test_recharge"]
    worker = Worker(
        functions=WorkerSettings.functions,
        redis_pool=services.arq,
        burst=True,
        poll_delay=0.05,
        ctx={"settings": settings, "services": services},
        handle_signals=False,
    )
    # Not `worker.close()`: it would close the services' shared arq pool. Burst mode waits for
    # the deferred job (it counts as queued) and returns when the queue is empty.
    await asyncio.wait_for(worker.main(), timeout=20)
    await asyncio.gather(*worker.tasks.values())
    # The recharge's completion, and the inbox notification its settlement queued (issue 17).
    assert worker.jobs_complete >= 1
    assert worker.jobs_failed == 0
    data = await (await client.get(f"/v1/wallet/recharges/{out['id']}", headers=headers)).json()
    assert data["status"] == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 20_000
    key = await db.fetchval("SELECT idempotency_key FROM transfers WHERE kind = 'recharge'")
    assert key == f"recharge:test:test_pay_{uuid.UUID(out['id']).hex}"
    # Running the completion again (a redelivery) changes nothing.
    assert await run(services, complete_test_recharge, out["id"]) == "succeeded"
    assert await balance(db, "user_wallet", user.id) == 20_000


async def test_wallet_transactions_paginate_newest_first(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, services: Services
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    for _ in range(5):
        out = await _recharge(client, headers, amount=10_000, gateway="test")
        await run(services, complete_test_recharge, out["id"])
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = "/v1/wallet/transactions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=headers)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [line["balance_after"] for line in seen] == [50_000, 40_000, 30_000, 20_000, 10_000]
    assert len({line["id"] for line in seen}) == 5
    bad = await client.get("/v1/wallet/transactions?cursor=%%%", headers=headers)
    assert bad.status == 422
    assert json.loads(await bad.text())["error"]["details"]["fields"]["cursor"]
