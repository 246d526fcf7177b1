"""Access tokens: short-lived JWTs signed with HS256 (algorithm pinned), with `kid` for rotation.

The web API and the Socket.IO layer both verify them here; sessions and refresh tokens, which need
the database, live in `db.identity`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Literal

import jwt

from core.errors import Unauthorized
from core.settings import Settings

Role = Literal["user", "astrologer", "admin"]
ROLES: tuple[Role, ...] = ("user", "astrologer", "admin")
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, their role and the login (auth session) the token belongs to."""

    user_id: uuid.UUID
    role: Role
    session_id: uuid.UUID | None


def _keys(settings: Settings) -> dict[str, str]:
    keys = {settings.jwt_key_id: settings.jwt_signing_secret()}
    for item in settings.jwt_previous_secrets:
        kid, sep, secret = item.partition("=")
        if sep and kid and secret:
            keys.setdefault(kid, secret)
    return keys


def issue_access_token(
    settings: Settings, user_id: uuid.UUID, role: Role, session_id: uuid.UUID | None
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "exp": now + settings.access_token_ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    return jwt.encode(
        claims,
        settings.jwt_signing_secret(),
        algorithm=ALGORITHM,
        headers={"kid": settings.jwt_key_id},
    )


def decode_access_token(settings: Settings, token: str) -> Principal:
    """Verify signature, algorithm, issuer, audience and expiry; raise `Unauthorized` otherwise."""
    try:
        header = jwt.get_unverified_header(token)
        secret = _keys(settings).get(str(header.get("kid", "")))
        if secret is None:
            raise Unauthorized("unknown signing key", code="invalid_token")
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("access token expired", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc
    role = claims.get("role")
    if role not in ROLES:
        raise Unauthorized("invalid access token", code="invalid_token")
    try:
        sid = uuid.UUID(claims["sid"]) if claims.get("sid") else None
        return Principal(uuid.UUID(claims["sub"]), role, sid)
    except (ValueError, TypeError) as exc:
        raise Unauthorized("invalid access token", code="invalid_token") from exc
