"""Async factories with keyword defaults. Each makes real rows through the real code paths."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from astrolive.demo import fund_wallet
from core.settings import Settings
from core.tokens import Role, issue_access_token
from db import identity

_phones = itertools.count(1)


def next_phone() -> str:
    """A fresh valid Indian mobile number for each call."""
    return f"+9198{next(_phones):08d}"


async def make_user(
    db: asyncpg.Pool[Any], *, role: Role = "user", phone: str | None = None, **fields: Any
) -> identity.User:
    user, _ = await identity.upsert_user(db, phone or next_phone(), role)
    if fields:
        sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(fields))
        await db.execute(f"UPDATE users SET {sets} WHERE id = $1", user.id, *fields.values())
        fetched = await identity.get_user(db, user.id)
        assert fetched is not None
        user = fetched
    return user


async def make_astrologer(
    db: asyncpg.Pool[Any],
    *,
    verification: str = "approved",
    display_name: str = "Test Astrologer",
    rates: tuple[int | None, int | None, int | None] = (1000, 1500, 2000),
    skills: list[str] | None = None,
    languages: list[str] | None = None,
    experience_years: int = 5,
    share_percent: int | None = None,
    phone: str | None = None,
) -> identity.User:
    user = await make_user(db, role="astrologer", phone=phone)
    await db.execute(
        """
        INSERT INTO astrologer_profiles (user_id, display_name, skills, languages,
            experience_years, rate_chat, rate_voice, rate_video, share_percent, verification,
            verified_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                CASE WHEN $10 = 'approved' THEN now() END)
        """,
        user.id, display_name, skills or ["vedic"], languages or ["en", "hi"], experience_years,
        *rates, share_percent, verification,
    )  # fmt: skip
    return user


async def fund(
    db: asyncpg.Pool[Any], user_id: uuid.UUID, amount: int, currency: str = "INR"
) -> None:
    """Credit a wallet through the ledger (from the promotions account)."""
    async with db.acquire() as conn:
        await fund_wallet(conn, user_id, amount, currency, f"test:fund:{uuid.uuid4()}")


async def token_for(db: asyncpg.Pool[Any], settings: Settings, user: identity.User) -> str:
    """An access token of a real login (an auth_sessions row), as sign-in would issue."""
    session_id = await db.fetchval(
        "INSERT INTO auth_sessions (user_id) VALUES ($1) RETURNING id", user.id
    )
    return issue_access_token(settings, user.id, user.role, session_id)


async def auth(db: asyncpg.Pool[Any], settings: Settings, user: identity.User) -> dict[str, str]:
    """`Authorization` headers for `user`."""
    return {"Authorization": f"Bearer {await token_for(db, settings, user)}"}


async def make_bookable_astrologer(db: asyncpg.Pool[Any], **fields: Any) -> identity.User:
    """An approved astrologer (₹10/15/20 a minute) bookable all day, every day, in UTC."""
    from consultations import booking

    astrologer = await make_astrologer(db, **fields)
    async with db.acquire() as conn:
        await booking.set_availability(
            conn, astrologer.id, "UTC", [booking.Window(d, 0, 1440) for d in range(7)]
        )
    return astrologer


def slot_in(hours: float) -> datetime:
    """The start of the 30-minute slot about `hours` from now (UTC)."""
    at = datetime.now(UTC) + timedelta(hours=hours)
    return at.replace(minute=0 if at.minute < 30 else 30, second=0, microsecond=0)
