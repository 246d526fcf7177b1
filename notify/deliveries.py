"""Delivery state of each notification on each channel: the SQL of `notification_deliveries`.

How "at most one delivery per channel and target" holds when a job runs twice: a worker sends
only after flipping the row `queued -> sending` (or taking over a `sending` claim older than the
lease) with one conditional UPDATE, and marks it `sent` right after the provider answers. The
claim's `attempts` value fences the later writes, so a worker whose claim was taken over cannot
overwrite the new owner's outcome. The one window left: a worker that dies after the provider
accepted the message and before its `sent` UPDATE commits; the row's lease then expires and the
message is sent again. Push carries the notification id as its collapse key / tag, so a phone
shows such a repeat once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from db.pool import Executor

Channel = Literal["push", "sms", "email"]
Status = Literal["queued", "sending", "sent", "failed"]


@dataclass(frozen=True)
class Delivery:
    id: int
    notification_id: uuid.UUID
    channel: Channel
    target: str
    status: Status
    attempts: int
    reason: str | None
    provider_id: str | None
    claimed_at: datetime | None
    sent_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Delivery:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


COLUMNS = (
    "id, notification_id, channel, target, status, attempts, reason, provider_id, claimed_at, "
    "sent_at"
)
LIST_FOR = f"SELECT {COLUMNS} FROM notification_deliveries WHERE notification_id = $1 ORDER BY id"
# The check and the claim are one statement: of two workers, exactly one gets a row back.
CLAIM = """
UPDATE notification_deliveries
   SET status = 'sending', claimed_at = now(), attempts = attempts + 1, updated_at = now()
 WHERE id = $1
   AND (status = 'queued'
        OR (status = 'sending' AND claimed_at < now() - make_interval(secs => $2)))
RETURNING attempts
"""
MARK_SENT = """
UPDATE notification_deliveries
   SET status = 'sent', sent_at = now(), provider_id = $3, reason = NULL, updated_at = now()
 WHERE id = $1 AND status = 'sending' AND attempts = $2
"""
MARK_FAILED = """
UPDATE notification_deliveries SET status = 'failed', reason = $3, updated_at = now()
 WHERE id = $1 AND status = 'sending' AND attempts = $2
"""
# A transient error: give the row back for the next try, remembering why.
RELEASE = """
UPDATE notification_deliveries
   SET status = 'queued', claimed_at = NULL, reason = $3, updated_at = now()
 WHERE id = $1 AND status = 'sending' AND attempts = $2
"""
# Notifications whose deliveries no job will pick up on its own: never tried (the enqueue after
# the commit was lost), or claimed by a job that arq will not run again (it hit its timeout, which
# arq counts as a failure, not a retry). A killed worker's claim also shows up here after a while;
# enqueueing it again is harmless (claims).
ABANDONED = """
SELECT DISTINCT notification_id FROM notification_deliveries
 WHERE (status = 'queued' AND attempts = 0 AND created_at < now() - make_interval(secs => $1))
    OR (status = 'sending' AND claimed_at < now() - make_interval(secs => $3))
 LIMIT $2
"""


async def list_for(conn: Executor, notification_id: uuid.UUID) -> list[Delivery]:
    return [Delivery.from_row(r) for r in await conn.fetch(LIST_FOR, notification_id)]


async def claim(conn: Executor, delivery_id: int, lease_seconds: float) -> int | None:
    """Claim a delivery for sending; its fencing number (attempts), or None when not claimable."""
    value = await conn.fetchval(CLAIM, delivery_id, float(lease_seconds))
    return int(value) if value is not None else None


async def _fenced(conn: Executor, sql: str, delivery_id: int, fence: int, text: str | None) -> bool:
    status = await conn.execute(sql, delivery_id, fence, text)
    return status.endswith(" 1")


async def mark_sent(conn: Executor, delivery_id: int, fence: int, provider_id: str | None) -> bool:
    return await _fenced(conn, MARK_SENT, delivery_id, fence, provider_id)


async def mark_failed(conn: Executor, delivery_id: int, fence: int, reason: str) -> bool:
    return await _fenced(conn, MARK_FAILED, delivery_id, fence, reason[:500])


async def release(conn: Executor, delivery_id: int, fence: int, reason: str) -> bool:
    return await _fenced(conn, RELEASE, delivery_id, fence, reason[:500])


async def abandoned(
    conn: Executor, unqueued_seconds: float, stale_claim_seconds: float, limit: int
) -> list[uuid.UUID]:
    rows = await conn.fetch(ABANDONED, float(unqueued_seconds), limit, float(stale_claim_seconds))
    return [r["notification_id"] for r in rows]
