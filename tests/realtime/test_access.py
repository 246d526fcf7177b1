"""Who may connect, join, read and write: tokens, strangers, REST history, ICE servers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
import socketio

from core.settings import Settings
from core.tokens import issue_access_token
from tests.factories import auth, make_user, token_for
from tests.realtime.support import Peer, make_pair


async def _refusal(url: str, token: str | None) -> Any:
    peer = Peer()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect(url, token)
    assert peer.connect_error is not None
    return peer.connect_error


async def test_connect_refused_with_a_reason(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    assert (await _refusal(rt_url, None))["data"]["code"] == "unauthorized"
    assert (await _refusal(rt_url, "forged.token.x"))["data"]["code"] == "invalid_token"

    user = await make_user(db)
    session_id = await db.fetchval(
        "INSERT INTO auth_sessions (user_id) VALUES ($1) RETURNING id", user.id
    )
    expired_settings = rt_settings.model_copy(update={"access_token_ttl_seconds": -10})
    expired = issue_access_token(expired_settings, user.id, "user", session_id)
    assert (await _refusal(rt_url, expired))["data"]["code"] == "token_expired"

    revoked = await token_for(db, rt_settings, user)
    await db.execute("UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1", user.id)
    refusal = await _refusal(rt_url, revoked)
    assert refusal["data"]["code"] == "session_revoked"
    assert refusal["data"]["message"]

    blocked = await make_user(db)
    token = await token_for(db, rt_settings, blocked)
    await db.execute("UPDATE users SET status = 'blocked' WHERE id = $1", blocked.id)
    assert (await _refusal(rt_url, token))["data"]["code"] == "session_revoked"

    fine = Peer()
    await fine.connect(rt_url, await token_for(db, rt_settings, await make_user(db)))
    assert fine.sio.connected
    await fine.close()


async def test_stranger_cannot_join_read_or_inject(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, _, utoken, _, atoken = await make_pair(db, rt_settings, type_="video")
    # A stranger, and an astrologer with a consultation of their own.
    stranger_user = await make_user(db)
    other_cid, _, _, _, other_atoken = await make_pair(db, rt_settings, type_="video")
    u, a, s, o = Peer(), Peer(), Peer(), Peer()
    await u.connect(rt_url, utoken)
    await a.connect(rt_url, atoken)
    await s.connect(rt_url, await token_for(db, rt_settings, stranger_user))
    await o.connect(rt_url, other_atoken)
    try:
        for p in (u, a):
            assert (await p.call("consultation:join", {"consultation_id": str(cid)}))["ok"]
        assert (await o.call("consultation:join", {"consultation_id": str(other_cid)}))["ok"]
        c = {"consultation_id": str(cid)}
        for intruder in (s, o):
            join = await intruder.call("consultation:join", c)
            assert join == {
                "ok": False,
                "error": {"code": "not_found", "message": "no such consultation"},
            }
            history = await intruder.call("chat:history", {**c, "after_seq": 0})
            assert history["error"]["code"] == "not_found"
            sent = await intruder.call(
                "chat:send", {**c, "client_msg_id": "evil", "text": "pay me"}
            )
            assert sent["error"]["code"] == "not_found"
            read = await intruder.call("chat:read", {**c, "up_to_seq": 1})
            assert read["error"]["code"] == "not_joined"
            typing = await intruder.call("chat:typing", c)
            assert typing["error"]["code"] == "not_joined"
            offer = await intruder.call("rtc:offer", {**c, "sdp": "v=0", "type": "offer"})
            assert offer["error"]["code"] == "not_joined"
            ice = await intruder.call("rtc:ice", {**c, "candidate": None})
            assert ice["error"]["code"] == "not_joined"
        assert await db.fetchval("SELECT count(*) FROM chat_messages") == 0

        # Traffic of this consultation never reaches the others' sockets.
        await u.call("chat:send", {**c, "client_msg_id": "1", "text": "private"})
        await u.call("chat:typing", c)
        await u.call("rtc:offer", {**c, "sdp": "v=0\r\n", "type": "offer"})
        await a.wait_for("rtc:offer", lambda e: len(e) >= 1)
        await a.wait_for("chat:message", lambda e: len(e) >= 1)
        await asyncio.sleep(0.3)
        for outsider in (s, o):
            leaked = {k: v for k, v in outsider.events.items() if k != "presence"}
            assert leaked == {}, leaked
    finally:
        for p in (u, a, s, o):
            await p.close()


async def test_rest_history(
    client: Any, rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, user, utoken, _, _ = await make_pair(db, rt_settings)
    u = Peer()
    await u.connect(rt_url, utoken)
    try:
        for i in range(5):
            ack = await u.call(
                "chat:send", {"consultation_id": str(cid), "client_msg_id": str(i), "text": f"m{i}"}
            )
            assert ack["seq"] == i + 1
    finally:
        await u.close()
    url = f"/v1/consultations/{cid}/messages"
    headers = await auth(db, rt_settings, user)
    resp = await client.get(url, params={"after_seq": "1", "limit": "2"}, headers=headers)
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    assert [m["seq"] for m in page["items"]] == [2, 3]
    assert page["last_seq"] == 5
    assert page["items"][0]["text"] == "m1"
    resp = await client.get(url, params={"cursor": page["next_cursor"]}, headers=headers)
    page = await resp.json()
    assert [m["seq"] for m in page["items"]] == [4, 5]
    assert page["next_cursor"] is None

    admin = await make_user(db, role="admin")
    resp = await client.get(url, headers=await auth(db, rt_settings, admin))
    assert resp.status == 200
    assert len((await resp.json())["items"]) == 5
    stranger = await make_user(db)
    resp = await client.get(url, headers=await auth(db, rt_settings, stranger))
    assert resp.status == 404
    assert (await client.get(url)).status == 401
    resp = await client.get(url, params={"after_seq": "-1"}, headers=headers)
    assert resp.status == 422
    resp = await client.get("/v1/consultations/not-a-uuid/messages", headers=headers)
    assert resp.status == 404


async def test_ice_servers_with_coturn_credentials(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url, _ = await start_server()
    # TURN only for a participant of an accepted or active voice/video consultation (issue 14).
    _, user, _, _, _ = await make_pair(db, rt_settings, type_="voice", status="accepted")
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/rtc/ice-servers") as resp:
            assert resp.status == 401
        async with http.get(
            url + "/v1/rtc/ice-servers", headers=await auth(db, rt_settings, user)
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["ttl"] == 600
    stun, turn = body["ice_servers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"], "username": None, "credential": None}
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    expiry, _, who = turn["username"].partition(":")
    assert who == str(user.id)
    assert abs(int(expiry) - (time.time() + 600)) < 5  # expires after TURN_TTL_SECONDS
    expected = base64.b64encode(
        hmac.new(b"turn-test-secret", turn["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert turn["credential"] == expected


async def test_ice_servers_without_turn(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url, _ = await start_server(turn_secret=None)
    user = await make_user(db)
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/v1/rtc/ice-servers", headers=await auth(db, rt_settings, user)) as resp,
    ):
        body = await resp.json()
    assert [s["urls"] for s in body["ice_servers"]] == [["stun:stun.example.org:3478"]]
