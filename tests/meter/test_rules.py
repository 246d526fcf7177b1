"""The session rules of API.md ("Session rules made explicit"), each hole of issue 12 through
the real path: app servers on loopback, real Socket.IO clients, real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest

from astrolive.app import SETTINGS
from auth.admin import set_user_blocked
from auth.sessions import revoke_session
from consultations import lifecycle, presence
from core import events
from core.errors import AppError
from core.services import Services
from core.settings import Settings
from core.tokens import issue_access_token
from db.identity import User, get_user
from live import session
from tests.factories import fund, make_astrologer, make_user, token_for
from tests.meter.support import accepted_consultation, consultation, wait_for
from tests.realtime.conftest import ServerFactory
from tests.realtime.support import Peer


async def _user(db: asyncpg.Pool[Any], user_id: uuid.UUID) -> User:
    user = await get_user(db, user_id)
    assert user is not None
    return user


async def _peer(url: str, token: str) -> Peer:
    peer = Peer()
    await peer.connect(url, token)
    return peer


async def test_chat_and_rtc_only_while_active(
    start_server: ServerFactory,
    db: asyncpg.Pool[Any],
    settings: Settings,
) -> None:
    """Hole 1: the astrologer accepted and joined, the user did not: chat and rtc:* are refused
    (`not_active`), nothing is stored or relayed; once both joined they work."""
    url, _ = await start_server(billing_minute_seconds=60.0)
    s = await accepted_consultation(db)
    await db.execute("UPDATE consultations SET type = 'voice' WHERE id = $1", s.id)
    user, astro = await _user(db, s.user_id), await _user(db, s.astrologer_id)
    a = await _peer(url, await token_for(db, settings, astro))
    u = await _peer(url, await token_for(db, settings, user))
    join = {"consultation_id": str(s.id)}
    try:
        assert (await a.call("consultation:join", join))["ok"]
        sent = await a.call("chat:send", {**join, "client_msg_id": "m1", "text": "free chat?"})
        assert sent["ok"] is False, sent
        assert sent["error"]["code"] == "not_active"
        offer = await a.call("rtc:offer", {**join, "sdp": "v=0", "type": "offer"})
        assert offer["ok"] is False, offer
        assert offer["error"]["code"] == "not_active"
        assert (
            await db.fetchval("SELECT count(*) FROM chat_messages WHERE consultation_id = $1", s.id)
            == 0
        )
        assert (await u.call("consultation:join", join))["ok"]  # both joined: active
        await wait_for(lambda: _status(db, s.id, "active"))
        sent = await a.call("chat:send", {**join, "client_msg_id": "m2", "text": "hello"})
        assert sent["ok"], sent
        offer = await a.call("rtc:offer", {**join, "sdp": "v=0", "type": "offer"})
        assert offer["ok"], offer
        await u.wait_for("rtc:offer", lambda es: len(es) == 1)
        assert "rtc:offer" not in a.events
    finally:
        await a.close()
        await u.close()


async def test_join_timeout_misses_an_accepted_consultation_and_frees_the_astrologer(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """Hole 1: an accepted consultation nobody starts is `missed` after JOIN_TIMEOUT_SECONDS, by
    its delayed job (scheduled at the acceptance) or by the sweep; the astrologer is free."""
    services.settings.join_timeout_seconds = 0.3
    user = await make_user(db)
    astro = await make_astrologer(db)
    await fund(db, user.id, 100_000)
    await presence.set_status(services, astro.id, "online")
    c = await lifecycle.request(services, user_id=user.id, astrologer_id=astro.id, type_="chat")
    c = await lifecycle.accept(services, consultation_id=c.id, astrologer_id=astro.id)
    job = await services.redis.zscore("arq:queue", f"consultation:unstarted:{c.id}")
    assert job is not None, "the join timeout job was not queued"
    assert await presence.get_status(services.redis, astro.id) == "busy"
    assert await session.expire_unstarted(services, c.id) == "not due"
    await asyncio.sleep(0.35)
    assert await session.expire_unstarted(services, c.id) == "missed"
    row = await consultation(db, c.id)
    assert (row["status"], row["close_reason"]) == ("missed", "not started in time")
    assert await presence.get_status(services.redis, astro.id) == "online"
    # The astrologer can take the next request; the sweep path misses the next one too.
    c2 = await lifecycle.request(services, user_id=user.id, astrologer_id=astro.id, type_="chat")
    await lifecycle.accept(services, consultation_id=c2.id, astrologer_id=astro.id)
    await asyncio.sleep(0.35)
    assert (await lifecycle.sweep(services))["not_started"] == 1
    assert (await consultation(db, c2.id))["status"] == "missed"


async def test_either_side_can_end_an_accepted_consultation(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """Hole 1: the astrologer can end (reject) an accepted consultation, the user cancel it; the
    astrologer is free at once, not after the join timeout."""
    s = await accepted_consultation(db)
    await session.end_by_participant(services, s.id, s.astrologer_id)
    row = await consultation(db, s.id)
    assert (row["status"], row["closed_by"]) == ("rejected", s.astrologer_id)
    s2 = await accepted_consultation(db)
    await session.end_by_participant(services, s2.id, s2.user_id)
    assert (await consultation(db, s2.id))["status"] == "cancelled"
    # Ending it again is a no-op, not an error.
    await session.end_by_participant(services, s2.id, s2.astrologer_id)


async def test_an_expired_token_loses_the_socket_and_auth_refresh_extends_it(
    start_server: ServerFactory,
    db: asyncpg.Pool[Any],
    settings: Settings,
) -> None:
    """Hole 2: a socket whose access token expires gets `auth:expired` and is disconnected within
    SOCKET_AUTH_CHECK_SECONDS; `auth:refresh` with a fresh token keeps another one alive."""
    url, app = await start_server(socket_auth_check_seconds=0.2, access_token_ttl_seconds=2)
    short = app_settings(app)
    user = await make_user(db)
    session_id = await db.fetchval(
        "INSERT INTO auth_sessions (user_id) VALUES ($1) RETURNING id", user.id
    )
    token = issue_access_token(short, user.id, user.role, session_id)
    expiring, refreshed = await _peer(url, token), await _peer(url, token)
    try:
        await asyncio.sleep(1.0)
        fresh = issue_access_token(short, user.id, user.role, session_id)
        answer = await refreshed.call("auth:refresh", {"token": fresh})
        assert answer["ok"], answer
        stranger = await make_user(db)
        theirs = await token_for(db, short, stranger)
        other = await refreshed.call("auth:refresh", {"token": theirs})
        assert other["ok"] is False
        assert other["error"]["code"] == "unauthorized"
        await expiring.wait_for("auth:expired", lambda es: len(es) == 1, wait=3)
        assert expiring.events["auth:expired"][0]["code"] == "token_expired"
        await _wait_disconnected(expiring)
        assert refreshed.sio.connected  # its new token runs for another 2 s
        assert "auth:expired" not in refreshed.events
    finally:
        await expiring.close()
        await refreshed.close()


async def test_block_and_logout_drop_open_sockets_at_once_on_every_process(
    start_server: ServerFactory,
    services: Services,
    db: asyncpg.Pool[Any],
    settings: Settings,
) -> None:
    """Hole 2 and 8: an admin block drops the person's sockets on another process at once (the
    periodic check is set far away); the blocked astrologer goes offline and cannot be
    requested; a logout drops that login's sockets only."""
    _, app1 = await start_server(socket_auth_check_seconds=600)
    url2, _ = await start_server(socket_auth_check_seconds=600)
    del app1
    astro = await make_astrologer(db)
    admin = await make_user(db, role="admin")
    a = await _peer(url2, await token_for(db, settings, astro))
    user = await make_user(db)
    await fund(db, user.id, 100_000)
    login_a = await token_for(db, settings, user)
    login_b = await token_for(db, settings, user)
    ua, ub = await _peer(url2, login_a), await _peer(url2, login_b)
    try:
        await wait_for(lambda: _online(services, astro.id))
        started = time.monotonic()
        await set_user_blocked(services, admin.id, astro.id, True, "fraud")
        await a.wait_for("auth:expired", lambda es: len(es) == 1, wait=3)
        assert a.events["auth:expired"][0]["code"] in ("account_blocked", "session_revoked")
        await _wait_disconnected(a)
        assert time.monotonic() - started < 3  # the pub/sub kick, not the 600 s check
        await wait_for(lambda: _offline(services, astro.id), within=3)
        with pytest.raises(AppError) as refused:
            await lifecycle.request(services, user_id=user.id, astrologer_id=astro.id, type_="chat")
        assert refused.value.code in ("not_found", "astrologer_offline")
        # Logout of one login: that login's socket goes, the other stays.
        sid = await db.fetchval(
            "SELECT id FROM auth_sessions WHERE user_id = $1 ORDER BY created_at LIMIT 1", user.id
        )
        await revoke_session(services, sid, "logout")
        expired = [p for p in (ua, ub) if p.events.get("auth:expired")]
        await wait_for(lambda: _any_expired(ua, ub), within=3)
        expired = [p for p in (ua, ub) if p.events.get("auth:expired")]
        assert len(expired) == 1
    finally:
        for peer in (a, ua, ub):
            await peer.close()


async def test_no_false_disconnect_when_the_grace_is_shorter_than_the_heartbeat(
    start_server: ServerFactory,
    db: asyncpg.Pool[Any],
    settings: Settings,
) -> None:
    """Hole 3: grace 0.3 s, heartbeat 10 s: with both sockets open the session stays active
    (before: ended `disconnected` after about the grace). Closing one socket ends it one grace
    after the close."""
    url, _ = await start_server(
        disconnect_grace_seconds=0.3, realtime_heartbeat_seconds=10.0, billing_minute_seconds=1.0
    )
    s = await accepted_consultation(db, wallet=100_000)
    user, astro = await _user(db, s.user_id), await _user(db, s.astrologer_id)
    u = await _peer(url, await token_for(db, settings, user))
    a = await _peer(url, await token_for(db, settings, astro))
    join = {"consultation_id": str(s.id)}
    try:
        assert (await u.call("consultation:join", join))["ok"]
        assert (await a.call("consultation:join", join))["ok"]
        await u.wait_for("session:started", lambda es: len(es) == 1)
        await asyncio.sleep(2.5)
        assert (await consultation(db, s.id))["status"] == "active"
        closed = time.time()
        await u.close()
        await wait_for(lambda: _status(db, s.id, "completed"), within=5)
        row = await consultation(db, s.id)
        assert row["end_reason"] == "disconnected"
        assert closed + 0.3 - 0.1 <= row["ended_at"].timestamp() <= closed + 0.3 + 0.5
    finally:
        await u.close()
        await a.close()


async def test_settings_that_cannot_work_are_refused_at_start(settings: Settings) -> None:
    with pytest.raises(ValueError, match="SOCKET_AUTH_CHECK_SECONDS"):
        Settings(**{**settings.model_dump(), "socket_auth_check_seconds": 10_000.0})
    with pytest.raises(ValueError, match="REALTIME_HEARTBEAT_SECONDS"):
        Settings(**{**settings.model_dump(), "realtime_heartbeat_seconds": 0.0})


async def test_the_astrologer_never_gets_the_users_money(
    start_server: ServerFactory,
    db: asyncpg.Pool[Any],
    settings: Settings,
) -> None:
    """Hole 7: the astrologer's `session:*` carry the minute and their earnings; the user's
    balance and minutes left go to the user only."""
    url, _ = await start_server(billing_minute_seconds=0.5)
    s = await accepted_consultation(db, wallet=500, rate=100)  # low balance from the start
    user, astro = await _user(db, s.user_id), await _user(db, s.astrologer_id)
    u = await _peer(url, await token_for(db, settings, user))
    a = await _peer(url, await token_for(db, settings, astro))
    join = {"consultation_id": str(s.id)}
    try:
        assert (await u.call("consultation:join", join))["ok"]
        assert (await a.call("consultation:join", join))["ok"]
        await a.wait_for("session:ended", lambda es: len(es) == 1, wait=10)
        await u.wait_for("session:ended", lambda es: len(es) == 1, wait=10)
        for event in ("session:started", "session:tick", "session:low_balance", "session:ended"):
            assert a.events[event], event
            for payload in [*a.events[event], *u.events[event]]:  # both copies: the contract
                events.BY_NAME[event].model_validate(payload)
            for payload in a.events[event]:
                assert "balance" not in payload, (event, payload)
                assert "minutes_left" not in payload, (event, payload)
        assert [t["earned"] for t in a.events["session:tick"]] == [60] * 5
        assert a.events["session:ended"][0]["earned"] == 300
        assert u.events["session:tick"][-1]["balance"] == 0
        assert "earned" not in u.events["session:tick"][0]
    finally:
        await u.close()
        await a.close()


async def test_one_open_instant_request_per_user(services: Services, db: asyncpg.Pool[Any]) -> None:
    """Hole 9: one balance no longer covers several open requests."""
    user = await make_user(db)
    await fund(db, user.id, 100_000)
    first, second = await make_astrologer(db), await make_astrologer(db)
    for astro in (first, second):
        await presence.set_status(services, astro.id, "online")
    c = await lifecycle.request(services, user_id=user.id, astrologer_id=first.id, type_="chat")
    with pytest.raises(AppError) as refused:
        await lifecycle.request(services, user_id=user.id, astrologer_id=second.id, type_="chat")
    assert refused.value.code == "open_request_exists"
    await lifecycle.cancel(services, consultation_id=c.id, user_id=user.id)
    await lifecycle.request(services, user_id=user.id, astrologer_id=second.id, type_="chat")
    # Two at once: the unique index lets one through.
    other = await make_user(db)
    await fund(db, other.id, 100_000)
    await lifecycle.cancel(
        services,
        consultation_id=await db.fetchval(
            "SELECT id FROM consultations WHERE user_id = $1 AND status = 'requested'", user.id
        ),
        user_id=user.id,
    )
    third = await make_astrologer(db)
    await presence.set_status(services, third.id, "online")
    results = await asyncio.gather(
        lifecycle.request(services, user_id=other.id, astrologer_id=first.id, type_="chat"),
        lifecycle.request(services, user_id=other.id, astrologer_id=third.id, type_="chat"),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert getattr(errors[0], "code", None) == "open_request_exists"


def app_settings(app: Any) -> Settings:
    value: Settings = app[SETTINGS]
    return value


async def _status(db: asyncpg.Pool[Any], cid: uuid.UUID, status: str) -> bool:
    return bool(
        await db.fetchval("SELECT status = $2 FROM consultations WHERE id = $1", cid, status)
    )


async def _online(services: Services, astro_id: uuid.UUID) -> bool:
    return await presence.get_status(services.redis, astro_id) == "online"


async def _offline(services: Services, astro_id: uuid.UUID) -> bool:
    return await presence.get_status(services.redis, astro_id) == "offline"


async def _any_expired(*peers: Peer) -> bool:
    return any(p.events.get("auth:expired") for p in peers)


async def _wait_disconnected(peer: Peer, within: float = 3) -> None:
    deadline = time.monotonic() + within
    while peer.sio.connected:
        if time.monotonic() > deadline:
            raise AssertionError("the socket was not disconnected")
        await asyncio.sleep(0.05)
