"""Real aiortc peers: a call negotiated through the server's signalling, and the echo test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioice.ice
import asyncpg
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import VideoStreamTrack

from core.settings import Settings
from tests.realtime.support import Peer, make_pair


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice skips 127.0.0.1 as a host candidate; on loopback it is the only address we have."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no public STUN in tests


async def test_two_aiortc_peers_call_through_the_server(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, user, utoken, _, atoken = await make_pair(db, rt_settings, type_="video")
    u, a = Peer(), Peer()
    caller, callee = _peer(), _peer()
    try:
        await u.connect(rt_url, utoken)
        await a.connect(rt_url, atoken)
        for p in (u, a):
            assert (await p.call("consultation:join", {"consultation_id": str(cid)}))["ok"]

        # The callee answers whatever offer the server relays to it.
        frames: asyncio.Queue[Any] = asyncio.Queue()
        readers: list[asyncio.Future[None]] = []
        messages: asyncio.Queue[str] = asyncio.Queue()

        @callee.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def first_frame() -> None:
                await frames.put(await track.recv())

            readers.append(asyncio.ensure_future(first_frame()))

        @callee.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            channel.on("message", lambda m: messages.put_nowait(m))

        async def answer(offer: dict[str, Any]) -> None:
            await callee.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await callee.setLocalDescription(await callee.createAnswer())
            ack = await a.call(
                "rtc:answer",
                {
                    "consultation_id": str(cid),
                    "sdp": callee.localDescription.sdp,
                    "type": callee.localDescription.type,
                },
            )
            assert ack == {"ok": True}

        channel = caller.createDataChannel("chat")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        caller.addTrack(VideoStreamTrack())
        await caller.setLocalDescription(await caller.createOffer())
        ack = await u.call(
            "rtc:offer",
            {"consultation_id": str(cid), "sdp": caller.localDescription.sdp, "type": "offer"},
        )
        assert ack == {"ok": True}
        offer = (await a.wait_for("rtc:offer", lambda e: len(e) >= 1))[0]
        assert offer["from"] == str(user.id)
        assert offer["consultation_id"] == str(cid)
        await answer(offer)
        relayed = (await u.wait_for("rtc:answer", lambda e: len(e) >= 1))[0]
        await caller.setRemoteDescription(RTCSessionDescription(relayed["sdp"], relayed["type"]))

        # A trickled candidate is relayed as well, to the other side only.
        line = next(x for x in caller.localDescription.sdp.splitlines() if "a=candidate:" in x)
        candidate = {"candidate": line[2:], "sdpMid": "0", "sdpMLineIndex": 0}
        ice = await u.call("rtc:ice", {"consultation_id": str(cid), "candidate": candidate})
        assert ice == {"ok": True}
        got = (await a.wait_for("rtc:ice", lambda e: len(e) >= 1))[0]
        assert got["candidate"]["candidate"] == candidate["candidate"]
        assert u.events["rtc:ice"] == []
        assert u.events["rtc:offer"] == []

        await asyncio.wait_for(opened.wait(), 15)
        channel.send("namaste over webrtc")
        assert await asyncio.wait_for(messages.get(), 10) == "namaste over webrtc"
        frame = await asyncio.wait_for(frames.get(), 15)
        assert frame.width > 0
        assert frame.height > 0
    finally:
        await caller.close()
        await callee.close()
        await u.close()
        await a.close()


async def test_signalling_only_for_calls(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, _, utoken, _, _ = await make_pair(db, rt_settings, type_="chat")
    u = Peer()
    await u.connect(rt_url, utoken)
    try:
        await u.call("consultation:join", {"consultation_id": str(cid)})
        ack = await u.call(
            "rtc:offer", {"consultation_id": str(cid), "sdp": "v=0", "type": "offer"}
        )
        assert ack["error"]["code"] == "not_a_call"
        wrong_type = await u.call(
            "rtc:offer", {"consultation_id": str(cid), "sdp": "v=0", "type": "answer"}
        )
        assert wrong_type["error"]["code"] == "validation_error"
        bad_ice = await u.call(
            "rtc:ice", {"consultation_id": str(cid), "candidate": {"candidate": "x" * 2000}}
        )
        assert bad_ice["error"]["code"] == "validation_error"
    finally:
        await u.close()


async def test_echo_test_answers_an_aiortc_client(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    from tests.factories import make_user, token_for

    user = await make_user(db)
    client = Peer()
    await client.connect(rt_url, await token_for(db, rt_settings, user))
    pc = _peer()
    try:
        frames: asyncio.Queue[Any] = asyncio.Queue()
        readers: list[asyncio.Future[None]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def first_frame() -> None:
                await frames.put(await track.recv())

            readers.append(asyncio.ensure_future(first_frame()))

        channel = pc.createDataChannel("echo")
        opened = asyncio.Event()
        replies: asyncio.Queue[str] = asyncio.Queue()
        channel.on("open", opened.set)
        channel.on("message", lambda m: replies.put_nowait(m))
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())

        bad = await client.call("rtc:echo", {"sdp": "not an sdp", "type": "offer"})
        assert bad["ok"] is False

        ack = await client.call("rtc:echo", {"sdp": pc.localDescription.sdp, "type": "offer"})
        assert ack["ok"], ack
        assert ack["type"] == "answer"
        await pc.setRemoteDescription(RTCSessionDescription(ack["sdp"], ack["type"]))

        await asyncio.wait_for(opened.wait(), 15)
        sent_at = time.monotonic()
        channel.send("ping 1")
        assert await asyncio.wait_for(replies.get(), 10) == "ping 1"
        assert time.monotonic() - sent_at < 5
        frame = await asyncio.wait_for(frames.get(), 15)  # our own video, back from the server
        assert frame.width > 0
        stats = await client.wait_for("rtc:echo:stats", lambda e: len(e) >= 1, wait=20)
        assert stats[0]["kind"] == "video"
        assert stats[0]["rtt_ms"] >= 0
        assert (await client.call("rtc:echo:stop", {}))["ok"]
    finally:
        await pc.close()
        await client.close()
