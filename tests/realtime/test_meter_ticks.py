"""The meter's batched emits (realtime.server.BatchingRedisManager) across server processes: a
tick charged by one app instance reaches a participant connected to another, in order, once, and
nobody outside the consultation's room."""

from __future__ import annotations

from typing import Any

import asyncpg

from core.settings import Settings
from db.identity import User, get_user
from realtime.server import SIO
from realtime.transport import BatchingRedisManager
from tests.factories import make_user, token_for
from tests.meter.support import accepted_consultation
from tests.realtime.support import Peer


async def _user(db: asyncpg.Pool[Any], user_id: Any) -> User:
    user = await get_user(db, user_id)
    assert user is not None
    return user


async def test_tick_reaches_a_participant_on_another_process(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # Two app instances sharing Redis; short minutes so a few ticks happen.
    url1, app1 = await start_server(billing_minute_seconds=0.5)
    url2, app2 = await start_server(billing_minute_seconds=0.5)
    for app in (app1, app2):
        assert isinstance(app[SIO].manager, BatchingRedisManager)
    s = await accepted_consultation(db, rate=100, wallet=100_000)
    user, astrologer = await _user(db, s.user_id), await _user(db, s.astrologer_id)
    stranger = await make_user(db)
    u, a, x = Peer(), Peer(), Peer()
    await u.connect(url1, await token_for(db, rt_settings, user))
    await a.connect(url2, await token_for(db, rt_settings, astrologer))
    await x.connect(url1, await token_for(db, rt_settings, stranger))
    join = {"consultation_id": str(s.id)}
    try:
        assert (await u.call("consultation:join", join))["ok"]
        # The astrologer's join starts the session in app2, which charges minute 1 at once and
        # emits its tick there; the user on app1 gets it only through Redis.
        assert (await a.call("consultation:join", join))["ok"]
        for peer in (u, a):
            await peer.wait_for("session:started", lambda es: len(es) == 1)
            ticks = await peer.wait_for("session:tick", lambda es: len(es) >= 3)
            minutes = [t["minute"] for t in ticks]
            assert minutes == list(range(1, len(minutes) + 1)), minutes  # in order, each once
            assert ticks[0]["consultation_id"] == str(s.id)
        # Each side its own copy (issue 12): the user's money only to the user, the astrologer
        # the minute and what they earned.
        first = u.events["session:tick"][0]
        assert first["amount"] == 100
        assert first["charged"] == 100
        assert first["balance"] == 100_000 - 100
        assert first["minutes_left"] == (100_000 - 100) // 100
        assert a.events["session:tick"][0] == {
            "consultation_id": str(s.id),
            "minute": 1,
            "earned": 60,
        }
        assert "balance" not in a.events["session:started"][0]
        assert (await u.call("consultation:end", join))["ok"]
        for peer in (u, a):
            ended = await peer.wait_for("session:ended", lambda es: len(es) == 1)
            assert ended[0]["reason"] == "user_ended"
            billed = ended[0]["billed_minutes"]
            # Every tick of a charged minute went out before the end, none after.
            assert [t["minute"] for t in peer.events["session:tick"]] == list(range(1, billed + 1))
        # A socket of the same process that is not in the consultation's room got nothing.
        assert "session:tick" not in x.events
        assert "session:started" not in x.events
    finally:
        for peer in (u, a, x):
            await peer.close()


async def test_emit_many_delivers_in_order_to_local_rooms_only(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # A batch published by one process (as the meter does) and delivered by another, item by
    # item in the batch's order; items for rooms nobody is in are skipped.
    _, app1 = await start_server()
    url2, _ = await start_server()
    s = await accepted_consultation(db)
    user = await _user(db, s.user_id)
    u = Peer()
    await u.connect(url2, await token_for(db, rt_settings, user))
    try:
        room = f"user:{user.id}"  # every socket of a person is in its user room
        items = [("test:n", {"n": i}, room if i % 2 == 0 else "user:nobody") for i in range(20)]
        await app1[SIO].manager.emit_many(items)
        got = await u.wait_for("test:n", lambda es: len(es) >= 10)
        assert [e["n"] for e in got] == list(range(0, 20, 2))
        await app1[SIO].manager.emit_many([])  # nothing to send is not an error
    finally:
        await u.close()
