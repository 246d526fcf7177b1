"""Helpers of the questions tests: an astrologer who takes questions, a funded user, the app."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from core.settings import Settings
from db import identity
from tests.factories import auth, fund, make_astrologer, make_user

PRICE = 5_000  # ₹50.00 a question


async def question_pair(
    db: asyncpg.Pool[Any],
    *,
    price: int | None = PRICE,
    funds: int = 20_000,
    share_percent: int | None = 60,
) -> tuple[identity.User, identity.User]:
    """(user, astrologer): an approved astrologer answering questions at `price`, a user with
    `funds` in the wallet."""
    astrologer = await make_astrologer(db, display_name="Pandit Rao", share_percent=share_percent)
    await db.execute(
        "UPDATE astrologer_profiles SET rate_question = $2 WHERE user_id = $1", astrologer.id, price
    )
    user = await make_user(db, name="Asha")
    if funds:
        await fund(db, user.id, funds)
    return user, astrologer


async def wallet(db: asyncpg.Pool[Any], user_id: uuid.UUID) -> tuple[int, int]:
    """(balance, held) of the user's INR wallet."""
    row = await db.fetchrow(
        "SELECT balance, held FROM accounts WHERE kind = 'user_wallet' AND owner_id = $1", user_id
    )
    return (row["balance"], row["held"]) if row else (0, 0)


async def earnings(db: asyncpg.Pool[Any], astrologer_id: uuid.UUID) -> int:
    value = await db.fetchval(
        "SELECT balance FROM accounts WHERE kind = 'astrologer_earnings' AND owner_id = $1",
        astrologer_id,
    )
    return int(value or 0)


async def headers(db: asyncpg.Pool[Any], settings: Settings, user: identity.User) -> dict[str, str]:
    return await auth(db, settings, user)
