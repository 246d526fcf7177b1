"""Order, exactly-once and protections: concurrent sends, reconnects, rate, size, slow readers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg

from core.settings import Settings
from tests.realtime.support import Peer, make_pair


def _send(cid: Any, mid: str, text: str = "hello") -> dict[str, Any]:
    return {"consultation_id": str(cid), "client_msg_id": mid, "text": text}


async def test_concurrent_sends_never_share_or_skip_a_seq(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # Two server processes' worth of paths: the user on one app, the astrologer on another.
    url1, _ = await start_server()
    url2, _ = await start_server()
    cid, _, utoken, _, atoken = await make_pair(db, rt_settings)
    u, a = Peer(), Peer()
    await u.connect(url1, utoken)
    await a.connect(url2, atoken)
    try:
        for p in (u, a):
            assert (await p.call("consultation:join", {"consultation_id": str(cid)}))["ok"]
        n = 40
        # Every message fired at once from both sides, without waiting for acks in between.
        acks = await asyncio.gather(
            *(u.call("chat:send", _send(cid, f"u{i}")) for i in range(n)),
            *(a.call("chat:send", _send(cid, f"a{i}")) for i in range(n)),
        )
        assert all(ack["ok"] for ack in acks), acks
        seqs = sorted(ack["seq"] for ack in acks)
        assert seqs == list(range(1, 2 * n + 1))
        # One client's messages get seqs in the order it sent them.
        assert [ack["seq"] for ack in acks[:n]] == sorted(ack["seq"] for ack in acks[:n])
        assert [ack["seq"] for ack in acks[n:]] == sorted(ack["seq"] for ack in acks[n:])
        # Each side receives the other's messages in seq order, each once.
        for peer, prefix in ((u, "a"), (a, "u")):
            got = await peer.wait_for("chat:message", lambda ms: len(ms) >= n)
            assert [m["client_msg_id"] for m in got] == [f"{prefix}{i}" for i in range(n)]
            assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
        rows = await db.fetch("SELECT seq FROM chat_messages ORDER BY seq")
        assert [r["seq"] for r in rows] == list(range(1, 2 * n + 1))
    finally:
        await u.close()
        await a.close()


async def test_reconnect_loses_nothing(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, _, utoken, _, atoken = await make_pair(db, rt_settings)
    a = Peer()
    await a.connect(rt_url, atoken)
    await a.call("consultation:join", {"consultation_id": str(cid)})
    total = 60
    stop_sending = asyncio.Event()

    async def astrologer_keeps_sending() -> None:
        for i in range(total):
            ack = await a.call("chat:send", _send(cid, f"a{i}", f"line {i}"))
            assert ack["ok"], ack
            await asyncio.sleep(0.005)
        stop_sending.set()

    seen: dict[int, str] = {}
    duplicates: list[int] = []

    def take(messages: list[dict[str, Any]]) -> None:
        for m in messages:
            if m["seq"] in seen:
                duplicates.append(m["seq"])
            seen[m["seq"]] = m["text"]

    sender = asyncio.create_task(astrologer_keeps_sending())
    try:
        for _ in range(3):  # drop and come back three times while the other side sends
            u = Peer()
            await u.connect(rt_url, utoken)
            join = await u.call("consultation:join", {"consultation_id": str(cid)})
            after = max(seen, default=0)
            assert join["last_seq"] >= after
            # Join first, then fetch after the last seq: live messages may overlap the history,
            # and a client drops what it has (by seq); nothing can fall between the two.
            history = await u.call(
                "chat:history", {"consultation_id": str(cid), "after_seq": after}
            )
            await asyncio.sleep(0.1)
            await u.sio.eio.disconnect(abort=True)  # the network drops, no goodbye
            live = list(u.events["chat:message"])
            fresh = {m["seq"]: m for m in history["messages"] + live if m["seq"] not in seen}
            take(sorted(fresh.values(), key=lambda m: m["seq"]))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(stop_sending.wait(), 20)
        u = Peer()
        await u.connect(rt_url, utoken)
        await u.call("consultation:join", {"consultation_id": str(cid)})
        history = await u.call(
            "chat:history", {"consultation_id": str(cid), "after_seq": max(seen, default=0)}
        )
        take(history["messages"])
        await u.close()
    finally:
        await sender
        await a.close()
    assert duplicates == []
    assert sorted(seen) == list(range(1, total + 1))
    assert [seen[s] for s in sorted(seen)] == [f"line {i}" for i in range(total)]


async def test_rate_limit_refuses_bursts(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url, _ = await start_server(realtime_events_per_second=5, realtime_event_burst=10)
    cid, _, utoken, _, _ = await make_pair(db, rt_settings)
    u = Peer()
    await u.connect(url, utoken)
    try:
        await u.call("consultation:join", {"consultation_id": str(cid)})
        acks = await asyncio.gather(*(u.call("chat:send", _send(cid, f"m{i}")) for i in range(30)))
        limited = [ack for ack in acks if not ack["ok"]]
        assert 15 <= len(limited) <= 21, acks
        assert {ack["error"]["code"] for ack in limited} == {"rate_limited"}
        assert await db.fetchval("SELECT count(*) FROM chat_messages") == 30 - len(limited)
        await asyncio.sleep(0.5)  # the bucket refills
        assert (await u.call("chat:send", _send(cid, "later")))["ok"]
    finally:
        await u.close()


async def test_oversized_packet_drops_the_connection(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, _, utoken, _, _ = await make_pair(db, rt_settings, type_="video")
    u = Peer()
    await u.connect(rt_url, utoken)
    await u.call("consultation:join", {"consultation_id": str(cid)})
    # Under the packet cap but over the field cap: a validation error, the socket stays.
    sdp = await u.call(
        "rtc:offer", {"consultation_id": str(cid), "sdp": "x" * 40_000, "type": "offer"}
    )
    assert sdp["error"]["code"] == "validation_error"
    assert u.sio.connected
    # Over engine.io's max_http_buffer_size (64 KiB): the server closes the connection.
    disconnected = asyncio.Event()
    u.sio.on("disconnect", lambda *args: disconnected.set())
    await u.sio.emit("chat:send", _send(cid, "big", "x" * 70_000))
    await asyncio.wait_for(disconnected.wait(), 10)
    assert await db.fetchval("SELECT count(*) FROM chat_messages") == 0


async def test_slow_consumer_is_disconnected(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    """A client that stops reading (a long-polling client that never polls again) is cut off
    once its queue passes the cap, instead of queueing without bound."""
    url, app = await start_server(realtime_max_queued_packets=20)
    cid, _, utoken, _, atoken = await make_pair(db, rt_settings)
    base = url + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as resp:
            handshake = json.loads((await resp.text())[1:])
        sid_url = f"{base}&sid={handshake['sid']}"
        async with http.post(sid_url, data="40" + json.dumps({"token": utoken})) as resp:
            assert resp.status == 200
        async with http.get(sid_url) as resp:
            assert (await resp.text()).startswith("40")  # connected
        join = "421" + json.dumps(["consultation:join", {"consultation_id": str(cid)}])
        async with http.post(sid_url, data=join) as resp:
            assert resp.status == 200
        async with http.get(sid_url) as resp:
            assert '"ok":true' in await resp.text()
        # From now on the slow client never polls while the astrologer sends.
        a = Peer()
        await a.connect(url, atoken)
        try:
            await a.call("consultation:join", {"consultation_id": str(cid)})
            for i in range(40):
                assert (await a.call("chat:send", _send(cid, f"m{i}")))["ok"]
            await asyncio.sleep(0.3)
            eio_sid = handshake["sid"]
            from realtime.server import SIO

            assert eio_sid not in app[SIO].eio.sockets or app[SIO].eio.sockets[eio_sid].closed
            async with http.get(sid_url) as resp:  # the session is gone
                assert resp.status == 400
            # The other side is unaffected.
            assert (await a.call("chat:send", _send(cid, "after")))["ok"]
        finally:
            await a.close()
