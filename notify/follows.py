"""Who follows which astrologer: the SQL of the `follows` table. Only `notify/` writes it."""

from __future__ import annotations

import uuid

from db.pool import Executor

# One statement: follows only a verified astrologer, and says whether there is one (404 if not).
FOLLOW = """
WITH a AS (
    SELECT user_id FROM astrologer_profiles WHERE user_id = $2 AND verification = 'approved'
), ins AS (
    INSERT INTO follows (user_id, astrologer_id) SELECT $1, user_id FROM a WHERE user_id <> $1
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM a WHERE user_id <> $1)
"""
UNFOLLOW = "DELETE FROM follows WHERE user_id = $1 AND astrologer_id = $2"
FOLLOWERS_PAGE = """
SELECT user_id FROM follows WHERE astrologer_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3
"""
IS_FOLLOWING = "SELECT EXISTS (SELECT 1 FROM follows WHERE user_id = $1 AND astrologer_id = $2)"
DISPLAY_NAME = "SELECT display_name FROM astrologer_profiles WHERE user_id = $1"
_FIRST = uuid.UUID(int=0)


async def follow(conn: Executor, user_id: uuid.UUID, astrologer_id: uuid.UUID) -> bool:
    """Follow a verified astrologer (again: no change). False when there is no such astrologer."""
    return bool(await conn.fetchval(FOLLOW, user_id, astrologer_id))


async def unfollow(conn: Executor, user_id: uuid.UUID, astrologer_id: uuid.UUID) -> None:
    await conn.execute(UNFOLLOW, user_id, astrologer_id)


async def is_following(conn: Executor, user_id: uuid.UUID, astrologer_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval(IS_FOLLOWING, user_id, astrologer_id))


async def followers_page(
    conn: Executor, astrologer_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """Followers in user id order after `after` (keyset), for fan-out in pages."""
    rows = await conn.fetch(FOLLOWERS_PAGE, astrologer_id, after or _FIRST, limit)
    return [r["user_id"] for r in rows]


async def display_name(conn: Executor, astrologer_id: uuid.UUID) -> str | None:
    value = await conn.fetchval(DISPLAY_NAME, astrologer_id)
    return str(value) if value is not None else None
