"""Logins (`auth_sessions`) and their rotating refresh tokens (`refresh_tokens`).

A successful OTP verify opens a login and issues a pair: a short-lived JWT access token carrying
the login id (`sid`) and an opaque refresh token stored only as its SHA-256. Each refresh marks the
presented token rotated and issues a new one in one locked transaction; presenting a rotated token
again means it was stolen or replayed, so the whole login is revoked (`token_reused`). Revoking a
login writes a "revoked" mark to Redis right after the commit, so its access tokens are refused at
once by `auth.authenticator.authenticate`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from redis.exceptions import RedisError

from auth import crypto, keys
from core.errors import Unauthorized
from core.services import Services
from core.settings import Settings
from core.tokens import issue_access_token
from db import identity
from db.pool import Conn, Executor

log = logging.getLogger(__name__)

INSERT_SESSION = """
INSERT INTO auth_sessions (user_id, user_agent, ip) VALUES ($1, $2, $3::inet) RETURNING id
"""
INSERT_REFRESH = """
INSERT INTO refresh_tokens (session_id, token_hash, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
"""
# Locks the token and its login: two refreshes of one token, or a refresh racing a logout, run one
# after the other, so exactly one of two concurrent refreshes wins and the other is reuse.
LOCK_REFRESH = """
SELECT r.id, r.session_id, s.user_id,
       r.rotated_at IS NOT NULL AS rotated,
       r.expires_at <= now() AS expired,
       s.revoked_at IS NOT NULL AS revoked,
       u.status
  FROM refresh_tokens r
  JOIN auth_sessions s ON s.id = r.session_id
  JOIN users u ON u.id = s.user_id
 WHERE r.token_hash = $1
   FOR UPDATE OF r, s
"""
MARK_ROTATED = "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1"
TOUCH_SESSION = "UPDATE auth_sessions SET last_used_at = now() WHERE id = $1"
REVOKE_SESSION = """
UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2
 WHERE id = $1 AND revoked_at IS NULL
"""
REVOKE_BY_REFRESH = """
UPDATE auth_sessions s SET revoked_at = now(), revoked_reason = $2
  FROM refresh_tokens r
 WHERE r.token_hash = $1 AND s.id = r.session_id AND s.revoked_at IS NULL
RETURNING s.id
"""
REVOKE_USER_SESSIONS = """
UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2
 WHERE user_id = $1 AND revoked_at IS NULL
RETURNING id
"""


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: uuid.UUID


@dataclass(frozen=True)
class SignIn:
    tokens: TokenPair
    user: identity.User
    is_new_user: bool


def _inet(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


async def _new_refresh_txn(conn: Conn, settings: Settings, session_id: uuid.UUID) -> str:
    token = crypto.new_refresh_token()
    await conn.execute(
        INSERT_REFRESH,
        session_id,
        crypto.refresh_token_hash(token),
        float(settings.refresh_token_ttl_seconds),
    )
    return token


async def open_login_txn(
    conn: Conn,
    settings: Settings,
    user: identity.User,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
) -> TokenPair:
    """A new login for `user` and its first token pair. Run inside the caller's transaction."""
    session_id: uuid.UUID = await conn.fetchval(
        INSERT_SESSION, user.id, (user_agent or "")[:300] or None, _inet(ip)
    )
    refresh = await _new_refresh_txn(conn, settings, session_id)
    access = issue_access_token(settings, user.id, user.role, session_id)
    return TokenPair(access, refresh, settings.access_token_ttl_seconds, session_id)


async def _rotate_txn(
    conn: Conn, settings: Settings, token_hash: bytes
) -> tuple[uuid.UUID, identity.User | None, str]:
    """(login, user, new refresh token); user None when the token was reused (login revoked)."""
    row = await conn.fetchrow(LOCK_REFRESH, token_hash)
    if row is None:
        raise Unauthorized("unknown refresh token", code="invalid_token")
    session_id: uuid.UUID = row["session_id"]
    if row["rotated"]:
        await conn.execute(REVOKE_SESSION, session_id, "refresh_token_reused")
        return session_id, None, ""
    if row["revoked"]:
        raise Unauthorized("this login was signed out", code="session_revoked")
    if row["status"] != "active":
        raise Unauthorized("this account is blocked", code="account_blocked")
    if row["expired"]:
        raise Unauthorized("refresh token expired", code="token_expired")
    await conn.execute(MARK_ROTATED, row["id"])
    await conn.execute(TOUCH_SESSION, session_id)
    new_refresh = await _new_refresh_txn(conn, settings, session_id)
    user = await identity.get_user(conn, row["user_id"])
    assert user is not None  # the join above found it
    return session_id, user, new_refresh


async def refresh_login(services: Services, refresh_token: str) -> SignIn:
    """Rotate `refresh_token`: a new pair, the old token dead. A rotated token presented again
    revokes the login and raises 401 `token_reused`."""
    settings = services.settings
    async with services.db.acquire() as conn, conn.transaction():
        session_id, user, new_refresh = await _rotate_txn(
            conn, settings, crypto.refresh_token_hash(refresh_token)
        )
    if user is None:
        await mark_sessions_revoked(services, [session_id])
        log.warning("refresh token reused; login revoked", extra={"session": str(session_id)})
        raise Unauthorized(
            "this refresh token was already used; the login is revoked", code="token_reused"
        )
    access = issue_access_token(settings, user.id, user.role, session_id)
    pair = TokenPair(access, new_refresh, settings.access_token_ttl_seconds, session_id)
    return SignIn(pair, user, is_new_user=False)


async def logout(services: Services, refresh_token: str) -> None:
    """Revoke the login `refresh_token` belongs to (rotated or not). Unknown tokens are ignored,
    as OAuth token revocation does (RFC 7009): the answer reveals nothing."""
    ids = [
        r["id"]
        for r in await services.db.fetch(
            REVOKE_BY_REFRESH, crypto.refresh_token_hash(refresh_token), "logout"
        )
    ]
    await mark_sessions_revoked(services, ids)


async def revoke_session(services: Services, session_id: uuid.UUID, reason: str) -> None:
    await services.db.execute(REVOKE_SESSION, session_id, reason)
    await mark_sessions_revoked(services, [session_id])


async def revoke_user_sessions_txn(
    conn: Executor, user_id: uuid.UUID, reason: str
) -> list[uuid.UUID]:
    """Revoke every open login of a user inside the caller's transaction. After the commit, pass
    the returned ids to `mark_sessions_revoked` so access tokens die at once, not at expiry."""
    return [r["id"] for r in await conn.fetch(REVOKE_USER_SESSIONS, user_id, reason)]


async def mark_sessions_revoked(services: Services, session_ids: Iterable[uuid.UUID]) -> None:
    """Tell every process that these logins are revoked (after the database commit). If Redis is
    down the database still says so: cached "ok" marks expire within SESSION_OK_TTL_SECONDS."""
    ttl = services.settings.access_token_ttl_seconds + keys.SESSION_REVOKED_MARGIN_SECONDS
    ids = list(session_ids)
    if not ids:
        return
    try:
        async with services.redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.set(keys.session_state(sid), "revoked", ex=ttl)
            await pipe.execute()
    except RedisError:
        log.warning("could not mark revoked logins in Redis", extra={"count": len(ids)})
    try:  # issue 12: open sockets of these logins are dropped at once, on every process
        await services.redis.publish(
            keys.AUTH_REVOKED_CHANNEL, json.dumps({"sessions": [str(i) for i in ids]})
        )
    except RedisError:
        log.warning("could not publish revoked logins", extra={"count": len(ids)})
