"""Presence: online from the live socket and the REST switch, busy from the state machine, and
offline by itself when heartbeats stop (TTL + sweep), each change published once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from consultations import presence
from tests.consultations.helpers import opened
from tests.factories import make_astrologer


async def test_connect_heartbeat_and_missed_heartbeats_go_offline(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path, presence_ttl_seconds=0.4) as (svc, em):
        a = await make_astrologer(svc.db)
        assert await presence.connected(svc, a.id) == "online"
        assert em.named("presence") == [
            ({"astrologer_id": str(a.id), "status": "online"}, f"presence:{a.id}")
        ]  # to the astrologer's watchers only (realtime/watch.py)
        for _ in range(3):  # heartbeats keep it online past the TTL
            await asyncio.sleep(0.2)
            assert await presence.heartbeat(svc, a.id) == "online"
        assert len(em.named("presence")) == 1  # no change, no event
        assert a.id in await presence.listed_ids(svc.redis)
        await asyncio.sleep(0.6)  # heartbeats stop
        assert (await presence.get_statuses(svc.redis, [a.id]))[a.id] == "offline"
        assert a.id not in await presence.listed_ids(svc.redis)
        assert await presence.sweep(svc) == 1
        assert em.named("presence")[-1] == (
            {"astrologer_id": str(a.id), "status": "offline"},
            f"presence:{a.id}",
        )
        assert await presence.sweep(svc) == 0  # published once; nothing left to watch


async def test_unapproved_cannot_go_online(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, em):
        pending = await make_astrologer(svc.db, verification="pending")
        with pytest.raises(presence.NotVerified):
            await presence.set_status(svc, pending.id, "online")
        assert await presence.connected(svc, pending.id) == "offline"
        assert em.events == []


async def test_explicit_offline_survives_reconnect_and_busy_wins(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, em):
        a = await make_astrologer(svc.db)
        assert await presence.set_status(svc, a.id, "online") == "online"
        assert await presence.set_status(svc, a.id, "offline") == "offline"
        assert await presence.connected(svc, a.id) == "offline"  # their choice stands
        assert await presence.set_status(svc, a.id, "online") == "online"
        assert await presence.set_busy(svc, a.id, True) == "busy"
        assert await presence.disconnected(svc, a.id) == "busy"  # in a session: still busy
        # No live consultation in PostgreSQL: the sweep repairs the stale flag.
        await presence.sweep(svc)
        assert await presence.get_status(svc.redis, a.id) == "offline"
        statuses = [d["status"] for d, _ in em.named("presence")]
        assert statuses == ["online", "offline", "online", "busy", "offline"]


async def test_status_rest(client: Any, db: Any, settings: Any) -> None:
    from tests.factories import auth, make_user

    a = await make_astrologer(db)
    headers = await auth(db, settings, a)
    resp = await client.post("/v1/astrologer/status", json={"status": "online"}, headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"status": "online"}
    resp = await client.post("/v1/astrologer/status", json={"status": "busy"}, headers=headers)
    assert resp.status == 422  # busy is the server's to set
    pending = await make_astrologer(db, verification="pending")
    resp = await client.post(
        "/v1/astrologer/status",
        json={"status": "online"},
        headers=await auth(db, settings, pending),
    )
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "not_verified"
    user = await make_user(db)
    resp = await client.post(
        "/v1/astrologer/status", json={"status": "online"}, headers=await auth(db, settings, user)
    )
    assert resp.status == 403
