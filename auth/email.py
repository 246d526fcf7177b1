"""A person's e-mail address: set by PATCH /v1/me, unverified until the signed link sent to it is
opened (`GET/POST /v1/me/email/verify?token=...`). Notifications go only to verified addresses
(notify/inbox.py).

The link's token is a JWT signed with the API's own secret, naming the account and the exact
address, valid EMAIL_VERIFY_TTL_SECONDS. It verifies only while the account still has that
address, so a link to an old address does nothing after a change.
"""

from __future__ import annotations

import logging
import time
import uuid
from urllib.parse import urlencode

import jwt

from core.errors import AppError
from core.services import Services
from core.settings import Settings
from db.pool import Executor
from notify import templates
from notify.channels.base import Message, SendError

log = logging.getLogger(__name__)

PURPOSE = "email_verify"
ALGORITHM = "HS256"


class InvalidVerification(AppError):
    status, code, message = 400, "invalid_token", "this verification link is invalid or expired"


# Changing the address (to another one or to none) makes it unverified; the same one keeps its
# state. Returns whether a verification mail is due (a new, or still unverified, address).
SET_EMAIL = """
UPDATE users SET
    email_verified_at = CASE WHEN email IS NOT DISTINCT FROM $2 THEN email_verified_at END,
    email = $2,
    updated_at = now()
 WHERE id = $1
RETURNING email, email_verified_at, locale
"""
VERIFY = """
UPDATE users SET email_verified_at = coalesce(email_verified_at, now()), updated_at = now()
 WHERE id = $1 AND email = $2
RETURNING email_verified_at
"""
SET_LOCALE = "UPDATE users SET locale = $2, updated_at = now() WHERE id = $1"
GET_STATE = "SELECT email, email_verified_at, locale FROM users WHERE id = $1"


def make_token(settings: Settings, user_id: uuid.UUID, email: str) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "email": email,
        "purpose": PURPOSE,
        "iat": now,
        "exp": now + settings.email_verify_ttl_seconds,
        "iss": settings.jwt_issuer,
    }
    return jwt.encode(claims, settings.jwt_signing_secret(), algorithm=ALGORITHM)


def read_token(settings: Settings, token: str) -> tuple[uuid.UUID, str]:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_signing_secret(),
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub", "email", "purpose"]},
        )
        if claims["purpose"] != PURPOSE:
            raise InvalidVerification()
        return uuid.UUID(str(claims["sub"])), str(claims["email"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidVerification() from exc


def verify_link(settings: Settings, token: str) -> str:
    query = urlencode({"token": token})
    return f"{settings.public_base_url.rstrip('/')}/v1/me/email/verify?{query}"


async def set_email(
    conn: Executor, user_id: uuid.UUID, email: str | None
) -> tuple[bool, str | None]:
    """Store the address; (whether a verification mail should go out, the account's locale)."""
    row = await conn.fetchrow(SET_EMAIL, user_id, email)
    if row is None:
        return False, None
    return row["email"] is not None and row["email_verified_at"] is None, row["locale"]


async def set_locale(conn: Executor, user_id: uuid.UUID, locale: str) -> None:
    await conn.execute(SET_LOCALE, user_id, locale)


async def verify(conn: Executor, settings: Settings, token: str) -> tuple[uuid.UUID, str]:
    """Mark the address of a valid link verified; `invalid_token` otherwise (forged, expired, or
    the account's address changed since)."""
    user_id, email = read_token(settings, token)
    if await conn.fetchval(VERIFY, user_id, email) is None:
        raise InvalidVerification()
    return user_id, email


async def send_verification(
    services: Services, user_id: uuid.UUID, email: str, locale: str | None
) -> bool:
    """Mail the link (SES, or the log in development) in the person's language. A failure is
    logged, not raised: the address is saved, and saving it again sends another link."""
    settings = services.settings
    link = verify_link(settings, make_token(settings, user_id, email))
    hours = max(1, settings.email_verify_ttl_seconds // 3600)
    text = templates.render(PURPOSE, locale, {"link": link, "hours": hours})
    message = Message(
        notification_id=uuid.uuid4(),
        event=PURPOSE,
        locale=text.locale,
        title=text.title,
        body=text.body,
        target=email,
    )
    try:
        await services.channels["email"].send(message)
    except SendError as exc:
        log.warning("verification e-mail not sent", extra={"reason": exc.reason})
        return False
    return True
