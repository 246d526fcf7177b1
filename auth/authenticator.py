"""THE authenticator: every REST request and every Socket.IO connect goes through `authenticate`.

It verifies the access token (our own JWT, or a Cognito token when AUTH_MODE=cognito) and then
refuses, at once, a token whose login was revoked (logout, refresh-token reuse, block) or whose
user is blocked. JWTs cannot be recalled, so that second check asks:

1. Redis: `auth:session:{sid}` is "ok" or "revoked" (`auth:user:{id}` for tokens without a login,
   as in Cognito mode). One GET, shared by every process.
2. On a miss, PostgreSQL, the truth (`db.identity.session_active`): the answer is cached, "ok" for
   SESSION_OK_TTL_SECONDS (60 s) with SET NX, "revoked" until the access tokens have expired.

Revocations commit to PostgreSQL first and then overwrite the mark with "revoked" (plain SET).
Because "ok" is only ever written with NX, a check that read the database just before a revocation
cannot overwrite the newer "revoked": the revocation wins in every interleaving. If Redis is down,
every request asks PostgreSQL (logged); if Redis was down during a revocation, a cached "ok" can
survive at most 60 s. Losing Redis altogether (a restart) just means the database is asked again.
"""

from __future__ import annotations

import json
import logging
import uuid

from redis.exceptions import RedisError

from auth import keys
from auth.cognito import principal_from_cognito
from core.errors import Unauthorized
from core.services import Services
from core.tokens import Principal, decode_access_token
from db import identity

log = logging.getLogger(__name__)

USER_STATUS = "SELECT status FROM users WHERE id = $1"


async def authenticate(services: Services, token: str) -> Principal:
    """The caller of a request or socket: 401 for a missing, expired, forged or revoked token, or
    one whose user is blocked."""
    settings = services.settings
    if settings.auth_mode == "cognito":
        principal = await principal_from_cognito(services, token)
    else:
        principal = decode_access_token(settings, token)
    if principal.session_id is not None:
        await ensure_session_active(services, principal.session_id, principal.user_id)
    else:
        await ensure_user_active(services, principal.user_id)
    return principal


async def _cached(services: Services, key: str) -> tuple[str | None, bool]:
    """The cached state and whether Redis answered."""
    try:
        value = await services.redis.get(key)
    except RedisError:
        log.warning("redis unavailable for the login check; asking PostgreSQL")
        return None, False
    return (str(value) if value is not None else None), True


async def _remember(services: Services, key: str, value: str, ttl: int, *, nx: bool) -> None:
    try:
        await services.redis.set(key, value, ex=ttl, nx=nx)
    except RedisError:
        log.warning("redis unavailable; login state not cached")


async def ensure_session_active(
    services: Services, session_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    """401 `session_revoked` unless the login is open and its user active."""
    key = keys.session_state(session_id)
    state, redis_ok = await _cached(services, key)
    if state == "ok":
        return
    if state is None:
        if await identity.session_active(services.db, session_id, user_id):
            if redis_ok:
                await _remember(services, key, "ok", keys.SESSION_OK_TTL_SECONDS, nx=True)
            return
        if redis_ok:
            ttl = services.settings.access_token_ttl_seconds + keys.SESSION_REVOKED_MARGIN_SECONDS
            await _remember(services, key, "revoked", ttl, nx=False)
    raise Unauthorized("this login was signed out or the account blocked", code="session_revoked")


async def ensure_user_active(services: Services, user_id: uuid.UUID) -> None:
    """401 `account_blocked` unless the user exists and is active (tokens without a login)."""
    key = keys.user_state(user_id)
    state, redis_ok = await _cached(services, key)
    if state == "ok":
        return
    if state is None:
        status = await services.db.fetchval(USER_STATUS, user_id)
        if status == "active":
            if redis_ok:
                await _remember(services, key, "ok", keys.USER_OK_TTL_SECONDS, nx=True)
            return
        if redis_ok and status is not None:
            await _remember(services, key, "blocked", keys.USER_BLOCKED_TTL_SECONDS, nx=False)
    raise Unauthorized("this account is blocked", code="account_blocked")


async def mark_user_blocked(services: Services, user_id: uuid.UUID, blocked: bool) -> None:
    """After a block (or unblock) commits: refuse (or stop refusing) tokens without a login."""
    key = keys.user_state(user_id)
    try:
        if blocked:
            await services.redis.set(key, "blocked", ex=keys.USER_BLOCKED_TTL_SECONDS)
            # Issue 12: open sockets of this user are dropped at once, on every process.
            await services.redis.publish(
                keys.AUTH_REVOKED_CHANNEL, json.dumps({"user": str(user_id)})
            )
        else:
            await services.redis.delete(key)
    except RedisError:
        log.warning("redis unavailable; user state not updated (the database is right)")
