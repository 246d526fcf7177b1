"""POST /v1/auth/otp, /verify, /refresh, /logout as API.md says, on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from astrolive.app import create_app
from core.services import Services
from tests.auth.support import TEST_CODE, TEST_PHONE, bearer, run_jobs, sign_in, sms_codes
from tests.conftest import make_settings
from tests.factories import auth, make_user, next_phone

Client = TestClient[Any, Any]


@pytest.fixture
def make_client(aiohttp_client: Any, database_url: str, redis_url: str, tmp_path: Path) -> Any:
    async def build(**overrides: Any) -> Client:
        settings = make_settings(database_url, redis_url, tmp_path / "data", **overrides)
        client: Client = await aiohttp_client(create_app(settings))
        return client

    return build


async def _error(resp: Any) -> str:
    body = await resp.json()
    return str(body["error"]["code"])


@pytest.mark.parametrize(
    "notation",
    ["+91 90000 00001", "09000000001", "9000000001", "919000000001", "(+91) 90000-00001"],
)
async def test_any_notation_signs_in_to_one_e164_account(client: Client, notation: str) -> None:
    first = await sign_in(client, "+919000000001")
    assert first["is_new_user"] is True
    again = await sign_in(client, notation)
    assert again["is_new_user"] is False
    assert again["user"]["id"] == first["user"]["id"]
    assert again["user"]["phone"] == "+919000000001"
    assert again["token_type"] == "Bearer"
    assert again["expires_in"] == 15 * 60
    assert again["user"]["role"] == "user"
    me = await client.get("/v1/me", headers=bearer(again))
    assert me.status == 200
    assert (await me.json())["phone"] == "+919000000001"


async def test_real_code_goes_by_sms_job_and_signs_in(
    client: Client, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notify.sms")
    phone = next_phone()
    resp = await client.post("/v1/auth/otp", json={"phone": phone})
    assert resp.status == 202
    assert await resp.json() == {"expires_in": 300, "resend_after": 30}
    await run_jobs(services)
    codes = sms_codes(caplog, phone)
    assert len(codes) == 1
    code = codes[0]
    resp = await client.post("/v1/auth/verify", json={"phone": phone, "code": code})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["is_new_user"] is True
    assert body["refresh_token"]
    assert body["access_token"]
    # A code works once.
    resp = await client.post("/v1/auth/verify", json={"phone": phone, "code": code})
    assert resp.status == 401
    assert await _error(resp) == "otp_expired"


async def test_code_is_never_stored_in_clear(
    client: Client, services: Services, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notify.sms")
    phone = next_phone()
    await client.post("/v1/auth/otp", json={"phone": phone})
    redis = Redis.from_url(redis_url)
    try:
        dump = b""
        for key in await redis.keys("*"):
            kind = await redis.type(key)
            if kind == b"string":
                dump += await redis.get(key) or b""
            elif kind == b"hash":
                dump += b"".join(v for v in (await redis.hgetall(key)).values())
            elif kind == b"zset":
                dump += b"".join(m for m, _ in await redis.zrange(key, 0, -1, withscores=True))
    finally:
        await redis.aclose()
    await run_jobs(services)
    (code,) = sms_codes(caplog, phone)
    assert dump
    assert code.encode() not in dump


async def test_bad_phone_is_422(client: Client) -> None:
    for phone in ["12", "not a phone", "+91 12345", ""]:
        resp = await client.post("/v1/auth/otp", json={"phone": phone})
        assert resp.status == 422, phone
        assert "phone" in (await resp.json())["error"]["details"]["fields"]
    resp = await client.post("/v1/auth/otp", json={"phone": TEST_PHONE, "role": "admin"})
    assert resp.status == 422


async def test_wrong_code_is_invalid_otp(client: Client) -> None:
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    resp = await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": "000000"})
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "invalid_otp"
    assert body["error"]["details"]["attempts_left"] == 4
    # Without any code asked for: expired.
    resp = await client.post("/v1/auth/verify", json={"phone": next_phone(), "code": "123456"})
    assert await _error(resp) == "otp_expired"


async def test_sixth_attempt_after_five_wrong_is_otp_expired(client: Client) -> None:
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    for left in (4, 3, 2, 1, 0):
        resp = await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": "999999"})
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "invalid_otp"
        assert body["error"]["details"]["attempts_left"] == left
    resp = await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": TEST_CODE})
    assert resp.status == 401
    assert await _error(resp) == "otp_expired"
    # A new code works again.
    assert (await sign_in(client))["user"]["phone"] == TEST_PHONE


async def test_expired_code_is_refused(make_client: Any) -> None:
    client = await make_client(otp_ttl_seconds=1)
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    await asyncio.sleep(1.2)
    resp = await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": TEST_CODE})
    assert resp.status == 401
    assert await _error(resp) == "otp_expired"


async def test_resend_cooldown(client: Client) -> None:
    phone = next_phone()
    assert (await client.post("/v1/auth/otp", json={"phone": phone})).status == 202
    resp = await client.post("/v1/auth/otp", json={"phone": "0" + phone[3:]})  # same number
    assert resp.status == 429
    assert await _error(resp) == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 30


async def test_flood_from_one_phone_is_429(make_client: Any) -> None:
    client = await make_client(otp_resend_seconds=0, otp_max_per_phone_hour=3)
    phone = next_phone()
    for _ in range(3):
        assert (await client.post("/v1/auth/otp", json={"phone": phone})).status == 202
    resp = await client.post("/v1/auth/otp", json={"phone": phone})
    assert resp.status == 429
    assert await _error(resp) == "rate_limited"
    assert 3500 <= int(resp.headers["Retry-After"]) <= 3600
    # Other phones are not affected.
    assert (await client.post("/v1/auth/otp", json={"phone": next_phone()})).status == 202


async def test_flood_from_one_ip_is_429(make_client: Any) -> None:
    client = await make_client(otp_max_per_ip_hour=3)
    for _ in range(3):
        assert (await client.post("/v1/auth/otp", json={"phone": next_phone()})).status == 202
    resp = await client.post("/v1/auth/otp", json={"phone": next_phone()})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 3000
    # X-Forwarded-For from an untrusted peer is ignored: still the same client.
    resp = await client.post(
        "/v1/auth/otp", json={"phone": next_phone()}, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert resp.status == 429


async def test_ip_limit_uses_forwarded_for_from_trusted_proxy(make_client: Any) -> None:
    client = await make_client(otp_max_per_ip_hour=1, trusted_proxies="127.0.0.1/32")

    async def ask(ip: str) -> int:
        resp = await client.post(
            "/v1/auth/otp", json={"phone": next_phone()}, headers={"X-Forwarded-For": ip}
        )
        status: int = resp.status
        return status

    assert await ask("203.0.113.1") == 202
    assert await ask("203.0.113.2") == 202
    assert await ask("203.0.113.1") == 429


async def test_test_phones_skip_send_limits_but_wrong_codes_count(make_client: Any) -> None:
    client = await make_client(otp_max_per_phone_hour=1, otp_max_per_ip_hour=1)
    for _ in range(3):
        resp = await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
        assert resp.status == 202
        assert (await resp.json())["resend_after"] == 0
    for _ in range(5):
        await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": "111111"})
    resp = await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": TEST_CODE})
    assert await _error(resp) == "otp_expired"


async def test_role_on_first_request_decides_new_account_only(client: Client) -> None:
    answer = await sign_in(client, "+919000000002", role="astrologer")
    assert answer["user"]["role"] == "astrologer"
    answer = await sign_in(client, "+919000000002", role="user")
    assert answer["user"]["role"] == "astrologer"  # an existing account keeps its role
    answer = await sign_in(client, "+919000000003")
    assert answer["user"]["role"] == "user"


async def test_refresh_rotates_and_reuse_kills_the_login(client: Client) -> None:
    first = await sign_in(client)
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status == 200, await resp.text()
    second = await resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["is_new_user"] is False
    assert second["user"]["id"] == first["user"]["id"]
    assert (await client.get("/v1/me", headers=bearer(second))).status == 200

    # The rotated token presented again: reuse. The whole login dies.
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status == 401
    assert await _error(resp) == "token_reused"
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert resp.status == 401
    assert await _error(resp) == "session_revoked"
    for tokens in (first, second):
        resp = await client.get("/v1/me", headers=bearer(tokens))
        assert resp.status == 401
        assert await _error(resp) == "session_revoked"

    # Another login of the same person is untouched.
    other = await sign_in(client)
    assert (await client.get("/v1/me", headers=bearer(other))).status == 200


async def test_concurrent_refreshes_of_one_token_leave_one_winner(client: Client) -> None:
    tokens = await sign_in(client)
    answers = await asyncio.gather(
        *(
            client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            for _ in range(2)
        )
    )
    assert sorted(a.status for a in answers) == [200, 401]


async def test_unknown_refresh_token_is_401(client: Client) -> None:
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": "x" * 43})
    assert resp.status == 401
    assert await _error(resp) == "invalid_token"


async def test_expired_refresh_token_is_401(make_client: Any) -> None:
    client = await make_client(refresh_token_ttl_seconds=1)
    tokens = await sign_in(client)
    await asyncio.sleep(1.1)
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    assert await _error(resp) == "token_expired"


async def test_logout_ends_that_login(client: Client) -> None:
    tokens = await sign_in(client)
    other = await sign_in(client)
    resp = await client.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 204
    resp = await client.get("/v1/me", headers=bearer(tokens))
    assert resp.status == 401
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    assert (await client.get("/v1/me", headers=bearer(other))).status == 200
    # Logging out twice, or with an unknown token, reveals nothing.
    resp = await client.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 204


async def test_revocation_holds_when_redis_forgot_it(client: Client, redis_url: str) -> None:
    tokens = await sign_in(client)
    assert (await client.get("/v1/me", headers=bearer(tokens))).status == 200  # "ok" is cached
    await client.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushall()  # a Redis restart without persistence
    finally:
        await redis.aclose()
    resp = await client.get("/v1/me", headers=bearer(tokens))
    assert resp.status == 401  # PostgreSQL, the truth, is asked


async def test_blocked_user_is_refused_at_once(client: Client, db: Any, settings: Any) -> None:
    tokens = await sign_in(client)
    assert (await client.get("/v1/me", headers=bearer(tokens))).status == 200
    admin = await make_user(db, role="admin")
    resp = await client.post(
        f"/v1/admin/users/{tokens['user']['id']}/block",
        json={"reason": "fraud"},
        headers=await auth(db, settings, admin),
    )
    assert resp.status == 200, await resp.text()
    resp = await client.get("/v1/me", headers=bearer(tokens))
    assert resp.status == 401
    resp = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    resp = await client.post("/v1/auth/verify", json={"phone": TEST_PHONE, "code": TEST_CODE})
    assert resp.status == 403
    assert await _error(resp) == "account_blocked"
    audit = await db.fetchrow("SELECT * FROM audit_log WHERE action = 'user.block'")
    assert audit["actor_id"] == admin.id
    assert audit["reason"] == "fraud"
    assert audit["target_id"] == tokens["user"]["id"]

    resp = await client.post(
        f"/v1/admin/users/{tokens['user']['id']}/unblock",
        json={"reason": "appeal accepted"},
        headers=await auth(db, settings, admin),
    )
    assert resp.status == 200
    assert (await client.get("/v1/me", headers=bearer(tokens))).status == 401  # still revoked
    fresh = await sign_in(client)
    assert (await client.get("/v1/me", headers=bearer(fresh))).status == 200


async def test_admins_cannot_be_blocked_through_the_api(
    client: Client, db: Any, settings: Any
) -> None:
    admin = await make_user(db, role="admin")
    other = await make_user(db, role="admin")
    headers = await auth(db, settings, admin)
    resp = await client.post(
        f"/v1/admin/users/{other.id}/block", json={"reason": "x"}, headers=headers
    )
    assert resp.status == 409
    resp = await client.post(
        f"/v1/admin/users/{admin.id}/block", json={"reason": "x"}, headers=headers
    )
    assert resp.status == 409
    resp = await client.post(
        "/v1/admin/users/00000000-0000-0000-0000-000000000000/block",
        json={"reason": "x"},
        headers=headers,
    )
    assert resp.status == 404


async def test_forged_and_expired_access_tokens_are_401(
    client: Client, db: Any, settings: Any
) -> None:
    import jwt as pyjwt

    from core.tokens import issue_access_token

    user = await make_user(db)
    forged = issue_access_token(
        settings.model_copy(update={"jwt_secret": "another-secret-" + "y" * 32}),
        user.id,
        "admin",
        None,
    )
    resp = await client.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401
    claims = pyjwt.decode(
        (await auth(db, settings, user))["Authorization"].split()[1],
        options={"verify_signature": False},
    )
    assert claims["sid"]
    short = settings.model_copy(update={"access_token_ttl_seconds": -1})
    expired = issue_access_token(short, user.id, "user", None)
    resp = await client.get("/v1/me", headers={"Authorization": f"Bearer {expired}"})
    assert resp.status == 401
    assert await _error(resp) == "token_expired"
