"""The waitlist: join a busy astrologer's queue, positions, the next in line offered when the
astrologer is free (balance checked again), offers expiring to the next, leaving."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consultations import lifecycle, presence, waitlist
from core.errors import AppError
from tests.consultations.helpers import opened
from tests.factories import fund, make_astrologer, make_user


async def test_queue_offer_expiry_and_skip(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path, waitlist_offer_seconds=0.3) as (svc, em):
        a = await make_astrologer(svc.db, rates=(1000, None, None))
        users = [await make_user(svc.db) for _ in range(5)]
        current, u1, u2, u3, poor = users
        for u in (current, u1, u2, u3):
            await fund(svc.db, u.id, 100_000)
        await fund(svc.db, poor.id, 4_999)
        with pytest.raises(lifecycle.AstrologerOffline):
            await waitlist.join(svc, user_id=u1.id, astrologer_id=a.id, type_="chat")
        await presence.set_status(svc, a.id, "online")
        with pytest.raises(waitlist.AstrologerAvailable):
            await waitlist.join(svc, user_id=u1.id, astrologer_id=a.id, type_="chat")
        c = await lifecycle.request(svc, user_id=current.id, astrologer_id=a.id, type_="chat")
        await lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)
        with pytest.raises(AppError) as err:
            await waitlist.join(svc, user_id=poor.id, astrologer_id=a.id, type_="chat")
        assert err.value.code == "insufficient_balance"
        with pytest.raises(AppError):  # not offered
            await waitlist.join(svc, user_id=u1.id, astrologer_id=a.id, type_="video")
        p1 = await waitlist.join(svc, user_id=u1.id, astrologer_id=a.id, type_="chat")
        p2 = await waitlist.join(svc, user_id=u2.id, astrologer_id=a.id, type_="chat")
        p3 = await waitlist.join(svc, user_id=u3.id, astrologer_id=a.id, type_="chat")
        assert [p.position for p in (p1, p2, p3)] == [1, 2, 3]
        assert (
            await waitlist.join(svc, user_id=u2.id, astrologer_id=a.id, type_="chat")
        ).position == 2
        # u1 drains their wallet meanwhile: skipped when their turn comes.
        await svc.db.execute(
            "UPDATE accounts SET held = balance WHERE kind = 'user_wallet' AND owner_id = $1", u1.id
        )
        # The session ends: the astrologer is free, u2 (next who can pay) is offered.
        now = datetime.now(UTC)
        async with svc.db.acquire() as conn:
            await lifecycle.mark_active(conn, c.id, now)
            done = await lifecycle.complete(
                conn,
                c.id,
                end_reason="user_ended",
                ended_at=now,
                billed_minutes=1,
                total_charged=1000,
            )
        assert done is not None
        await lifecycle.publish(svc, done)
        assert [room for _, room in em.named("waitlist:skipped")] == [f"user:{u1.id}"]
        offers = em.named("waitlist:offer")
        assert [room for _, room in offers] == [f"user:{u2.id}"]
        assert (await waitlist.position(svc, user_id=u3.id, astrologer_id=a.id)).position == 2  # type: ignore[union-attr]  # queued
        # While u2 holds the offer, nobody else may request the astrologer.
        with pytest.raises(lifecycle.AstrologerBusy):
            await lifecycle.request(svc, user_id=u3.id, astrologer_id=a.id, type_="chat")
        # u2 lets it expire: u3 is offered, and u3 requests in time.
        await asyncio.sleep(0.35)
        assert (await waitlist.sweep(svc))["offers_expired"] == 1
        assert [room for _, room in em.named("waitlist:offer")][-1] == f"user:{u3.id}"
        c3 = await lifecycle.request(svc, user_id=u3.id, astrologer_id=a.id, type_="chat")
        assert (
            await svc.db.fetchval(
                "SELECT status FROM waitlist_entries WHERE consultation_id = $1", c3.id
            )
            == "fulfilled"
        )
        assert await waitlist.position(svc, user_id=u3.id, astrologer_id=a.id) is None


async def test_leave_passes_the_offer_on(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, em):
        a = await make_astrologer(svc.db)
        users = [await make_user(svc.db) for _ in range(3)]
        for u in users:
            await fund(svc.db, u.id, 100_000)
        busy_with, u1, u2 = users
        await presence.set_status(svc, a.id, "online")
        c = await lifecycle.request(svc, user_id=busy_with.id, astrologer_id=a.id, type_="chat")
        await lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)
        await waitlist.join(svc, user_id=u1.id, astrologer_id=a.id, type_="chat")
        await waitlist.join(svc, user_id=u2.id, astrologer_id=a.id, type_="chat")
        await lifecycle.cancel(svc, consultation_id=c.id, user_id=busy_with.id)
        assert [room for _, room in em.named("waitlist:offer")] == [f"user:{u1.id}"]
        assert await waitlist.leave(svc, user_id=u1.id, astrologer_id=a.id)
        assert [room for _, room in em.named("waitlist:offer")] == [
            f"user:{u1.id}",
            f"user:{u2.id}",
        ]
        assert not await waitlist.leave(svc, user_id=u1.id, astrologer_id=a.id)


async def test_waitlist_rest(client: Any, db: Any, settings: Any) -> None:
    from api.framework import SERVICES
    from tests.factories import auth

    svc = client.app[SERVICES]
    a = await make_astrologer(db)
    u = await make_user(db)
    await fund(db, u.id, 100_000)
    uh = await auth(db, settings, u)
    resp = await client.post(f"/v1/astrologers/{a.id}/waitlist", json={"type": "chat"}, headers=uh)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "astrologer_offline"
    await presence.set_status(svc, a.id, "online")
    await presence.set_busy(svc, a.id, True)
    resp = await client.post(f"/v1/astrologers/{a.id}/waitlist", json={"type": "chat"}, headers=uh)
    assert resp.status == 201
    assert (await resp.json())["position"] == 1
    got = await client.get(f"/v1/astrologers/{a.id}/waitlist", headers=uh)
    assert (await got.json())["status"] == "waiting"
    assert (await client.delete(f"/v1/astrologers/{a.id}/waitlist", headers=uh)).status == 204
    assert (await client.get(f"/v1/astrologers/{a.id}/waitlist", headers=uh)).status == 404
    assert (
        await client.post(f"/v1/astrologers/{a.id}/waitlist", json={"type": "tea"}, headers=uh)
    ).status == 422
