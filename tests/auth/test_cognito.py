"""Cognito mode: tokens signed by a locally generated RSA key, the JWKS served on loopback."""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from astrolive.app import create_app
from tests.conftest import make_settings
from tests.factories import make_user

REGION, POOL, CLIENT_ID = "ap-south-1", "ap-south-1_TestPool", "test-app-client"
ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@functools.lru_cache
def _rsa_key(kid: str) -> rsa.RSAPrivateKey:
    """Generating a 2048-bit key takes up to a second; each kid gets one per test session."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Pool:
    """A fake user pool: RSA keys by kid, a JWKS endpoint on 127.0.0.1 that counts its hits."""

    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)
    hits: int = 0
    url: str = ""

    def add_key(self, kid: str, *, publish: bool = True) -> None:
        self.keys[kid] = _rsa_key(kid)
        if publish:
            self.published.add(kid)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in sorted(self.published):
            numbers = self.keys[kid].public_key().public_numbers()
            out.append(
                {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                 "n": _b64(numbers.n), "e": _b64(numbers.e)}
            )  # fmt: skip
        return {"keys": out}

    def token(self, kid: str = "k1", *, use: str = "id", **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": "cognito-sub-1",
            "iss": ISSUER,
            "iat": now,
            "exp": now + 3600,
            "token_use": use,
            "auth_time": now,
        }
        if use == "id":
            body |= {
                "aud": CLIENT_ID,
                "phone_number": "+919876500001",
                "phone_number_verified": True,
            }
        else:
            body |= {"client_id": CLIENT_ID, "scope": "openid", "username": "u1"}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    fake = Pool()
    fake.add_key("k1")

    async def jwks(request: web.Request) -> web.Response:
        fake.hits += 1
        return web.json_response(fake.jwks())

    app = web.Application()
    app.router.add_get(f"/{POOL}/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/{POOL}/.well-known/jwks.json"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def cognito_client(
    aiohttp_client: Any, database_url: str, redis_url: str, tmp_path: Path, pool: Pool
) -> TestClient[Any, Any]:
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path / "data",
        auth_mode="cognito",
        cognito_region=REGION,
        cognito_user_pool_id=POOL,
        cognito_client_id=CLIENT_ID,
        cognito_jwks_url=pool.url,
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return client


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _code(resp: Any) -> str:
    return str((await resp.json())["error"]["code"])


async def test_id_token_registers_and_links_the_phone(
    cognito_client: TestClient[Any, Any], pool: Pool, db: Any
) -> None:
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token()))
    assert resp.status == 200, await resp.text()
    me = await resp.json()
    assert me["phone"] == "+919876500001"
    assert me["role"] == "user"
    linked = await db.fetchval("SELECT cognito_sub FROM users WHERE id = $1", me["id"])
    assert linked == "cognito-sub-1"
    # The access token of the same Cognito user now maps to the same account.
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token(use="access")))
    assert resp.status == 200
    assert (await resp.json())["id"] == me["id"]


async def test_existing_phone_account_keeps_its_role(
    cognito_client: TestClient[Any, Any], pool: Pool, db: Any
) -> None:
    astrologer = await make_user(db, role="astrologer", phone="+919876500001")
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token()))
    body = await resp.json()
    assert body["id"] == str(astrologer.id)
    assert body["role"] == "astrologer"


async def test_access_token_of_unknown_user_is_refused(
    cognito_client: TestClient[Any, Any], pool: Pool
) -> None:
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token(use="access", sub="new")))
    assert resp.status == 401
    assert await _code(resp) == "unknown_user"


async def test_unverified_phone_is_refused(
    cognito_client: TestClient[Any, Any], pool: Pool
) -> None:
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token(phone_number_verified=False)))
    assert resp.status == 401


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("wrong aud", {"aud": "someone-else"}),
        ("no aud", {"aud": None}),
        ("wrong token_use", {"token_use": "refresh"}),
        ("id token claiming access", {"token_use": "access"}),
        ("wrong issuer", {"iss": "https://cognito-idp.us-east-1.amazonaws.com/other"}),
        ("expired", {"exp": int(time.time()) - 60, "iat": int(time.time()) - 3700}),
    ],
)
async def test_bad_tokens_are_refused(
    cognito_client: TestClient[Any, Any], pool: Pool, name: str, kwargs: dict[str, Any]
) -> None:
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token(**kwargs)))
    assert resp.status == 401, name
    if name == "expired":
        assert await _code(resp) == "token_expired"


async def test_access_token_for_another_client_is_refused(
    cognito_client: TestClient[Any, Any], pool: Pool
) -> None:
    await cognito_client.get("/v1/me", headers=_h(pool.token()))  # link the user first
    resp = await cognito_client.get(
        "/v1/me", headers=_h(pool.token(use="access", client_id="other-client"))
    )
    assert resp.status == 401


async def test_unknown_kid_and_foreign_keys_are_refused(
    cognito_client: TestClient[Any, Any], pool: Pool
) -> None:
    pool.add_key("unpublished", publish=False)
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token("unpublished")))
    assert resp.status == 401
    # A token signed by another key but claiming the published kid.
    forged = jwt.encode(
        jwt.decode(pool.token(), options={"verify_signature": False}),
        pool.keys["unpublished"],
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    resp = await cognito_client.get("/v1/me", headers=_h(forged))
    assert resp.status == 401
    # Algorithm confusion: HS256 with the public key as the secret.
    resp = await cognito_client.get(
        "/v1/me",
        headers=_h(jwt.encode({"sub": "x"}, "secret-" + "z" * 32, algorithm="HS256",
                              headers={"kid": "k1"})),
    )  # fmt: skip
    assert resp.status == 401


async def test_jwks_is_cached_and_refetched_once_for_a_new_kid(
    cognito_client: TestClient[Any, Any], pool: Pool
) -> None:
    for _ in range(3):
        assert (await cognito_client.get("/v1/me", headers=_h(pool.token()))).status == 200
    assert pool.hits == 1
    pool.add_key("k2")  # key rotation: published before use
    resp = await cognito_client.get("/v1/me", headers=_h(pool.token("k2")))
    assert resp.status == 200
    assert pool.hits == 2
    # Made-up kids right after do not make us hammer the endpoint.
    pool.add_key("bogus", publish=False)
    for _ in range(3):
        resp = await cognito_client.get("/v1/me", headers=_h(pool.token("bogus")))
        assert resp.status == 401
    assert pool.hits == 2


async def test_local_tokens_are_not_accepted_in_cognito_mode(
    cognito_client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    from tests.factories import auth

    user = await make_user(db)
    resp = await cognito_client.get("/v1/me", headers=await auth(db, settings, user))
    assert resp.status == 401
    resp = await cognito_client.post("/v1/auth/otp", json={"phone": "+919000000001"})
    assert resp.status == 409
    assert await _code(resp) == "auth_mode_cognito"


async def test_blocked_cognito_user_is_refused_at_once(
    cognito_client: TestClient[Any, Any], pool: Pool, db: Any
) -> None:
    token = pool.token()
    me = await (await cognito_client.get("/v1/me", headers=_h(token))).json()
    admin_sub = "cognito-admin"
    await make_user(db, role="admin", phone="+919876500009", cognito_sub=admin_sub)
    admin_token = pool.token(sub=admin_sub, phone_number="+919876500009")
    resp = await cognito_client.post(
        f"/v1/admin/users/{me['id']}/block", json={"reason": "abuse"}, headers=_h(admin_token)
    )
    assert resp.status == 200, await resp.text()
    resp = await cognito_client.get("/v1/me", headers=_h(token))
    assert resp.status == 401
    assert await _code(resp) == "account_blocked"
