"""Instant requests and the state machine: balance, presence, races that leave one outcome, and
the durable missed timeout (arq delayed job, and the sweep after a "restart")."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from arq.worker import Worker

from consultations import keys, lifecycle, presence
from core.errors import AppError
from core.services import Services
from tests.consultations.helpers import opened
from tests.factories import auth, fund, make_astrologer, make_user, token_for
from tests.workers.support import registered


async def _online(svc: Services, **kw: Any) -> Any:
    a = await make_astrologer(svc.db, **kw)
    await presence.set_status(svc, a.id, "online")
    return a


async def _funded_user(svc: Services, amount: int = 100_000) -> Any:
    u = await make_user(svc.db, name="Asha")
    await fund(svc.db, u.id, amount)
    return u


async def test_request_needs_balance_then_freezes_terms(
    client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    from api.framework import SERVICES

    services = client.app[SERVICES]
    a = await _online(services, rates=(1000, None, 2000), share_percent=55)
    user = await make_user(db)
    headers = await auth(db, settings, user)
    body = {"astrologer_id": str(a.id), "type": "chat"}
    resp = await client.post("/v1/consultations", json=body, headers=headers)
    assert resp.status == 402
    err = (await resp.json())["error"]
    assert err["code"] == "insufficient_balance"
    assert err["details"]["required"] == 5000  # MIN_START_MINUTES (5) x 1000
    await fund(db, user.id, 4999)
    assert (await client.post("/v1/consultations", json=body, headers=headers)).status == 402
    await fund(db, user.id, 1)
    resp = await client.post("/v1/consultations", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    c = await resp.json()
    assert (c["status"], c["rate"], c["list_rate"], c["max_minutes"]) == (
        "requested",
        1000,
        1000,
        5,
    )
    assert c["expires_at"] is not None
    assert c["astrologer"]["display_name"] == "Test Astrologer"
    assert (
        await db.fetchval(
            "SELECT share_percent FROM consultations WHERE id = $1", uuid.UUID(c["id"])
        )
        == 55
    )
    # A later price change does not re-price it.
    await db.execute("UPDATE astrologer_profiles SET rate_chat = 9999 WHERE user_id = $1", a.id)
    got = await client.get(f"/v1/consultations/{c['id']}", headers=headers)
    assert (await got.json())["rate"] == 1000
    # Voice is not offered; bad inputs are 422; strangers see 404.
    bad = await client.post("/v1/consultations", json={**body, "type": "voice"}, headers=headers)
    assert bad.status == 422
    bad = await client.post("/v1/consultations", json={**body, "type": "tarot"}, headers=headers)
    assert bad.status == 422
    stranger = await auth(db, settings, await make_user(db))
    assert (await client.get(f"/v1/consultations/{c['id']}", headers=stranger)).status == 404
    listed = await (await client.get("/v1/consultations", headers=headers)).json()
    assert [i["id"] for i in listed["items"]] == [c["id"]]
    mine_as_astrologer = await client.get(
        "/v1/consultations?status=requested", headers=await auth(db, settings, a)
    )
    assert [i["id"] for i in (await mine_as_astrologer.json())["items"]] == [c["id"]]


async def test_offline_and_busy_are_409(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await make_astrologer(svc.db)
        u1, u2 = await _funded_user(svc), await _funded_user(svc)
        with pytest.raises(lifecycle.AstrologerOffline):
            await lifecycle.request(svc, user_id=u1.id, astrologer_id=a.id, type_="chat")
        await presence.set_status(svc, a.id, "online")
        c = await lifecycle.request(svc, user_id=u1.id, astrologer_id=a.id, type_="chat")
        await lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)
        assert await presence.get_status(svc.redis, a.id) == "busy"
        with pytest.raises(lifecycle.AstrologerBusy):
            await lifecycle.request(svc, user_id=u2.id, astrologer_id=a.id, type_="chat")
        # Even if presence were wrong, PostgreSQL says busy.
        await svc.redis.delete(keys.busy(a.id))
        with pytest.raises(lifecycle.AstrologerBusy):
            await lifecycle.request(svc, user_id=u2.id, astrologer_id=a.id, type_="chat")


async def _outcome(coro: Any) -> str:
    try:
        await coro
    except AppError as err:
        return err.code
    return "ok"


async def test_two_accepts_leave_one(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, em):
        a = await _online(svc)
        # The same request accepted twice at once.
        c = await lifecycle.request(
            svc, user_id=(await _funded_user(svc)).id, astrologer_id=a.id, type_="chat"
        )
        results = await asyncio.gather(
            *[
                _outcome(lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id))
                for _ in range(4)
            ]
        )
        assert sorted(results) == ["invalid_state"] * 3 + ["ok"]
        accepted = [
            d
            for d, room in em.named("consultation:updated")
            if d["consultation"]["status"] == "accepted"
        ]
        assert len(accepted) == 2  # one transition, told to both participants
        await lifecycle.cancel(svc, consultation_id=c.id, user_id=c.user_id)
        # Two different requests accepted at once: one live consultation per astrologer.
        c1 = await lifecycle.request(
            svc, user_id=(await _funded_user(svc)).id, astrologer_id=a.id, type_="chat"
        )
        c2 = await lifecycle.request(
            svc, user_id=(await _funded_user(svc)).id, astrologer_id=a.id, type_="chat"
        )
        pair = await asyncio.gather(
            _outcome(lifecycle.accept(svc, consultation_id=c1.id, astrologer_id=a.id)),
            _outcome(lifecycle.accept(svc, consultation_id=c2.id, astrologer_id=a.id)),
        )
        assert sorted(pair) == ["astrologer_busy", "ok"]
        live = await svc.db.fetchval(
            "SELECT count(*) FROM consultations WHERE astrologer_id = $1 AND status = 'accepted'",
            a.id,
        )
        assert live == 1


async def test_accept_versus_cancel(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await _online(svc)
        u = await _funded_user(svc)
        seen = set()
        for _ in range(6):
            c = await lifecycle.request(svc, user_id=u.id, astrologer_id=a.id, type_="chat")
            acc, can = await asyncio.gather(
                _outcome(lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)),
                _outcome(lifecycle.cancel(svc, consultation_id=c.id, user_id=u.id)),
            )
            final = await lifecycle.get(svc.db, c.id)
            assert final is not None
            seen.add((acc, can, final.status))
            # Cancel wins whether it came first or second (accepted can still be cancelled);
            # an accept after the cancel is refused. Either way: cancelled, and not busy.
            assert can == "ok"
            assert final.status == "cancelled"
            assert acc in ("ok", "invalid_state")
            await presence.sync_busy(svc, a.id)
            assert await presence.get_status(svc.redis, a.id) == "online"


async def test_accept_versus_timeout(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with opened(database_url, redis_url, tmp_path, request_timeout_seconds=0.3) as (svc, _):
        a = await _online(svc)
        u = await _funded_user(svc)
        outcomes = set()
        for delay in (0.0, 0.29, 0.31, 0.5):
            c = await lifecycle.request(svc, user_id=u.id, astrologer_id=a.id, type_="chat")
            await asyncio.sleep(delay)
            acc, missed = await asyncio.gather(
                _outcome(lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)),
                lifecycle.miss(svc, c.id),
            )
            final = await lifecycle.get(svc.db, c.id)
            assert final is not None
            if acc == "ok":
                assert final.status == "accepted"
                assert missed is None
                await lifecycle.cancel(svc, consultation_id=c.id, user_id=u.id)
            else:
                assert acc in ("request_expired", "invalid_state")
                assert final.status == "missed"
            outcomes.add(final.status)
        assert outcomes <= {"accepted", "missed"}
        c = await lifecycle.request(svc, user_id=u.id, astrologer_id=a.id, type_="chat")
        await asyncio.sleep(0.4)
        with pytest.raises(lifecycle.RequestExpired):  # too late, even before any sweep ran
            await lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)
        assert (await lifecycle.get(svc.db, c.id)).status == "missed"  # type: ignore[union-attr]  # it exists


async def test_missed_after_restart_by_the_sweep(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    overrides = {"request_timeout_seconds": 0.3}
    async with opened(database_url, redis_url, tmp_path, **overrides) as (svc, _):
        a = await _online(svc)
        u = await _funded_user(svc)
        c = await lifecycle.request(svc, user_id=u.id, astrologer_id=a.id, type_="chat")
        queued = await svc.arq.zrange("arq:queue", 0, -1)
        assert keys.expire_request_job(c.id).encode() in queued  # the delayed job is queued
    # The process that made the request is gone, and so is its queue (Redis lost it).
    async with opened(database_url, redis_url, tmp_path, **overrides) as (svc2, em):
        await svc2.redis.delete("arq:queue", f"arq:job:{keys.expire_request_job(c.id)}")
        assert (await lifecycle.sweep(svc2))["missed"] == 0  # not due yet: nothing happens
        await asyncio.sleep(0.35)
        assert (await lifecycle.sweep(svc2))["missed"] == 1
        assert (await lifecycle.sweep(svc2))["missed"] == 0  # once
        final = await lifecycle.get(svc2.db, c.id)
        assert final is not None
        assert final.status == "missed"
        assert [d["consultation"]["status"] for d, _ in em.named("consultation:updated")] == [
            "missed"
        ] * 2


async def test_missed_by_the_delayed_arq_job(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path, request_timeout_seconds=0.4) as (svc, _):
        a = await _online(svc)
        u = await _funded_user(svc)
        c = await lifecycle.request(svc, user_id=u.id, astrologer_id=a.id, type_="chat")
        answered = await lifecycle.request(
            svc, user_id=(await _funded_user(svc)).id, astrologer_id=a.id, type_="chat"
        )
        await lifecycle.reject(svc, consultation_id=answered.id, astrologer_id=a.id)
        # A second enqueue of the same timer is the same job (deterministic _job_id).
        await lifecycle.schedule_timeout(svc, c)
        queued = [m.decode() for m in await svc.arq.zrange("arq:queue", 0, -1)]
        ours = [m for m in queued if m.startswith("consultation:expire:")]
        assert sorted(ours) == sorted(keys.expire_request_job(x.id) for x in (c, answered))
        # This worker runs only the timeout job: leave the notification jobs to their tests.
        others = [m for m in queued if m not in ours]
        if others:
            await svc.arq.zrem("arq:queue", *others)
        # A real arq worker, with the job as astrolive.worker registers it; burst mode returns
        # once the queue is empty (deferred jobs included). Not `worker.close()`: it would close
        # the services' shared arq pool.
        worker = Worker(
            functions=[registered("expire_request")],
            redis_pool=svc.arq,
            burst=True,
            handle_signals=False,
            poll_delay=0.02,
            ctx={"services": svc, "settings": svc.settings},
        )
        await asyncio.wait_for(worker.main(), 20)
        assert (await lifecycle.get(svc.db, c.id)).status == "missed"  # type: ignore[union-attr]  # it exists
        assert (await lifecycle.get(svc.db, answered.id)).status == "rejected"  # type: ignore[union-attr]  # it exists


async def test_answer_permissions_over_rest(
    client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    from api.framework import SERVICES

    svc = client.app[SERVICES]
    a = await _online(svc)
    other = await _online(svc)
    u = await _funded_user(svc)
    uh, ah, oh = [await auth(db, settings, x) for x in (u, a, other)]
    resp = await client.post(
        "/v1/consultations", json={"astrologer_id": str(a.id), "type": "chat"}, headers=uh
    )
    cid = (await resp.json())["id"]
    assert (await client.post(f"/v1/consultations/{cid}/accept", headers=oh)).status == 404
    assert (await client.post(f"/v1/consultations/{cid}/accept", headers=uh)).status == 403
    assert (await client.post(f"/v1/consultations/{uuid.uuid4()}/accept", headers=ah)).status == 404
    assert (await client.post("/v1/consultations/not-a-uuid/accept", headers=ah)).status == 404
    resp = await client.post(
        f"/v1/consultations/{cid}/reject", json={"reason": "in a puja"}, headers=ah
    )
    assert resp.status == 200
    assert (await resp.json())["status"] == "rejected"
    resp = await client.post(f"/v1/consultations/{cid}/accept", headers=ah)
    assert resp.status == 409
    assert (await resp.json())["error"] == {
        "code": "invalid_state",
        "message": "the consultation is rejected",
        "details": {"status": "rejected"},
    }
    resp = await client.post(f"/v1/consultations/{cid}/cancel", headers=uh)
    assert resp.status == 409
    # Accept, then the user cancels before the session: the astrologer is free again.
    resp = await client.post(
        "/v1/consultations", json={"astrologer_id": str(a.id), "type": "chat"}, headers=uh
    )
    cid = (await resp.json())["id"]
    assert (await (await client.post(f"/v1/consultations/{cid}/accept", headers=ah)).json())[
        "status"
    ] == "accepted"
    assert await presence.get_status(svc.redis, a.id) == "busy"
    resp = await client.post(
        f"/v1/consultations/{cid}/cancel", headers={**uh, "Idempotency-Key": "c1"}
    )
    assert (await resp.json())["status"] == "cancelled"
    again = await client.post(
        f"/v1/consultations/{cid}/cancel", headers={**uh, "Idempotency-Key": "c1"}
    )
    assert again.status == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await presence.get_status(svc.redis, a.id) == "online"


async def test_astrologer_hears_the_request_over_socketio(
    aiohttp_server: Any, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    from aiohttp import ClientSession

    from api.framework import SERVICES
    from astrolive.app import create_app
    from tests.conftest import make_settings
    from tests.realtime.support import Peer

    settings = make_settings(database_url, redis_url, tmp_path / "data")
    app = create_app(settings)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    svc = app[SERVICES]
    a = await make_astrologer(svc.db)
    u = await _funded_user(svc)
    peer = Peer()
    watcher = Peer()
    await peer.connect(url, await token_for(svc.db, settings, a))
    await watcher.connect(url, await token_for(svc.db, settings, u))
    try:
        # The live socket put the astrologer online (the realtime layer calls presence).
        async with asyncio.timeout(5):
            while await presence.get_status(svc.redis, a.id) != "online":  # noqa: ASYNC110  # presence lives in Redis: nothing to wait on but polling
                await asyncio.sleep(0.05)
        async with ClientSession() as http:
            resp = await http.post(
                f"{url}/v1/consultations",
                json={"astrologer_id": str(a.id), "type": "chat"},
                headers=await auth(svc.db, settings, u),
            )
            assert resp.status == 201
            cid = (await resp.json())["id"]
        got = await peer.wait_for("consultation:requested", lambda e: len(e) >= 1)
        assert got[0]["consultation"]["id"] == cid
        assert got[0]["consultation"]["user"]["name"] == "Asha"
        updates = await watcher.wait_for("consultation:updated", lambda e: len(e) >= 1)
        assert updates[0]["consultation"]["status"] == "requested"
        # And a push notification was queued for the astrologer.
        assert (
            await svc.db.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", a.id)
            == 1
        )
    finally:
        await peer.close()
        await watcher.close()
