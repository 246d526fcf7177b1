"""Astrologer earnings and payouts: minimum, reservation, one pending at a time, approval."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from billing.gateways.payouts import PayoutResult
from billing.payouts import apply_payout_result_txn
from core.services import Services
from core.settings import Settings
from tests.factories import auth, fund, make_astrologer, make_user
from tests.payments.support import balance, charged_consultation, queued, run
from workers.payments import execute_payout

Client = TestClient[Any, Any]


async def _earning_astrologer(db: asyncpg.Pool[Any], minutes: int = 10, rate: int = 5_000) -> Any:
    """An astrologer who earned 60 % of minutes x rate (30,000 by default)."""
    user, astrologer = await make_user(db), await make_astrologer(db)
    await fund(db, user.id, minutes * rate)
    await charged_consultation(db, user.id, astrologer.id, minutes, rate)
    return astrologer


async def test_earnings_summary_and_ledger(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    astrologer = await _earning_astrologer(db)
    headers = await auth(db, settings, astrologer)
    resp = await client.get("/v1/astrologer/earnings?limit=4", headers=headers)
    assert resp.status == 200
    data = await resp.json()
    assert (data["balance"], data["lifetime"], data["pending_payout"]) == (30_000, 30_000, 0)
    assert data["currency"] == "INR"
    assert [line["amount"] for line in data["items"]] == [3_000] * 4
    assert data["items"][0]["balance_after"] == 30_000
    assert data["items"][0]["kind"] == "consultation_charge"
    more = await client.get(
        f"/v1/astrologer/earnings?limit=100&cursor={data['next_cursor']}", headers=headers
    )
    assert len((await more.json())["items"]) == 6
    user = await auth(db, settings, await make_user(db))
    assert (await client.get("/v1/astrologer/earnings", headers=user)).status == 403


async def test_payout_rules(client: Client, db: asyncpg.Pool[Any], settings: Settings) -> None:
    astrologer = await _earning_astrologer(db)  # 30,000 earned; MIN_PAYOUT is 10,000 here
    headers = await auth(db, settings, astrologer)

    async def ask(amount: int) -> tuple[int, dict[str, Any]]:
        resp = await client.post("/v1/astrologer/payouts", json={"amount": amount}, headers=headers)
        return resp.status, await resp.json()

    status, body = await ask(9_999)
    assert (status, body["error"]["code"]) == (422, "validation_error")
    status, body = await ask(30_001)
    assert (status, body["error"]["code"]) == (402, "insufficient_earnings")
    # Five at once: one pending payout at a time, the amount reserved once.
    results = await asyncio.gather(*[ask(20_000) for _ in range(5)])
    assert sorted(s for s, _ in results) == [201, 409, 409, 409, 409]
    assert {b["error"]["code"] for s, b in results if s == 409} == {"payout_pending"}
    assert await balance(db, "astrologer_earnings", astrologer.id) == 10_000
    summary = await (await client.get("/v1/astrologer/earnings", headers=headers)).json()
    assert (summary["balance"], summary["pending_payout"], summary["lifetime"]) == (
        10_000,
        20_000,
        30_000,
    )
    assert await db.fetchval("SELECT count(*) FROM payouts") == 1


async def test_admin_approves_and_the_job_pays(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, services: Services
) -> None:
    astrologer = await _earning_astrologer(db)
    headers = await auth(db, settings, astrologer)
    payout = await (
        await client.post("/v1/astrologer/payouts", json={"amount": 25_000}, headers=headers)
    ).json()
    admin = await auth(db, settings, await make_user(db, role="admin"))
    listed = await (await client.get("/v1/admin/payouts?status=requested", headers=admin)).json()
    assert [p["id"] for p in listed["items"]] == [payout["id"]]
    assert (await client.get("/v1/admin/payouts", headers=headers)).status == 403
    resp = await client.post(f"/v1/admin/payouts/{payout['id']}/approve", headers=admin)
    assert resp.status == 200
    assert (await resp.json())["status"] == "approved"
    again = await client.post(f"/v1/admin/payouts/{payout['id']}/approve", headers=admin)
    assert (again.status, (await again.json())["error"]["code"]) == (409, "payout_not_pending")
    missing = await client.post(f"/v1/admin/payouts/{uuid.uuid4()}/approve", headers=admin)
    assert missing.status == 404
    jobs = await queued(services)
    assert [f for f, _ in jobs] == ["execute_payout"]
    assert await run(services, execute_payout, *jobs[0][1]) == "paid"
    assert await run(services, execute_payout, *jobs[0][1]) == "paid"  # redelivery: no-op
    row = await db.fetchrow("SELECT status, provider, provider_ref FROM payouts")
    assert row is not None
    assert row["status"] == "paid"
    assert row["provider"] == "local"
    assert row["provider_ref"].startswith("local_")
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'approve_payout'") == 1
    # The next request is allowed now that none is pending.
    resp = await client.post("/v1/astrologer/payouts", json={"amount": 5_000}, headers=headers)
    assert (resp.status, (await resp.json())["error"]["code"]) == (422, "validation_error")
    summary = await (await client.get("/v1/astrologer/earnings", headers=headers)).json()
    assert (summary["balance"], summary["pending_payout"]) == (5_000, 0)


async def test_failed_payout_returns_the_amount(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    astrologer = await _earning_astrologer(db)
    headers = await auth(db, settings, astrologer)
    payout = await (
        await client.post("/v1/astrologer/payouts", json={"amount": 30_000}, headers=headers)
    ).json()
    admin = await auth(db, settings, await make_user(db, role="admin"))
    await client.post(f"/v1/admin/payouts/{payout['id']}/approve", headers=admin)
    assert await balance(db, "astrologer_earnings", astrologer.id) == 0
    async with db.acquire() as conn, conn.transaction():
        failed = await apply_payout_result_txn(
            conn, uuid.UUID(payout["id"]), "local", PayoutResult("failed", None, "bad account")
        )
    assert failed.status == "failed"
    assert await balance(db, "astrologer_earnings", astrologer.id) == 30_000
    resp = await client.post("/v1/astrologer/payouts", json={"amount": 30_000}, headers=headers)
    assert resp.status == 201


async def test_admin_rejects_a_requested_payout_and_the_money_returns(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, services: Services
) -> None:
    astrologer = await _earning_astrologer(db)  # 30,000 earned
    headers = await auth(db, settings, astrologer)
    payout = await (
        await client.post("/v1/astrologer/payouts", json={"amount": 25_000}, headers=headers)
    ).json()
    assert await balance(db, "astrologer_earnings", astrologer.id) == 5_000
    admin = await auth(db, settings, await make_user(db, role="admin"))
    url = f"/v1/admin/payouts/{payout['id']}/reject"
    bad = await client.post(url, json={"reason": ""}, headers=admin)
    assert bad.status == 422
    assert (await client.post(url, json={"reason": "x"}, headers=headers)).status == 403
    missing = await client.post(
        f"/v1/admin/payouts/{uuid.uuid4()}/reject", json={"reason": "x"}, headers=admin
    )
    assert missing.status == 404
    assert await balance(db, "astrologer_earnings", astrologer.id) == 5_000  # nothing moved
    resp = await client.post(url, json={"reason": "bank details do not match"}, headers=admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["status"], body["rejection_reason"]) == ("rejected", "bank details do not match")
    assert await balance(db, "astrologer_earnings", astrologer.id) == 30_000
    again = await client.post(url, json={"reason": "again"}, headers=admin)
    assert (again.status, (await again.json())["error"]["code"]) == (409, "payout_not_pending")
    assert await balance(db, "astrologer_earnings", astrologer.id) == 30_000
    audit = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'reject_payout'")
    assert audit == 1
    # An approved payout is in the provider's hands: it cannot be rejected any more.
    second = await (
        await client.post("/v1/astrologer/payouts", json={"amount": 20_000}, headers=headers)
    ).json()
    await client.post(f"/v1/admin/payouts/{second['id']}/approve", headers=admin)
    late = await client.post(
        f"/v1/admin/payouts/{second['id']}/reject", json={"reason": "late"}, headers=admin
    )
    assert late.status == 409
    listed = await (await client.get("/v1/admin/payouts?status=rejected", headers=admin)).json()
    assert [p["id"] for p in listed["items"]] == [payout["id"]]
