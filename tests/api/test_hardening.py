"""Issue 14: /metrics behind a token, single-use upload URLs, TURN only for callers in a call,
rtc:echo caps, and an approved astrologer's risky changes going back to review."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core.errors import RateLimited
from core.services import Services
from core.settings import Settings
from realtime.echo_slots import EchoSlots
from tests.factories import auth, make_astrologer, make_user
from tests.realtime.support import make_consultation

Client = TestClient[Any, Any]
TOKEN = "m" * 40


# --- /metrics ---------------------------------------------------------------------------------


async def test_metrics_need_the_token_when_set(make_client: Any) -> None:
    client = await make_client(metrics_token=TOKEN)
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40})
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "invalid_token"
    ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    assert "http_requests_total" in await ok.text()


async def test_metrics_without_token_open_in_development_absent_in_production(
    make_client: Any,
) -> None:
    dev = await make_client()
    assert (await dev.get("/metrics")).status == 200
    prod = await make_client(astrolive_env="production", sms_provider="sns")
    resp = await prod.get("/metrics")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


# --- single-use upload URLs -------------------------------------------------------------------


def _local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_presigned_local_upload_works_once(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    headers = await auth(db, settings, await make_user(db))
    image = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    resp = await client.post(
        "/v1/me/avatar", json={"content_type": "image/png", "size": len(image)}, headers=headers
    )
    up = await resp.json()
    first = await client.put(_local(up["upload_url"]), data=image, headers=up["headers"])
    assert first.status == 200, await first.text()
    again = await client.put(
        _local(up["upload_url"]), data=b"y" * len(image), headers=up["headers"]
    )
    assert again.status == 403
    assert (await again.json())["error"]["code"] == "upload_url_used"
    me = await (await client.get("/v1/me", headers=headers)).json()
    assert await (await client.get(_local(me["avatar_url"]))).read() == image


async def test_two_concurrent_uploads_with_one_url_store_one(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    headers = await auth(db, settings, await make_user(db))
    size = 64
    resp = await client.post(
        "/v1/me/avatar", json={"content_type": "image/png", "size": size}, headers=headers
    )
    up = await resp.json()
    url = _local(up["upload_url"])
    results = await asyncio.gather(
        *[client.put(url, data=bytes([n]) * size, headers=up["headers"]) for n in range(4)]
    )
    assert sorted(r.status for r in results) == [200, 403, 403, 403]


# --- TURN credentials -------------------------------------------------------------------------


async def _ice(client: Client, headers: dict[str, str]) -> list[list[str]]:
    resp = await client.get("/v1/rtc/ice-servers", headers=headers)
    assert resp.status == 200
    return [s["urls"] for s in (await resp.json())["ice_servers"]]


@pytest.mark.parametrize(
    ("type_", "status", "turn"),
    [
        ("voice", "accepted", True),
        ("video", "active", True),
        ("chat", "active", False),
        ("video", "requested", False),
        ("voice", "completed", False),
    ],
)
async def test_turn_only_for_participants_of_a_live_call(
    make_client: Any, db: asyncpg.Pool[Any], type_: str, status: str, turn: bool
) -> None:
    client = await make_client(
        stun_urls="stun:stun.example.org:3478",
        turn_urls="turn:turn.example.org:3478",
        turn_secret="t" * 32,
    )
    stun, relay = ["stun:stun.example.org:3478"], ["turn:turn.example.org:3478"]
    user, astrologer, stranger = (
        await make_user(db), await make_astrologer(db), await make_user(db),
    )  # fmt: skip
    await make_consultation(db, user, astrologer, type_=type_, status=status)
    app_settings = _settings_of(client)
    for who in (user, astrologer):
        got = await _ice(client, await auth(db, app_settings, who))
        assert got == ([stun, relay] if turn else [stun])
    assert await _ice(client, await auth(db, app_settings, stranger)) == [stun]


def _settings_of(client: Client) -> Settings:
    from astrolive.app import SETTINGS

    assert client.app is not None
    settings: Settings = client.app[SETTINGS]
    return settings


# --- rtc:echo caps ----------------------------------------------------------------------------


async def test_echo_slots_per_user_and_per_process(services: Services) -> None:
    settings = services.settings.model_copy(
        update={"rtc_echo_max_per_user": 1, "rtc_echo_max_per_process": 2}
    )
    svc = _with_settings(services, settings)
    slots = EchoSlots()
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = await slots.acquire(svc, alice)
    with pytest.raises(RateLimited, match="already running"):
        await slots.acquire(svc, alice)
    # Another process (another EchoSlots) sees the same per-user count in Redis.
    with pytest.raises(RateLimited, match="already running"):
        await EchoSlots().acquire(svc, alice)
    second = await slots.acquire(svc, bob)
    with pytest.raises(RateLimited, match="busy on this server"):
        await slots.acquire(svc, carol)
    await first.release()
    await first.release()  # twice is harmless
    third = await slots.acquire(svc, carol)
    assert slots.running == 2
    await second.release()
    await third.release()
    assert slots.running == 0
    again = await slots.acquire(svc, alice)
    await again.release()


async def test_concurrent_echo_requests_of_one_user_get_one_slot(services: Services) -> None:
    settings = services.settings.model_copy(
        update={"rtc_echo_max_per_user": 1, "rtc_echo_max_per_process": 10}
    )
    svc = _with_settings(services, settings)
    slots = EchoSlots()
    user = uuid.uuid4()
    results = await asyncio.gather(
        *[slots.acquire(svc, user) for _ in range(6)], return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert slots.running == 1


def _with_settings(services: Services, settings: Settings) -> Services:
    import dataclasses

    return dataclasses.replace(services, settings=settings)


# --- an approved astrologer's changes ---------------------------------------------------------

PROFILE = {
    "display_name": "Test Astrologer",
    "bio": "Vedic astrology",
    "skills": ["vedic"],
    "languages": ["en", "hi"],
    "experience_years": 5,
    "rates": {"chat": 1000, "voice": 1500, "video": None},
}


@pytest.mark.parametrize(
    ("change", "verification"),
    [
        ({"bio": "new bio"}, "approved"),
        ({"rates": {"chat": 1200, "voice": 1500, "video": None}}, "approved"),  # +20 %: the step
        ({"rates": {"chat": 800, "voice": 1000, "video": None}}, "approved"),  # lower
        ({"rates": {"chat": 1201, "voice": 1500, "video": None}}, "pending"),  # above the step
        ({"rates": {"chat": 1000, "voice": 1500, "video": 2000}}, "pending"),  # newly offered
        ({"display_name": "Another Name"}, "pending"),
    ],
)
async def test_approved_profile_changes_and_review(
    client: Client,
    db: asyncpg.Pool[Any],
    settings: Settings,
    change: dict[str, Any],
    verification: str,
) -> None:
    astrologer = await make_astrologer(db, rates=(1000, 1500, None))
    headers = await auth(db, settings, astrologer)
    resp = await client.put("/v1/astrologer/profile", json={**PROFILE, **change}, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["verification"] == verification
    stored = await db.fetchval(
        "SELECT verification FROM astrologer_profiles WHERE user_id = $1", astrologer.id
    )
    assert stored == verification


async def test_approved_astrologer_new_photo_goes_back_to_review(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    astrologer = await make_astrologer(db)
    user = await make_user(db)
    for who in (astrologer, user):
        resp = await client.post(
            "/v1/me/avatar",
            json={"content_type": "image/png", "size": 10},
            headers=await auth(db, settings, who),
        )
        assert resp.status == 200
    assert (
        await db.fetchval(
            "SELECT verification FROM astrologer_profiles WHERE user_id = $1", astrologer.id
        )
        == "pending"
    )


async def test_rtc_echo_refused_past_the_process_cap(
    aiohttp_server: Any, database_url: str, redis_url: str, tmp_path: Any, db: asyncpg.Pool[Any]
) -> None:
    """The namespace asks for a slot before it builds a WebRTC peer (a cap of 0 refuses all)."""
    from astrolive.app import create_app
    from tests.conftest import make_settings
    from tests.factories import token_for
    from tests.realtime.support import Peer

    settings = make_settings(database_url, redis_url, tmp_path / "data", rtc_echo_max_per_process=0)
    server = await aiohttp_server(create_app(settings))
    peer = Peer()
    await peer.connect(
        str(server.make_url("")).rstrip("/"), await token_for(db, settings, await make_user(db))
    )
    try:
        ack = await peer.call(
            "rtc:echo", {"sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n", "type": "offer"}
        )
    finally:
        await peer.close()
    assert ack["ok"] is False
    assert ack["error"]["code"] == "rate_limited"
