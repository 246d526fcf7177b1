"""Consultation refunds to the wallet, and recharge refunds to the card through the gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from billing import refunds
from billing.ledger import Leg, account_id, post_transfer
from core.services import Services
from core.settings import Settings
from tests.factories import auth, fund, make_astrologer, make_user
from tests.payments import fake_gateways as fg
from tests.payments.fake_gateways import FakeGateways
from tests.payments.support import balance, charged_consultation, queued, run, system_total
from workers.payments import complete_test_recharge, process_refund, settle_payment

Client = TestClient[Any, Any]


async def _session(db: asyncpg.Pool[Any], minutes: int = 7, rate: int = 1_001) -> tuple[Any, ...]:
    user, astrologer = await make_user(db), await make_astrologer(db)
    await fund(db, user.id, 100_000)
    cid = await charged_consultation(db, user.id, astrologer.id, minutes, rate)
    return user, astrologer, cid


async def test_partial_refunds_never_exceed_charged_even_concurrently(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    user, astrologer, cid = await _session(db)  # 7 minutes x 1,001 = 7,007 charged
    earned = await balance(db, "astrologer_earnings", astrologer.id)
    admin = await auth(db, settings, await make_user(db, role="admin"))

    async def refund(amount: int) -> int:
        resp = await client.post(
            "/v1/admin/refunds",
            json={"consultation_id": str(cid), "amount": amount, "reason": "call dropped"},
            headers=admin,
        )
        return resp.status

    statuses = await asyncio.gather(*[refund(1_000) for _ in range(10)])
    assert sorted(statuses) == [201] * 7 + [409] * 3
    assert await balance(db, "user_wallet", user.id) == 100_000 - 7_007 + 7_000
    resp = await client.post(
        "/v1/admin/refunds",
        json={"consultation_id": str(cid), "amount": 8, "reason": "x"},
        headers=admin,
    )
    assert resp.status == 409
    err = (await resp.json())["error"]
    assert err["code"] == "refund_exceeds_charged"
    assert err["details"] == {"charged": 7_007, "refunded": 7_000, "remaining": 7}
    # The rest, with no amount: everything left; the astrologer's share is reversed exactly.
    resp = await client.post(
        "/v1/admin/refunds", json={"consultation_id": str(cid), "reason": "x"}, headers=admin
    )
    assert resp.status == 201
    assert (await resp.json())["amount"] == 7
    assert await balance(db, "user_wallet", user.id) == 100_000
    assert earned > 0
    assert await balance(db, "astrologer_earnings", astrologer.id) == 0
    assert await system_total(db, "platform_revenue") == 0
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'consultation_refund' AND target_id = $1",
        str(cid),
    )
    assert audit == 8
    again = await client.post(
        "/v1/admin/refunds", json={"consultation_id": str(cid), "reason": "x"}, headers=admin
    )
    assert again.status == 409


async def test_refund_reverses_the_share_in_proportion(db: asyncpg.Pool[Any]) -> None:
    _, astrologer, cid = await _session(db, minutes=10, rate=1_000)  # 6,000 to the astrologer
    async with db.acquire() as conn:
        refund = await refunds.refund_consultation(
            conn, consultation_id=cid, amount=2_500, reason="r", actor_id=None, key="k1"
        )
    assert refund.earnings_reversed == 1_500
    assert await balance(db, "astrologer_earnings", astrologer.id) == 4_500
    assert await system_total(db, "platform_revenue") == 4_000 - 1_000


async def test_a_tip_is_not_part_of_what_a_consultation_refund_returns(
    db: asyncpg.Pool[Any],
) -> None:
    """A tip carries the consultation's id in the ledger, but it was a gift, not a charge: a full
    consultation refund returns the minutes only and leaves the tip with the astrologer."""
    user, astrologer, cid = await _session(db, minutes=2, rate=1_000)  # 2,000 charged
    async with db.acquire() as conn:
        wallet = await account_id(conn, "user_wallet", user.id)
        earnings = await account_id(conn, "astrologer_earnings", astrologer.id)
        await post_transfer(
            conn,
            key=f"tip:{user.id}:t1",
            kind="tip",
            legs=[Leg(wallet, -500), Leg(earnings, 500)],
            consultation_id=cid,
        )
        refund = await refunds.refund_consultation(
            conn, consultation_id=cid, amount=None, reason="r", actor_id=None, key="k-tip"
        )
    assert refund.amount == 2_000
    assert await balance(db, "user_wallet", user.id) == 100_000 - 500
    assert await balance(db, "astrologer_earnings", astrologer.id) == 500


async def test_refund_key_replays_and_conflicts(db: asyncpg.Pool[Any]) -> None:
    user, _, cid = await _session(db)
    async with db.acquire() as conn:
        first = await refunds.refund_consultation(
            conn, consultation_id=cid, amount=500, reason="r", actor_id=None, key="auto:x"
        )
        again = await refunds.refund_consultation(
            conn, consultation_id=cid, amount=500, reason="r", actor_id=None, key="auto:x"
        )
        assert again.replayed
        assert again.id == first.id
        with pytest.raises(Exception, match="another refund") as info:
            await refunds.refund_consultation(
                conn, consultation_id=cid, amount=600, reason="r", actor_id=None, key="auto:x"
            )
        assert getattr(info.value, "code", None) == "idempotency_conflict"
        with pytest.raises(refunds.RefundExceedsCharged):
            await refunds.refund_consultation(
                conn, consultation_id=cid, amount=0, reason="r", actor_id=None, key="k0"
            )
    assert await balance(db, "user_wallet", user.id) == 100_000 - 7_007 + 500


async def test_admin_refund_access_and_unknown_consultation(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    _, _, cid = await _session(db)
    body = {"consultation_id": str(cid), "reason": "x"}
    user = await auth(db, settings, await make_user(db))
    assert (await client.post("/v1/admin/refunds", json=body, headers=user)).status == 403
    assert (await client.post("/v1/admin/refunds", json=body)).status == 401
    admin = await auth(db, settings, await make_user(db, role="admin"))
    missing = {"consultation_id": str(uuid.uuid4()), "reason": "x"}
    assert (await client.post("/v1/admin/refunds", json=missing, headers=admin)).status == 404
    negative = {**body, "amount": -5}
    assert (await client.post("/v1/admin/refunds", json=negative, headers=admin)).status == 422


async def _waiting_on_a_lock(db: asyncpg.Pool[Any], pid: int) -> bool:
    """Is the backend `pid` blocked on a lock right now (the deterministic interleaving point)?"""
    return bool(
        await db.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
    )


async def test_a_refund_racing_a_charge_locks_before_it_reads(db: asyncpg.Pool[Any]) -> None:
    """Issue 13 item 8, with a forced interleaving: a charge of the consultation is posted and
    not committed; a full refund starts and must wait for the charge's locks BEFORE it reads what
    was charged, so it refunds the charge too (it used to read a stale `charged`, and a later
    refund could then hit the totals CHECK: a 500)."""
    from billing.ledger import Charge, post_charges

    user, astrologer, cid = await _session(db, minutes=2, rate=1_000)
    async with db.acquire() as charging, db.acquire() as refunding:
        tx = charging.transaction()
        await tx.start()
        charge = Charge(f"charge:{cid}:3", cid, user.id, astrologer.id, 1_000, 600)
        [posted] = await post_charges(charging, [charge])
        assert posted.status == "posted"
        pid = refunding.get_server_pid()
        refund = asyncio.create_task(
            refunds.refund_consultation(
                refunding, consultation_id=cid, amount=None, reason="r", actor_id=None, key="k"
            )
        )
        for _ in range(2_000):  # wait until the refund is blocked on the charge's lock
            if await _waiting_on_a_lock(db, pid):
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the refund never waited for the charge's locks")
        assert not refund.done()
        await tx.commit()
        done = await refund
    assert done.amount == 3_000  # the committed third minute included
    assert await balance(db, "user_wallet", user.id) == 100_000
    assert await balance(db, "astrologer_earnings", astrologer.id) == 0
    totals = await db.fetchrow(
        "SELECT charged, refunded FROM consultation_refund_totals WHERE consultation_id = $1", cid
    )
    assert totals is not None
    assert (totals["charged"], totals["refunded"]) == (3_000, 3_000)


async def test_a_refund_after_a_payout_never_takes_earnings_below_zero(
    db: asyncpg.Pool[Any],
) -> None:
    """Issue 13 item 7: the astrologer was paid out their whole balance, then the session is
    refunded in full. The user gets everything back; earnings stay at 0 (the CHECK would refuse
    less) and platform revenue carries what was paid out. A later session's refund takes the
    share it could not take before, from earnings that exist again."""
    from billing.ledger import Leg, account_id, post_transfer

    user, astrologer, cid = await _session(db, minutes=5, rate=1_000)  # 3,000 earned
    async with db.acquire() as conn:
        earnings = await account_id(conn, "astrologer_earnings", astrologer.id)
        clearing = await account_id(conn, "payouts_clearing", None)
        await post_transfer(
            conn, key="payout:test", kind="payout",
            legs=[Leg(earnings, -3_000), Leg(clearing, 3_000)],
        )  # fmt: skip
        first = await refunds.refund_consultation(
            conn, consultation_id=cid, amount=2_000, reason="r", actor_id=None, key="k1"
        )
    assert first.earnings_reversed == 0
    assert await balance(db, "astrologer_earnings", astrologer.id) == 0
    assert await balance(db, "user_wallet", user.id) == 100_000 - 5_000 + 2_000
    # New earnings arrive (another session); the next refund of the first one catches up.
    await charged_consultation(db, user.id, astrologer.id, 5, 1_000)
    async with db.acquire() as conn:
        second = await refunds.refund_consultation(
            conn, consultation_id=cid, amount=None, reason="r", actor_id=None, key="k2"
        )
    assert second.amount == 3_000
    assert second.earnings_reversed == 3_000  # the whole share of the session, at last
    assert await balance(db, "astrologer_earnings", astrologer.id) == 0
    assert await balance(db, "user_wallet", user.id) == 100_000 - 5_000
    # The first session is refunded in full, in proportion after all: only the second one's
    # platform part stays.
    assert await system_total(db, "platform_revenue") == 2_000


async def _paid_stripe_recharge(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> tuple[Any, dict[str, Any]]:
    user = await make_user(db)
    resp = await client.post(
        "/v1/wallet/recharges",
        json={"amount": 10_000, "gateway": "stripe"},
        headers=await auth(db, settings, user),
    )
    out: dict[str, Any] = await resp.json()
    fake.succeed_intent(out["order_id"])
    assert await run(services, settle_payment, out["id"], None) == "succeeded"
    return user, out


async def test_card_refund_goes_through_the_gateway_with_a_fixed_key(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user, out = await _paid_stripe_recharge(client, db, settings, services, fake)
    admin = await auth(db, settings, await make_user(db, role="admin"))
    fake.refund_status = "succeeded"
    resp = await client.post(
        f"/v1/admin/recharges/{out['id']}/refund",
        json={"amount": 4_000, "reason": "wrong amount"},
        headers=admin,
    )
    assert resp.status == 202, await resp.text()
    refund = await resp.json()
    assert (refund["amount"], refund["tax"], refund["status"]) == (4_000, 720, "requested")
    assert await balance(db, "user_wallet", user.id) == 6_000
    jobs = await queued(services, "process_refund")
    assert [f for f, _ in jobs] == ["process_refund"]
    for _ in range(2):  # a redelivered job finds it done
        assert await run(services, process_refund, *jobs[0][1]) == "succeeded"
    created = [c for c in fake.calls if c.startswith("stripe.create_refund")]
    assert created == [f"stripe.create_refund:card_refund:{refund['id']}"]
    assert next(iter(fake.stripe_refunds.values()))["amount"] == 4_720
    too_much = await client.post(
        f"/v1/admin/recharges/{out['id']}/refund",
        json={"amount": 6_001, "reason": "x"},
        headers=admin,
    )
    assert too_much.status == 409


async def test_card_refund_failure_event_returns_the_money(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    services: Services,
    fake: FakeGateways,
) -> None:
    user, out = await _paid_stripe_recharge(client, db, settings, services, fake)
    async with db.acquire() as conn:
        refund = await refunds.request_card_refund(
            conn, recharge_id=uuid.UUID(out["id"]), amount=None, reason="r", actor_id=None
        )
    assert await balance(db, "user_wallet", user.id) == 0
    fake.refund_status = "pending"
    assert await run(services, process_refund, str(refund.id)) == "submitted"
    # Later the gateway fails it and tells us by webhook.
    gateway_refund = next(iter(fake.stripe_refunds.values()))
    gateway_refund.update(status="failed", failure_reason="expired_or_canceled_card")
    payload = fg.stripe_event("refund.failed", gateway_refund, "evt_refund_failed")
    resp = await client.post(
        "/v1/payments/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": fg.stripe_signature(payload)},
    )
    assert resp.status == 200
    woken = [args for f, args in await queued(services) if f == "process_refund"]
    assert woken
    for args in woken * 2:
        assert await run(services, process_refund, *args) == "failed"
    assert await balance(db, "user_wallet", user.id) == 10_000
    row = await db.fetchrow("SELECT status, failure_reason FROM card_refunds")
    assert row is not None
    assert (row["status"], row["failure_reason"]) == ("failed", "expired_or_canceled_card")
    assert await db.fetchval("SELECT refunded FROM recharges") == 0
    assert (
        await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'card_refund_reversal'") == 1
    )


async def test_card_refund_of_spent_money_is_refused(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, services: Services
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    out = await (
        await client.post(
            "/v1/wallet/recharges", json={"amount": 10_000, "gateway": "test"}, headers=headers
        )
    ).json()
    await run(services, complete_test_recharge, out["id"])
    astrologer = await make_astrologer(db)
    await charged_consultation(db, user.id, astrologer.id, 3, 3_000)  # spends 9,000
    admin = await auth(db, settings, await make_user(db, role="admin"))
    resp = await client.post(
        f"/v1/admin/recharges/{out['id']}/refund", json={"reason": "x"}, headers=admin
    )
    assert resp.status == 402
    assert await balance(db, "user_wallet", user.id) == 1_000
    assert await db.fetchval("SELECT count(*) FROM card_refunds") == 0
