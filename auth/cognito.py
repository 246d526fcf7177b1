"""Cognito mode (AUTH_MODE=cognito): accept Amazon Cognito ID and access tokens instead of ours.

A token is accepted when it is RS256, signed by a key of the user pool's JWKS (found by `kid`),
issued by `https://cognito-idp.{region}.amazonaws.com/{pool}`, not expired, and either an ID token
(`token_use` "id", `aud` = our app client id) or an access token (`token_use` "access",
`client_id` = our app client id) - the checks AWS documents for verifying Cognito JWTs.

The JWKS document is cached in Redis for every process (an hour); a token with an unknown `kid`
causes at most one refetch per COGNITO_JWKS_REFETCH_SECONDS (Cognito publishes a new key before
using it).
The Cognito `sub` maps to a local user through `users.cognito_sub`; the first ID token of a new
`sub` links it by its verified `phone_number` (registering the phone if new). Access tokens carry no
phone, so an access token of a `sub` never seen with an ID token is refused (`unknown_user`).
Cognito principals have no local login (`session_id` None); blocking is checked per user.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from typing import Any

import aiohttp
import jwt

from auth import keys
from core.errors import AppError, ServiceUnavailable, Unauthorized
from core.phones import normalise_phone
from core.services import Services
from core.settings import Settings
from core.tokens import ROLES, Principal, Role
from db import identity

log = logging.getLogger(__name__)

ALGORITHM = "RS256"  # Cognito signs with RS256 only; anything else is refused before any key lookup

USER_BY_SUB = "SELECT id, role, status FROM users WHERE cognito_sub = $1"
# Links a Cognito identity to the account of its phone, unless that account is already linked to
# another Cognito identity (the UNIQUE on cognito_sub is the last word).
LINK_SUB = """
UPDATE users SET cognito_sub = $2, updated_at = now()
 WHERE id = $1 AND (cognito_sub IS NULL OR cognito_sub = $2)
RETURNING id, role, status
"""


def issuer(settings: Settings) -> str:
    return (
        f"https://cognito-idp.{settings.cognito_region or settings.aws_region}.amazonaws.com/"
        f"{settings.cognito_user_pool_id}"
    )


def jwks_url(settings: Settings) -> str:
    return settings.cognito_jwks_url or issuer(settings) + "/.well-known/jwks.json"


@functools.lru_cache(maxsize=64)
def _public_key(jwk_json: str) -> Any:
    """Parsing an RSA key costs more than verifying with it; one JWK text gives one key."""
    return jwt.PyJWK(json.loads(jwk_json), algorithm=ALGORITHM).key


def _find_key(document: str | None, kid: str) -> Any | None:
    if not document:
        return None
    try:
        for jwk in json.loads(document).get("keys", []):
            if isinstance(jwk, dict) and jwk.get("kid") == kid:
                return _public_key(json.dumps(jwk, sort_keys=True))
    except (ValueError, AttributeError, jwt.PyJWTError):
        log.warning("cognito JWKS document or key is malformed")
    return None


async def _fetch_jwks(services: Services) -> str:
    url = jwks_url(services.settings)
    try:
        async with services.http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            resp.raise_for_status()
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("cognito JWKS fetch failed", extra={"url": url, "error": repr(exc)})
        raise ServiceUnavailable("cannot verify sign-in tokens right now") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ServiceUnavailable("cannot verify sign-in tokens right now")
    document = json.dumps(data)
    await services.redis.set(keys.COGNITO_JWKS, document, ex=keys.COGNITO_JWKS_TTL_SECONDS)
    return document


async def signing_key(services: Services, kid: str) -> Any | None:
    """The pool's public key `kid`, from the cached JWKS or a (rate-limited) refetch."""
    document = await services.redis.get(keys.COGNITO_JWKS)
    key = _find_key(document, kid)
    if key is not None:
        return key
    if document is None or await services.redis.set(
        keys.COGNITO_JWKS_REFETCH_LOCK, "1", nx=True, ex=keys.COGNITO_JWKS_REFETCH_SECONDS
    ):
        return _find_key(await _fetch_jwks(services), kid)
    return None


async def verify_cognito_token(services: Services, token: str) -> dict[str, Any]:
    """The verified claims of a Cognito ID or access token; 401 `invalid_token` otherwise."""
    settings = services.settings
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc
    if header.get("alg") != ALGORITHM or not isinstance(header.get("kid"), str):
        raise Unauthorized("invalid access token", code="invalid_token")
    key = await signing_key(services, header["kid"])
    if key is None:
        raise Unauthorized("unknown signing key", code="invalid_token")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=issuer(settings),
            options={"verify_aud": False, "require": ["exp", "iat", "sub", "iss", "token_use"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("access token expired", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc
    use = claims.get("token_use")
    client = settings.cognito_client_id
    if use == "id":
        aud = claims.get("aud")
        ok = aud == client or (isinstance(aud, list) and client in aud)
    elif use == "access":
        ok = claims.get("client_id") == client
    else:
        ok = False
    if not ok or not client:
        raise Unauthorized("token is not for this app", code="invalid_token")
    return claims


async def _local_user(services: Services, claims: dict[str, Any]) -> tuple[uuid.UUID, Role]:
    sub = str(claims["sub"])
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(USER_BY_SUB, sub)
        if row is None:
            phone_raw = claims.get("phone_number")
            verified = claims.get("phone_number_verified") in (True, "true")
            if claims.get("token_use") != "id" or not phone_raw or not verified:
                raise Unauthorized(
                    "no account for this Cognito user yet; send its ID token first",
                    code="unknown_user",
                )
            try:
                phone = normalise_phone(str(phone_raw), services.settings.default_phone_region)
            except AppError as exc:
                raise Unauthorized("invalid phone number in token", code="invalid_token") from exc
            user, _ = await identity.upsert_user(conn, phone, "user")
            row = await conn.fetchrow(LINK_SUB, user.id, sub)
            if row is None:
                raise Unauthorized(
                    "this phone is linked to another Cognito user", code="invalid_token"
                )
    role = row["role"]
    assert role in ROLES
    return row["id"], role


async def principal_from_cognito(services: Services, token: str) -> Principal:
    """Verify a Cognito token and map it to the local user (cached `sub` -> user for 60 s).
    Blocking is checked by the authenticator, per user, on every call."""
    claims = await verify_cognito_token(services, token)
    cache_key = keys.cognito_user(str(claims["sub"]))
    cached = await services.redis.get(cache_key)
    if cached:
        user_id, _, role = str(cached).partition(" ")
        if role in ROLES:
            return Principal(uuid.UUID(user_id), role, None)
    uid, local_role = await _local_user(services, claims)
    await services.redis.set(cache_key, f"{uid} {local_role}", ex=keys.COGNITO_USER_TTL_SECONDS)
    return Principal(uid, local_role, None)
