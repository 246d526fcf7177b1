"""Tips: from the wallet during or within a day after a session, split by TIP_SHARE_PERCENT,
once per Idempotency-Key, within MAX_TIP and the daily limit; the astrologer gets `session:tip`."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.framework import SERVICES
from billing.ledger import wallet_balance
from consultations import tips
from core.errors import AppError
from tests.consultations.helpers import opened
from tests.factories import auth, fund, make_astrologer, make_user


async def _consultation(
    db: asyncpg.Pool[Any],
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    *,
    status: str = "active",
    ended_hours_ago: float | None = None,
) -> uuid.UUID:
    """A consultation in `status` (completed ones ended `ended_hours_ago` hours ago)."""
    ended = status == "completed"
    cid: uuid.UUID = await db.fetchval(
        "INSERT INTO consultations (user_id, astrologer_id, type, status, end_reason, rate,"
        " share_percent, started_at, ended_at)"
        " VALUES ($1, $2, 'chat', $3, $4, 1000, 60, now() - interval '2 hours',"
        " CASE WHEN $5 THEN now() - make_interval(secs => $6) END) RETURNING id",
        user_id,
        astrologer_id,
        status,
        "user_ended" if ended else None,
        ended,
        (ended_hours_ago or 0) * 3600,
    )
    return cid


async def _earnings(db: asyncpg.Pool[Any], astrologer_id: uuid.UUID) -> int:
    value = await db.fetchval(
        "SELECT balance FROM accounts WHERE kind = 'astrologer_earnings' AND owner_id = $1",
        astrologer_id,
    )
    return int(value or 0)


async def _wallet(db: asyncpg.Pool[Any], user_id: uuid.UUID) -> int:
    async with db.acquire() as conn:
        balance, _ = await wallet_balance(conn, user_id)
    return balance


async def test_tip_during_a_session_is_split_and_listed(
    client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    user, astro = await make_user(db), await make_astrologer(db)
    await fund(db, user.id, 10_000)
    cid = await _consultation(db, user.id, astro.id)
    headers = {**await auth(db, settings, user), "Idempotency-Key": "tip-1"}
    resp = await client.post(
        f"/v1/consultations/{cid}/tips", json={"amount": 1001}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    tip = await resp.json()
    # 90 % of 1001 = 900.9 -> 901 to the astrologer (rounded half to even), 100 to the platform.
    assert tip["amount"] == 1001
    assert tip["astrologer_amount"] == 901
    assert await _wallet(db, user.id) == 10_000 - 1001
    assert await _earnings(db, astro.id) == 901
    # The user's transactions show it as a tip; the astrologer's earnings ledger too.
    lines = await (await client.get("/v1/wallet/transactions", headers=headers)).json()
    assert lines["items"][0]["kind"] == "tip"
    assert lines["items"][0]["amount"] == -1001
    assert lines["items"][0]["consultation_id"] == str(cid)
    earnings = await client.get("/v1/astrologer/earnings", headers=await auth(db, settings, astro))
    assert (await earnings.json())["items"][0]["kind"] == "tip"
    # Both are told: the astrologer's notification and the user's receipt.
    events = {
        r["event"]: r["user_id"] for r in await db.fetch("SELECT event, user_id FROM notifications")
    }
    assert events == {"tip_received": astro.id, "tip_sent": user.id}

    # Replay with the same key and body: the first answer, nothing moves again.
    again = await client.post(
        f"/v1/consultations/{cid}/tips", json={"amount": 1001}, headers=headers
    )
    assert again.status == 201
    assert (await again.json())["id"] == tip["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    # The same key with another amount is a conflict.
    other = await client.post(
        f"/v1/consultations/{cid}/tips", json={"amount": 500}, headers=headers
    )
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "idempotency_conflict"
    assert await _wallet(db, user.id) == 10_000 - 1001
    assert await db.fetchval("SELECT count(*) FROM tips") == 1


async def test_the_ledger_key_dedupes_even_without_the_http_replay(
    database_url: str, redis_url: str, tmp_path: Path, db: Any
) -> None:
    """Two racing calls with one key (the HTTP idempotency row aside): one tip, one transfer;
    and the astrologer receives `session:tip` once."""
    async with opened(database_url, redis_url, tmp_path) as (svc, emitter):
        user, astro = await make_user(svc.db), await make_astrologer(svc.db)
        await fund(svc.db, user.id, 10_000)
        cid = await _consultation(svc.db, user.id, astro.id)
        first, second = await asyncio.gather(
            *(
                tips.give_tip(
                    svc, consultation_id=cid, user_id=user.id, amount=2000, idempotency_key="k"
                )
                for _ in range(2)
            )
        )
        assert first.id == second.id
        assert first.replayed != second.replayed
        assert await _wallet(svc.db, user.id) == 8000
        assert await svc.db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'tip'") == 1
        sent = emitter.named(tips.SESSION_TIP_EVENT)
        assert sent == [
            (
                {"consultation_id": str(cid), "amount": 2000, "earned": 1800, "currency": "INR"},
                f"user:{astro.id}",
            )
        ]


async def test_bad_tips_are_refused_and_change_nothing(
    client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    user, astro, other = await make_user(db), await make_astrologer(db), await make_user(db)
    await fund(db, user.id, 3000)
    active = await _consultation(db, user.id, astro.id)
    uh = await auth(db, settings, user)

    async def tip(cid: uuid.UUID, amount: Any, key: str | None = "k", **h: str) -> Any:
        # This test makes more calls than TIP's rate limit lets one person make in a minute.
        redis = client.app[SERVICES].redis
        await redis.delete(*[k async for k in redis.scan_iter("rl:*")] or ["rl:none"])
        headers = {**(h or uh), **({"Idempotency-Key": key} if key else {})}
        return await client.post(
            f"/v1/consultations/{cid}/tips", json={"amount": amount}, headers=headers
        )

    for amount in (99, 0, -5, "100", 1.5, settings.max_tip + 1):
        resp = await tip(active, amount, key=f"bad-{amount}")
        assert resp.status == 422, amount
        assert "amount" in (await resp.json())["error"]["details"]["fields"]
    # No Idempotency-Key: refused (a tip must be safe to retry).
    resp = await tip(active, 500, key=None)
    assert resp.status == 422
    # Another person's consultation, an unknown id: 404; an astrologer: 403.
    theirs = await _consultation(db, other.id, (await make_astrologer(db)).id)
    assert (await tip(theirs, 500, key="x1")).status == 404
    assert (await tip(uuid.uuid4(), 500, key="x2")).status == 404
    ah = await auth(db, settings, astro)
    assert (await tip(active, 500, key="x3", **ah)).status == 403
    # Wrong states: still requested; completed more than 24 hours ago.
    requested = await _consultation(db, user.id, (await make_astrologer(db)).id, status="requested")
    resp = await tip(requested, 500, key="x4")
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "invalid_state"
    old = await _consultation(db, user.id, astro.id, status="completed", ended_hours_ago=25)
    assert (await tip(old, 500, key="x5")).status == 409
    # More than the wallet can spend (held money counts as spent): 402.
    resp = await tip(active, 3001, key="x6")
    assert resp.status == 402
    assert (await resp.json())["error"]["code"] == "insufficient_balance"
    assert await _wallet(db, user.id) == 3000
    assert await db.fetchval("SELECT count(*) FROM tips") == 0
    # Within the window after completion it is taken.
    recent = await _consultation(db, user.id, astro.id, status="completed", ended_hours_ago=23)
    assert (await tip(recent, 500, key="x7")).status == 201


async def test_daily_limit(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path, max_tips_per_day=1500) as (svc, _):
        user, astro = await make_user(svc.db), await make_astrologer(svc.db)
        await fund(svc.db, user.id, 10_000)
        cid = await _consultation(svc.db, user.id, astro.id)
        await tips.give_tip(
            svc, consultation_id=cid, user_id=user.id, amount=1000, idempotency_key="a"
        )
        with pytest.raises(AppError) as caught:
            await tips.give_tip(
                svc, consultation_id=cid, user_id=user.id, amount=600, idempotency_key="b"
            )
        assert caught.value.code == "tip_limit_reached"
        assert caught.value.status == 409
        assert caught.value.details["used"] == 1000
        # Up to the limit exactly is fine; a tip older than a day no longer counts.
        await tips.give_tip(
            svc, consultation_id=cid, user_id=user.id, amount=500, idempotency_key="c"
        )
        await svc.db.execute("UPDATE tips SET created_at = now() - interval '25 hours'")
        await tips.give_tip(
            svc, consultation_id=cid, user_id=user.id, amount=1500, idempotency_key="d"
        )
        assert await _wallet(svc.db, user.id) == 10_000 - 3000
