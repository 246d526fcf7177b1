"""Chat over Socket.IO with real python-socketio clients against the app on a loopback port."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from core.settings import Settings
from tests.realtime.support import Peer, make_pair


async def _joined(url: str, token: str, cid: uuid.UUID) -> tuple[Peer, dict[str, Any]]:
    peer = Peer()
    await peer.connect(url, token)
    ack = await peer.call("consultation:join", {"consultation_id": str(cid)})
    return peer, ack


async def test_user_and_astrologer_chat(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, user, utoken, astro, atoken = await make_pair(db, rt_settings)
    u, uack = await _joined(rt_url, utoken, cid)
    a, aack = await _joined(rt_url, atoken, cid)
    try:
        assert uack["ok"], uack
        assert aack["ok"], aack
        assert uack["last_seq"] == 0
        assert uack["consultation"]["id"] == str(cid)
        assert uack["consultation"]["status"] == "active"

        ack1 = await u.call(
            "chat:send", {"consultation_id": str(cid), "client_msg_id": "m1", "text": "Namaste"}
        )
        assert ack1["ok"], ack1
        assert ack1["seq"] == 1
        assert ack1["sent_at"].endswith("Z")
        got = await a.wait_for("chat:message", lambda ms: len(ms) >= 1)
        assert got[0] == {
            "id": ack1["id"],
            "consultation_id": str(cid),
            "seq": 1,
            "sender_id": str(user.id),
            "client_msg_id": "m1",
            "text": "Namaste",
            "sent_at": ack1["sent_at"],
        }
        ack2 = await a.call(
            "chat:send", {"consultation_id": str(cid), "client_msg_id": "r1", "text": "Hello!"}
        )
        assert ack2["seq"] == 2
        got = await u.wait_for("chat:message", lambda ms: len(ms) >= 1)
        assert got[0]["sender_id"] == str(astro.id)
        assert got[0]["seq"] == 2

        # A resend with the same client_msg_id is stored once and acked with the same seq.
        again = await u.call(
            "chat:send", {"consultation_id": str(cid), "client_msg_id": "m1", "text": "Namaste"}
        )
        assert again == ack1
        assert await db.fetchval("SELECT count(*) FROM chat_messages") == 2

        # Typing and read receipts reach the other side; reads are stored.
        assert (await u.call("chat:typing", {"consultation_id": str(cid)}))["ok"]
        typing = await a.wait_for("chat:typing", lambda e: len(e) >= 1)
        assert typing[0] == {"consultation_id": str(cid), "user_id": str(user.id)}
        read = await a.call("chat:read", {"consultation_id": str(cid), "up_to_seq": 99})
        assert read == {"ok": True, "up_to_seq": 2}  # never past the last message
        receipts = await u.wait_for("chat:read", lambda e: len(e) >= 1)
        assert receipts[0]["up_to_seq"] == 2
        assert receipts[0]["user_id"] == str(astro.id)
        stored = await db.fetchval(
            "SELECT up_to_seq FROM chat_reads WHERE consultation_id = $1 AND user_id = $2",
            cid, astro.id,
        )  # fmt: skip
        assert stored == 2

        history = await u.call("chat:history", {"consultation_id": str(cid), "after_seq": 1})
        assert [m["seq"] for m in history["messages"]] == [2]
        assert history["has_more"] is False

        # The sender does not get its own message back on the same socket.
        await asyncio.sleep(0.2)
        assert [m["seq"] for m in u.events["chat:message"]] == [2]
        assert [m["seq"] for m in a.events["chat:message"]] == [1]
    finally:
        await u.close()
        await a.close()


async def test_join_twice_and_from_two_devices(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, _, utoken, _, atoken = await make_pair(db, rt_settings)
    phone, _ = await _joined(rt_url, utoken, cid)
    tablet, _ = await _joined(rt_url, utoken, cid)
    a, _ = await _joined(rt_url, atoken, cid)
    try:
        again = await phone.call("consultation:join", {"consultation_id": str(cid)})
        assert again["ok"]
        await a.call("chat:send", {"consultation_id": str(cid), "client_msg_id": "x", "text": "hi"})
        for device in (phone, tablet):
            got = await device.wait_for("chat:message", lambda ms: len(ms) >= 1)
            assert [m["seq"] for m in got] == [1]  # once, though joined twice
        # The user's own message reaches their other device, not the sending one.
        await phone.call(
            "chat:send", {"consultation_id": str(cid), "client_msg_id": "y", "text": "yo"}
        )
        await tablet.wait_for("chat:message", lambda ms: len(ms) >= 2)
        await asyncio.sleep(0.2)
        assert [m["seq"] for m in phone.events["chat:message"]] == [1]
    finally:
        for p in (phone, tablet, a):
            await p.close()


async def test_send_validation(rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings) -> None:
    cid, _, utoken, _, _ = await make_pair(db, rt_settings)
    u, _ = await _joined(rt_url, utoken, cid)
    try:
        cases: list[tuple[Any, str]] = [
            ({"consultation_id": str(cid), "client_msg_id": "a", "text": "x" * 4001}, "text"),
            ({"consultation_id": str(cid), "client_msg_id": "a", "text": ""}, "text"),
            ({"consultation_id": str(cid), "client_msg_id": "a", "text": "   "}, "text"),
            ({"consultation_id": str(cid), "text": "hi"}, "client_msg_id"),
            (
                {"consultation_id": str(cid), "client_msg_id": "a" * 65, "text": "hi"},
                "client_msg_id",
            ),
            ({"consultation_id": "nope", "client_msg_id": "a", "text": "hi"}, "consultation_id"),
            ({"consultation_id": str(cid), "client_msg_id": "a", "text": 5}, "text"),
            ({"consultation_id": str(cid), "client_msg_id": "a", "text": "hi", "x": 1}, "x"),
        ]
        for payload, _field in cases:
            ack = await u.call("chat:send", payload)
            assert ack["ok"] is False, payload
            assert ack["error"]["code"] == "validation_error", ack
        not_a_dict = await u.call("chat:send", ["list"])
        assert not_a_dict["error"]["code"] == "validation_error"
        ok = await u.call(
            "chat:send", {"consultation_id": str(cid), "client_msg_id": "a", "text": "y" * 4000}
        )
        assert ok["ok"]
        assert ok["seq"] == 1
        unknown = await u.call("chat:nope", {})
        assert unknown["error"]["code"] == "unknown_event"
    finally:
        await u.close()


async def test_consultation_must_take_messages(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    from tests.factories import make_astrologer, make_user, token_for
    from tests.realtime.support import make_consultation

    user = await make_user(db)
    astro = await make_astrologer(db)
    utoken = await token_for(db, rt_settings, user)
    atoken = await token_for(db, rt_settings, astro)
    requested = await make_consultation(db, user, astro, status="requested")
    just_ended = await make_consultation(db, user, astro, status="completed", ended_seconds_ago=5)
    long_ago = await make_consultation(db, user, astro, status="completed", ended_seconds_ago=3600)
    u, a = Peer(), Peer()
    await u.connect(rt_url, utoken)
    await a.connect(rt_url, atoken)
    try:

        async def send(peer: Peer, cid: uuid.UUID, mid: str) -> Any:
            return await peer.call(
                "chat:send", {"consultation_id": str(cid), "client_msg_id": mid, "text": "t"}
            )

        assert (await send(u, requested, "1"))["error"]["code"] == "not_active"
        assert (await send(u, just_ended, "2"))["error"]["code"] == "not_active"
        # The astrologer may still write (remedies, a summary) a short while after the end.
        assert (await send(a, just_ended, "3"))["seq"] == 1
        assert (await send(a, long_ago, "4"))["error"]["code"] == "not_active"
        assert await db.fetchval("SELECT count(*) FROM chat_messages") == 1
        assert await db.fetchval("SELECT count(*) FROM chat_counters") == 1
    finally:
        await u.close()
        await a.close()
