"""Presence goes to the sockets watching an astrologer (`presence:watch`), on any process, and to
nobody else; the watch list is bounded and its ack carries the current statuses."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from api.framework import SERVICES
from consultations import presence
from core.settings import Settings
from realtime import watch
from tests.factories import make_astrologer, make_user, token_for
from tests.realtime.support import Peer


async def test_presence_reaches_watchers_on_any_process_and_nobody_else(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url1, app1 = await start_server()
    url2, _ = await start_server()
    watched, other = await make_astrologer(db), await make_astrologer(db)
    watcher, bystander = Peer(), Peer()
    astro = Peer()
    try:
        await watcher.connect(url1, await token_for(db, rt_settings, await make_user(db)))
        await bystander.connect(url1, await token_for(db, rt_settings, await make_user(db)))
        ack = await watcher.call("presence:watch", {"astrologer_ids": [str(watched.id)]})
        assert ack == {
            "ok": True,
            "presence": [{"astrologer_id": str(watched.id), "status": "offline"}],
        }
        # The astrologer comes online through the other process.
        await astro.connect(url2, await token_for(db, rt_settings, watched))
        got = await watcher.wait_for("presence", lambda es: len(es) >= 1)
        assert got == [{"astrologer_id": str(watched.id), "status": "online"}]
        own = await astro.wait_for("presence", lambda es: len(es) >= 1)  # their own desk
        assert own == got
        # Another astrologer's change is not sent to this watcher.
        services = app1[SERVICES]
        await presence.set_status(services, other.id, "online")
        # A change of the watched one after it, through the same Redis channel, arrives; so the
        # other one's would have arrived before it had it been sent.
        await presence.set_busy(services, watched.id, True)
        got = await watcher.wait_for("presence", lambda es: len(es) >= 2)
        assert [e["status"] for e in got] == ["online", "busy"]
        assert all(e["astrologer_id"] == str(watched.id) for e in got)
        assert bystander.events["presence"] == []
        # Unwatched: nothing more.
        assert (await watcher.call("presence:unwatch", {}))["ok"]
        await presence.set_busy(services, watched.id, False)
        await astro.wait_for("presence", lambda es: len(es) >= 3)  # delivered meanwhile
        await asyncio.sleep(0.1)  # the watcher's copy would have come through the same channel
        assert len(watcher.events["presence"]) == 2
    finally:
        for peer in (watcher, bystander, astro):
            await peer.close()


async def test_watch_list_is_bounded(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url, _ = await start_server()
    peer = Peer()
    try:
        await peer.connect(url, await token_for(db, rt_settings, await make_user(db)))
        too_many = [f"00000000-0000-4000-8000-{n:012d}" for n in range(watch.WATCH_BATCH_MAX + 1)]
        ack = await peer.call("presence:watch", {"astrologer_ids": too_many})
        assert ack["error"]["code"] == "validation_error"
        ack = await peer.call("presence:watch", {"astrologer_ids": []})
        assert ack["error"]["code"] == "validation_error"
        batch = watch.WATCH_BATCH_MAX
        for start in range(0, watch.WATCH_MAX, batch):
            ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(start, start + batch)]
            assert (await peer.call("presence:watch", {"astrologer_ids": ids}))["ok"]
        one_more = ["00000000-0000-4000-9000-000000000000"]
        ack = await peer.call("presence:watch", {"astrologer_ids": one_more})
        assert ack["error"]["code"] == "too_many_watched"
        again = ["00000000-0000-4000-8000-000000000000"]  # already watched: no new room
        assert (await peer.call("presence:watch", {"astrologer_ids": again}))["ok"]
        assert (await peer.call("presence:unwatch", {"astrologer_ids": again}))["ok"]
        assert (await peer.call("presence:watch", {"astrologer_ids": one_more}))["ok"]
    finally:
        await peer.close()
