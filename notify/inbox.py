"""The in-app inbox: the SQL of the `notifications` table. Only `notify/` writes it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from db.pool import Conn, Executor
from notify import templates


@dataclass(frozen=True)
class Notification:
    id: uuid.UUID
    user_id: uuid.UUID
    event: str
    key: str
    locale: str
    title: str
    body: str
    data: dict[str, Any]
    read_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Notification:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


COLUMNS = "id, user_id, event, key, locale, title, body, data, read_at, created_at"

GET_RECIPIENT = "SELECT locale FROM users WHERE id = $1"
# ON CONFLICT: the same cause reported twice makes one notification (UNIQUE (user_id, key)).
INSERT_NOTIFICATION = """
INSERT INTO notifications (user_id, event, key, locale, title, body, data)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (user_id, key) DO NOTHING
RETURNING id
"""
GET_ID_BY_KEY = "SELECT id FROM notifications WHERE user_id = $1 AND key = $2"
# One delivery row per channel and target, made with the notification in one transaction: push to
# every registered device, e-mail only to an address its owner verified (issue 16: an unverified
# address may be a typo or someone else's).
INSERT_DELIVERIES = """
INSERT INTO notification_deliveries (notification_id, channel, target)
SELECT $1::uuid, 'push', push_token FROM devices WHERE user_id = $2
UNION ALL
SELECT $1::uuid, 'email', email FROM users
 WHERE id = $2 AND email IS NOT NULL AND email_verified_at IS NOT NULL
ON CONFLICT (notification_id, channel, target) DO NOTHING
"""
GET_NOTIFICATION = f"SELECT {COLUMNS} FROM notifications WHERE id = $1"
PAGE_FIRST = f"""
SELECT {COLUMNS} FROM notifications WHERE user_id = $1
 ORDER BY created_at DESC, id DESC LIMIT $2
"""
PAGE_AFTER = f"""
SELECT {COLUMNS} FROM notifications WHERE user_id = $1 AND (created_at, id) < ($3, $4)
 ORDER BY created_at DESC, id DESC LIMIT $2
"""
UNREAD_COUNT = "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL"
MARK_READ_IDS = """
UPDATE notifications SET read_at = now()
 WHERE user_id = $1 AND id = ANY($2::uuid[]) AND read_at IS NULL
"""
# Everything up to (and including) the given notification, in inbox order. The sub-select also
# proves the notification is the caller's: another person's id marks nothing and answers 404.
MARK_READ_UP_TO = """
WITH mark AS (SELECT created_at, id FROM notifications WHERE id = $2 AND user_id = $1),
upd AS (
    UPDATE notifications n SET read_at = now()
      FROM mark
     WHERE n.user_id = $1 AND n.read_at IS NULL
       AND (n.created_at, n.id) <= (mark.created_at, mark.id)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM mark) AS found, (SELECT count(*) FROM upd) AS updated
"""


def _jsonable(value: Any) -> Any:
    """Data is kept as JSON: ids, dates and the like are stored as their text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


async def record_txn(
    conn: Conn, user_id: uuid.UUID, event: str, data: Mapping[str, Any], key: str
) -> tuple[uuid.UUID, bool] | None:
    """Make the notification and its delivery rows in the caller's transaction.

    Returns its id and whether it is new (False: this `key` was notified before), or None when
    the user does not exist. Raises `KeyError`/`ValueError` for an unknown event or missing data.
    """
    locale = await conn.fetchval(GET_RECIPIENT, user_id)
    if locale is None:
        return None
    text = templates.render(event, locale, data)
    stored = {k: _jsonable(v) for k, v in data.items()}
    new_id = await conn.fetchval(
        INSERT_NOTIFICATION, user_id, event, key, text.locale, text.title, text.body, stored
    )
    if new_id is None:
        existing = await conn.fetchval(GET_ID_BY_KEY, user_id, key)
        assert existing is not None
        return existing, False
    await conn.execute(INSERT_DELIVERIES, new_id, user_id)
    return new_id, True


async def get(conn: Executor, notification_id: uuid.UUID) -> Notification | None:
    row = await conn.fetchrow(GET_NOTIFICATION, notification_id)
    return Notification.from_row(row) if row else None


async def page(
    conn: Executor,
    user_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Notification]:
    """Up to `limit` notifications, newest first, strictly older than `before` (keyset)."""
    if before is None:
        rows = await conn.fetch(PAGE_FIRST, user_id, limit)
    else:
        rows = await conn.fetch(PAGE_AFTER, user_id, limit, before[0], before[1])
    return [Notification.from_row(r) for r in rows]


async def unread_count(conn: Executor, user_id: uuid.UUID) -> int:
    return int(await conn.fetchval(UNREAD_COUNT, user_id))


async def mark_read(conn: Executor, user_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> int:
    """Mark the caller's notifications among `ids` read; others' ids are ignored. Count marked."""
    status = await conn.execute(MARK_READ_IDS, user_id, list(ids))
    return int(status.split()[-1])


async def mark_read_up_to(
    conn: Executor, user_id: uuid.UUID, notification_id: uuid.UUID
) -> int | None:
    """Mark read everything up to `notification_id`; None when it is not the caller's."""
    row = await conn.fetchrow(MARK_READ_UP_TO, user_id, notification_id)
    assert row is not None
    return int(row["updated"]) if row["found"] else None


@dataclass(frozen=True)
class InboxPage:
    items: list[Notification]
    has_more: bool
    unread_count: int


async def load_inbox(
    pool: asyncpg.Pool[Any],
    user_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> InboxPage:
    """One page of the inbox, newest first, with the unread count (use case of GET
    /v1/notifications)."""
    rows = await page(pool, user_id, limit + 1, before)
    return InboxPage(rows[:limit], len(rows) > limit, await unread_count(pool, user_id))
