"""Two real server processes (`python -m astrolive serve`) sharing Redis: a user connected to one
and an astrologer connected to the other chat and signal as if they were on one."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from core.settings import Settings
from realtime.server import write_only_emitter
from tests.realtime.support import Peer, make_pair
from tests.servers import ServerProcess, process_env

pytestmark = pytest.mark.slow


async def test_chat_across_two_processes(db: asyncpg.Pool[Any], rt_settings: Settings) -> None:
    env = process_env(rt_settings, REALTIME_HEARTBEAT_SECONDS="0.5", METER_LOOP="false")
    a_proc, b_proc = ServerProcess(env), ServerProcess(env)
    await asyncio.gather(a_proc.start(), b_proc.start())
    cid, user, utoken, astro, atoken = await make_pair(db, rt_settings, type_="voice")
    u, a = Peer(), Peer()
    try:
        await u.connect(a_proc.url, utoken)
        await a.connect(b_proc.url, atoken)
        for p in (u, a):
            assert (await p.call("consultation:join", {"consultation_id": str(cid)}))["ok"]
        n = 20
        acks = await asyncio.gather(
            *(
                p.call(
                    "chat:send",
                    {"consultation_id": str(cid), "client_msg_id": f"{who}{i}", "text": who},
                )
                for i in range(n)
                for p, who in ((u, "u"), (a, "a"))
            )
        )
        assert sorted(ack["seq"] for ack in acks) == list(range(1, 2 * n + 1))
        for peer, other in ((u, astro.id), (a, user.id)):
            got = await peer.wait_for("chat:message", lambda ms: len(ms) >= n)
            assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
            assert {m["sender_id"] for m in got} == {str(other)}
        # Signalling crosses processes too, to the other participant only.
        await u.call("rtc:offer", {"consultation_id": str(cid), "sdp": "v=0\r\n", "type": "offer"})
        offer = await a.wait_for("rtc:offer", lambda e: len(e) >= 1)
        assert offer[0]["from"] == str(user.id)
        # A worker's write-only emitter reaches a socket on either process.
        emitter = write_only_emitter(rt_settings.redis_url or "")
        await emitter.emit("session:tick", {"consultation_id": str(cid)}, room=f"user:{user.id}")
        await emitter.emit("session:tick", {"consultation_id": str(cid)}, room=f"user:{astro.id}")
        await emitter.close()
        for peer in (u, a):
            await peer.wait_for("session:tick", lambda e: len(e) >= 1)
    finally:
        await u.close()
        await a.close()
        await asyncio.gather(a_proc.stop(), b_proc.stop())
