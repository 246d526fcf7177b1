"""Issue 14: rate limits of costly REST routes (core/ratelimit.py), declared on the route."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.framework import ROUTE_SPECS
from astrolive.app import create_app
from core import ratelimit
from core.errors import RateLimited
from core.services import Services
from core.settings import Settings
from tests.conftest import make_settings
from tests.factories import auth, make_astrologer, make_user

Client = TestClient[Any, Any]
AVATAR = {"content_type": "image/png", "size": 1000}

# Every route that must carry a limit (issue 14's list), by method and path; a route of a module
# another issue adds later is checked once it exists.
MUST_BE_LIMITED = {
    ("POST", "/v1/consultations"),
    ("POST", "/v1/consultations/{id}/review"),
    ("POST", "/v1/consultations/{id}/complaint"),
    ("POST", "/v1/wallet/recharges"),
    ("POST", "/v1/payments/razorpay/verify"),
    ("POST", "/v1/me/avatar"),
    ("POST", "/v1/astrologer/documents"),
    ("POST", "/v1/consultations/{id}/attachments"),
    ("POST", "/v1/consultations/{id}/tips"),
    ("POST", "/v1/support/tickets"),
    ("POST", "/v1/support/tickets/{id}/messages"),
    ("POST", "/v1/questions"),
    ("POST", "/v1/questions/{id}/review"),
    ("POST", "/v1/astrologer/payouts"),
}


def test_costly_routes_declare_a_limit_and_the_openapi_shows_it(app: Any) -> None:
    from api import openapi

    specs = app[ROUTE_SPECS]
    present = {(s.method, s.path): s for s in specs}
    unlimited = [k for k in MUST_BE_LIMITED if k in present and present[k].rate_limit is None]
    assert unlimited == []
    assert ("POST", "/v1/consultations") in present
    doc = openapi.build(specs)
    op = doc["paths"]["/v1/consultations"]["post"]
    assert op["x-rate-limit"] == {
        "bucket": "consultation_request", "per_user": 10, "per_ip": 60, "window_seconds": 60,
    }  # fmt: skip
    assert "Retry-After" in op["responses"]["429"]["headers"]
    assert "Rate limit:" in op["description"]


async def test_per_user_limit_answers_429_with_retry_after(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    alice = await auth(db, settings, await make_user(db))
    bob = await auth(db, settings, await make_user(db))
    for _ in range(ratelimit.UPLOAD.per_user or 0):
        resp = await client.post("/v1/me/avatar", json=AVATAR, headers=alice)
        assert resp.status == 200, await resp.text()
    refused = await client.post("/v1/me/avatar", json=AVATAR, headers=alice)
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another account is not affected (loopback is exempt from the per-IP limit in the suite).
    assert (await client.post("/v1/me/avatar", json=AVATAR, headers=bob)).status == 200


async def test_refused_request_changes_nothing(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, redis_url: str
) -> None:
    user = await make_user(db)
    astro = await make_astrologer(db)
    headers = await auth(db, settings, user)
    # Fill the user's consultation-request window directly, as ten earlier requests would.
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        await redis.set(f"rl:consultation_request:u:{user.id}", 10, ex=60)
    finally:
        await redis.aclose()
    resp = await client.post(
        "/v1/consultations", json={"astrologer_id": str(astro.id), "type": "chat"}, headers=headers
    )
    assert resp.status == 429
    assert await db.fetchval("SELECT count(*) FROM consultations") == 0


@pytest.fixture
def limited(services: Services) -> Any:
    async def hit(limit: ratelimit.Limit, ip: str, user: Any = None, **over: Any) -> bool:
        settings = services.settings.model_copy(update=over)
        try:
            await ratelimit.hit(services.redis, settings, limit, user_id=user, ip=ip)
        except RateLimited:
            return False
        return True

    return hit


async def test_per_ip_limit_and_exempt_ips(limited: Any) -> None:
    limit = ratelimit.Limit("t_ip", per_user=None, window_seconds=60, per_ip=2)
    assert [await limited(limit, "203.0.113.1") for _ in range(3)] == [True, True, False]
    assert await limited(limit, "203.0.113.2")
    # Exempt addresses (CIDR) skip the per-IP count...
    ok = [await limited(limit, "10.1.2.3", rate_limit_exempt_ips=["10.0.0.0/8"]) for _ in range(5)]
    assert all(ok)


async def test_exempt_ip_still_has_the_per_user_limit(limited: Any) -> None:
    import uuid

    limit = ratelimit.Limit("t_user", per_user=2, window_seconds=60, per_ip=100)
    user = uuid.uuid4()
    exempt = {"rate_limit_exempt_ips": ["127.0.0.1"]}
    got = [await limited(limit, "127.0.0.1", user, **exempt) for _ in range(3)]
    assert got == [True, True, False]


async def test_concurrent_calls_cannot_pass_the_limit(limited: Any) -> None:
    limit = ratelimit.Limit("t_race", per_user=None, window_seconds=60, per_ip=5)
    results = await asyncio.gather(*[limited(limit, "198.51.100.9") for _ in range(20)])
    assert sum(results) == 5


async def test_limits_can_be_turned_off(limited: Any) -> None:
    limit = ratelimit.Limit("t_off", per_user=None, window_seconds=60, per_ip=1)
    assert all([await limited(limit, "198.51.100.10", rate_limits_enabled=False) for _ in range(3)])


async def test_per_ip_limit_through_trusted_proxy(
    aiohttp_client: Any, database_url: str, redis_url: str, tmp_path: Path, db: Any
) -> None:
    settings = make_settings(
        database_url, redis_url, tmp_path, trusted_proxies="127.0.0.1/32", rate_limit_exempt_ips=""
    )
    client: Client = await aiohttp_client(create_app(settings))
    per_ip = ratelimit.UPLOAD.per_ip or 0
    per_user = ratelimit.UPLOAD.per_user or 1
    users = [await auth(db, settings, await make_user(db)) for _ in range(per_ip // per_user + 1)]
    xff = {"X-Forwarded-For": "203.0.113.50"}
    statuses = []
    for headers in users:
        for _ in range(per_user):
            resp = await client.post("/v1/me/avatar", json=AVATAR, headers={**headers, **xff})
            statuses.append(resp.status)
    assert statuses[:per_ip] == [200] * per_ip
    assert set(statuses[per_ip:]) == {429}
    other = await client.post(
        "/v1/me/avatar", json=AVATAR, headers={**users[-1], "X-Forwarded-For": "203.0.113.51"}
    )
    # The refused calls counted nowhere: that user's own window is still empty.
    assert other.status == 200
