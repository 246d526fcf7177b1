"""Promo codes (kinds, limits, the race for the last use), the free first consultation and its
abuse limits, reviews (only completed, once, aggregates under concurrency) and complaints."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from api.framework import SERVICES
from consultations import lifecycle, presence, promos, reviews
from core.errors import AppError
from core.services import Services
from tests.consultations.helpers import opened
from tests.factories import auth, fund, make_astrologer, make_user


async def _code(
    svc: Services, code: str, kind: promos.PromoKind, value: int, **kw: Any
) -> promos.Promo:
    admin = await make_user(svc.db, role="admin")
    async with svc.db.acquire() as conn:
        return await promos.create(
            conn, code=code, kind=kind, value=value, max_uses=kw.get("max_uses"),
            per_user=kw.get("per_user", 1), valid_from=kw.get("valid_from"),
            valid_until=kw.get("valid_until"),
            first_consultation_only=kw.get("first_consultation_only", False), created_by=admin.id,
        )  # fmt: skip


async def _request(svc: Services, user: Any, astrologer: Any, code: str | None = None) -> Any:
    return await lifecycle.request(
        svc, user_id=user.id, astrologer_id=astrologer.id, type_="chat", promo_code=code
    )


async def _code_of(coro: Any) -> str:
    try:
        await coro
    except AppError as err:
        return str(err.details.get("reason", err.code))
    return "ok"


async def test_admin_creates_promos(client: TestClient[Any, Any], db: Any, settings: Any) -> None:
    admin = await make_user(db, role="admin")
    headers = await auth(db, settings, admin)
    body = {"code": "first50", "kind": "percent", "value": 50, "max_uses": 100}
    resp = await client.post("/v1/admin/promos", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    got = await resp.json()
    assert (got["code"], got["per_user"], got["used_count"]) == ("FIRST50", 1, 0)
    assert (await client.post("/v1/admin/promos", json=body, headers=headers)).status == 409
    for bad in (
        {**body, "code": "X"},
        {**body, "code": "OVER", "value": 101},
        {**body, "code": "ZERO", "value": 0},
        {**body, "code": "PAST", "valid_until": "2020-01-01T00:00:00Z"},
        {**body, "code": "KIND", "kind": "bogo"},
    ):
        assert (await client.post("/v1/admin/promos", json=bad, headers=headers)).status == 422, bad
    user = await make_user(db)
    resp = await client.post(
        "/v1/admin/promos", json={**body, "code": "MINE"}, headers=await auth(db, settings, user)
    )
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'create_promo'") == 1


async def test_promo_kinds_and_limits(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await make_astrologer(svc.db, rates=(1000, None, None))
        await presence.set_status(svc, a.id, "online")
        u = await make_user(svc.db)
        await _code(svc, "HALF", "percent", 50, per_user=2)
        await _code(svc, "FLAT20", "flat", 2000)
        await _code(svc, "FREE3", "free_minutes", 3)
        await _code(svc, "LATER", "flat", 100, valid_from=datetime.now(UTC) + timedelta(days=1))
        await _code(svc, "NEWBIE", "flat", 100, first_consultation_only=True)
        # With no money, a 50 % code halves what the minimum start needs (5 x ₹5).
        assert await _code_of(_request(svc, u, a, "half")) == "insufficient_balance"
        assert await svc.db.fetchval("SELECT used_count FROM promo_codes WHERE code = 'HALF'") == 0
        await fund(svc.db, u.id, 2500)
        c = await _request(svc, u, a, "half")
        assert (c.rate, c.list_rate, c.promo_id is not None) == (500, 1000, True)
        await lifecycle.cancel(svc, consultation_id=c.id, user_id=u.id)
        # A consultation that never started gives its use back.
        assert await svc.db.fetchval("SELECT used_count FROM promo_codes WHERE code = 'HALF'") == 0
        c = await _request(svc, u, a, "HALF")
        await lifecycle.cancel(svc, consultation_id=c.id, user_id=u.id)
        assert await _code_of(_request(svc, u, a)) == "insufficient_balance"  # 2500 < 5 x 1000
        await fund(svc.db, u.id, 500)
        c = await _request(svc, u, a, "FLAT20")  # 3000 + the 2000 credit covers 5 x 1000
        assert (c.rate, c.promo_credit) == (1000, 2000)
        # One open request per user at a time (issue 12): c "took place" and is closed (its promo
        # use is kept, unlike a cancel's) so that u may request again.
        await svc.db.execute(
            "UPDATE consultations SET status = 'cancelled', ended_at = now(), started_at = now()"
            " WHERE id = $1",
            c.id,
        )
        c2 = await _request(svc, u, a, "FREE3")
        assert c2.free_minutes == 3
        # c2 "took place" (and is closed, so that u may request again).
        await svc.db.execute(
            "UPDATE consultations SET status = 'cancelled', ended_at = now(), started_at = now()"
            " WHERE id = $1",
            c2.id,
        )
        assert await _code_of(_request(svc, u, a, "FLAT20")) == "per_user_limit"
        assert await _code_of(_request(svc, u, a, "NOPE")) == "unknown"
        assert await _code_of(_request(svc, u, a, "LATER")) == "not_yet_valid"
        # First-consultation-only: fine before any session, refused after one took place.
        other = await make_user(svc.db)
        await fund(svc.db, other.id, 10_000)
        assert await _code_of(_request(svc, u, a, "NEWBIE")) == "first_consultation_only"
        assert await _code_of(_request(svc, other, a, "NEWBIE")) == "ok"


async def test_two_users_race_for_the_last_use(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await make_astrologer(svc.db)
        await presence.set_status(svc, a.id, "online")
        await _code(svc, "LAST", "flat", 500, max_uses=3)
        users = [await make_user(svc.db) for _ in range(8)]
        for u in users:
            await fund(svc.db, u.id, 10_000)
        results = await asyncio.gather(*(_code_of(_request(svc, u, a, "LAST")) for u in users))
        assert sorted(results) == ["exhausted"] * 5 + ["ok"] * 3
        assert await svc.db.fetchval("SELECT used_count FROM promo_codes WHERE code = 'LAST'") == 3
        assert await svc.db.fetchval("SELECT count(*) FROM promo_redemptions") == 3


async def test_free_first_consultation_once_per_person_phone_and_device(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path, free_first_consultation_minutes=5) as (
        svc,
        _,
    ):
        a = await make_astrologer(svc.db)
        await presence.set_status(svc, a.id, "online")
        u = await make_user(svc.db)  # no money at all: the free minutes cover the start
        await svc.db.execute(
            "INSERT INTO devices (user_id, platform, push_token) VALUES ($1, 'android', 'tok-1')",
            u.id,
        )
        c = await _request(svc, u, a)
        assert c.free_minutes == 5
        # Rejected before it started: the free consultation is given back.
        await lifecycle.reject(svc, consultation_id=c.id, astrologer_id=a.id)
        c = await _request(svc, u, a)
        assert c.free_minutes == 5
        # A second account on the same phone's app install (the token moved to it): not free.
        twin = await make_user(svc.db)
        await svc.db.execute("UPDATE devices SET user_id = $1 WHERE push_token = 'tok-1'", twin.id)
        assert await _code_of(_request(svc, twin, a)) == "insufficient_balance"
        # The same phone number re-registered (the old account's phone freed): not free either.
        phone = u.phone
        await svc.db.execute("UPDATE users SET phone = '+919999999999' WHERE id = $1", u.id)
        again = await make_user(svc.db, phone=phone)
        assert await _code_of(_request(svc, again, a)) == "insufficient_balance"
        fresh = await make_user(svc.db)
        assert (await _request(svc, fresh, a)).free_minutes == 5


async def _completed(svc: Services, user: Any, astrologer: Any) -> lifecycle.Consultation:
    c = await _request(svc, user, astrologer)
    await lifecycle.accept(svc, consultation_id=c.id, astrologer_id=astrologer.id)
    now = datetime.now(UTC)
    async with svc.db.acquire() as conn:
        assert await lifecycle.mark_active(conn, c.id, now) is not None
        done = await lifecycle.complete(
            conn, c.id, end_reason="user_ended", ended_at=now, billed_minutes=3, total_charged=3000
        )
    assert done is not None
    await lifecycle.publish(svc, done)
    return done


async def test_reviews(client: TestClient[Any, Any], db: Any, settings: Any) -> None:
    svc = client.app[SERVICES]
    a = await make_astrologer(db)
    await presence.set_status(svc, a.id, "online")
    u = await make_user(db, name="Ravi")
    await fund(db, u.id, 100_000)
    uh = await auth(db, settings, u)
    pending = await _request(svc, u, a)
    resp = await client.post(
        f"/v1/consultations/{pending.id}/review", json={"rating": 5}, headers=uh
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "invalid_state"
    await lifecycle.cancel(svc, consultation_id=pending.id, user_id=u.id)
    done = await _completed(svc, u, a)
    assert await presence.get_status(svc.redis, a.id) == "online"  # completion cleared busy
    for bad in ({"rating": 0}, {"rating": 6}, {"rating": 4, "comment": "x" * 2001}, {}):
        assert (
            await client.post(f"/v1/consultations/{done.id}/review", json=bad, headers=uh)
        ).status == 422
    stranger = await auth(db, settings, await make_user(db))
    assert (
        await client.post(
            f"/v1/consultations/{done.id}/review", json={"rating": 1}, headers=stranger
        )
    ).status == 404
    resp = await client.post(
        f"/v1/consultations/{done.id}/review", json={"rating": 4, "comment": "kind"}, headers=uh
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"/v1/consultations/{done.id}/review", json={"rating": 1}, headers=uh)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "already_reviewed"
    detail = await (await client.get(f"/v1/astrologers/{a.id}")).json()
    assert detail["rating"] == {"average": 4.0, "count": 1}
    assert detail["consultations_count"] == 1
    assert [(r["rating"], r["comment"], r["user"]["name"]) for r in detail["recent_reviews"]] == [
        (4, "kind", "Ravi")
    ]
    # Complaints: only about a session that took place, once.
    first = await client.post(
        f"/v1/consultations/{done.id}/complaint", json={"reason": "left early"}, headers=uh
    )
    assert first.status == 201
    resp = await client.post(
        f"/v1/consultations/{done.id}/complaint", json={"reason": "again"}, headers=uh
    )
    assert resp.status == 409
    resp = await client.post(
        f"/v1/consultations/{pending.id}/complaint", json={"reason": "?"}, headers=uh
    )
    assert resp.status == 409
    # The complaint is a refund ticket (issue 17), its text stored encrypted.
    ticket = await client.get(f"/v1/support/tickets/{(await first.json())['id']}", headers=uh)
    assert (await ticket.json())["text"] == "left early"
    assert (await ticket.json())["category"] == "refund"


async def test_concurrent_reviews_all_count(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await make_astrologer(svc.db)
        await presence.set_status(svc, a.id, "online")
        done = []
        for _ in range(6):
            u = await make_user(svc.db)
            await fund(svc.db, u.id, 100_000)
            done.append(await _completed(svc, u, a))

        async def review(c: lifecycle.Consultation, rating: int) -> str:
            try:
                async with svc.db.acquire() as conn:
                    await reviews.submit(
                        conn, consultation_id=c.id, user_id=c.user_id, rating=rating, comment=None
                    )
            except AppError as err:
                return err.code
            return "ok"

        ratings = [5, 4, 3, 5, 2, 5]
        results = await asyncio.gather(
            *(review(c, r) for c, r in zip(done, ratings, strict=True)),
            review(done[0], 1),  # a second review of the first, racing
        )
        assert sorted(results) == ["already_reviewed"] + ["ok"] * 6
        row = await svc.db.fetchrow(
            "SELECT rating_sum, rating_count FROM astrologer_profiles WHERE user_id = $1",
            a.id,
        )
        first = await svc.db.fetchval(
            "SELECT rating FROM reviews WHERE consultation_id = $1", done[0].id
        )
        expected = sum(ratings[1:]) + first
        assert row is not None
        assert (row["rating_sum"], row["rating_count"]) == (expected, 6)
        # Paginated reviews, newest first, every one exactly once.
        seen: list[uuid.UUID] = []
        after = None
        while True:
            page = await reviews.list_for(svc.db, a.id, after=after, limit=4)
            seen += [r.id for r in page]
            if len(page) < 4:
                break
            after = (page[-1].created_at, page[-1].id)
        assert len(seen) == len(set(seen)) == 6
