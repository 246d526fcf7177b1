"""Chat messages of a consultation: the only writer of `chat_messages`, `chat_counters` and
`chat_reads` (migration 0006).

Order and exactly-once, from the database outwards:
- `seq` comes from the consultation's counter row, bumped in the very statement that inserts the
  message; a failed insert rolls its bump back, so seqs never skip nor repeat, whoever sends.
- `client_msg_id` is unique per (consultation, sender): a resend finds the stored row and gets the
  same `seq` back.
- Delivery order: `send_and_deliver` holds a per-consultation advisory lock (a session lock on the
  pooled connection) from before the insert until `deliver` has published the message, so the
  publishes of one consultation happen in seq order; Redis pub/sub then hands them to every web
  process in that order (see realtime/server.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.errors import Conflict, NotFound
from db.pool import Executor

MAX_TEXT_CHARS = 4000
MAX_CLIENT_MSG_ID_CHARS = 64
HISTORY_MAX = 500  # one history page; a client asks again with the last seq it got

# The lock class of session advisory locks taken here (= this package's migration number), so they
# never collide with another package's advisory locks.
CHAT_LOCK_CLASS = 6


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ChatMessage:
    id: uuid.UUID
    consultation_id: uuid.UUID
    seq: int
    sender_id: uuid.UUID
    client_msg_id: str
    text: str
    sent_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ChatMessage:
        return cls(
            id=row["id"],
            consultation_id=row["consultation_id"],
            seq=row["seq"],
            sender_id=row["sender_id"],
            client_msg_id=row["client_msg_id"],
            text=row["body"],
            sent_at=row["created_at"],
        )

    def to_public(self) -> dict[str, Any]:
        """The `chat:message` payload of API.md (plus the sender's `client_msg_id`, so the
        sender's other devices can match their own messages)."""
        return {
            "id": str(self.id),
            "consultation_id": str(self.consultation_id),
            "seq": self.seq,
            "sender_id": str(self.sender_id),
            "client_msg_id": self.client_msg_id,
            "text": self.text,
            "sent_at": rfc3339(self.sent_at),
        }


@dataclass(frozen=True)
class ChatRoom:
    """What the real-time layer needs to know about a consultation to route its events."""

    consultation_id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    type: str
    status: str
    row: asyncpg.Record

    def other(self, me: uuid.UUID) -> uuid.UUID:
        return self.astrologer_id if me == self.user_id else self.user_id


MESSAGE_COLUMNS = "id, consultation_id, seq, sender_id, client_msg_id, body, created_at"

# The consultation, only for one of its two participants (anyone else: no row, i.e. not found).
GET_FOR_PARTICIPANT = """
SELECT * FROM consultations WHERE id = $1 AND $2 IN (user_id, astrologer_id)
"""
GET_CONSULTATION = "SELECT * FROM consultations WHERE id = $1"

# Check and act in one statement: only a participant, only while the consultation is accepted or
# active (or, for the astrologer, within $5 seconds after it completed), bump the counter and insert
# the message with the new seq. A unique violation (a resent client_msg_id) aborts the whole
# statement, the bump included, so no seq is ever skipped.
SEND = f"""
WITH allowed AS (
    SELECT k.id FROM consultations k
     WHERE k.id = $1
       AND $2 IN (k.user_id, k.astrologer_id)
       AND (k.status IN ('accepted', 'active')
            OR (k.status = 'completed' AND $2 = k.astrologer_id
                AND k.ended_at > now() - make_interval(secs => $5::float8)))
), bump AS (
    INSERT INTO chat_counters AS c (consultation_id, last_seq)
    SELECT id, 1 FROM allowed
    ON CONFLICT (consultation_id) DO UPDATE SET last_seq = c.last_seq + 1
    RETURNING last_seq
)
INSERT INTO chat_messages (consultation_id, seq, sender_id, client_msg_id, body)
SELECT $1, last_seq, $2, $3, $4 FROM bump
RETURNING {MESSAGE_COLUMNS}
"""
GET_BY_CLIENT_ID = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
 WHERE consultation_id = $1 AND sender_id = $2 AND client_msg_id = $3
"""
HISTORY = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
 WHERE consultation_id = $1 AND seq > $2
 ORDER BY seq
 LIMIT $3
"""
LAST_SEQ = "SELECT coalesce((SELECT last_seq FROM chat_counters WHERE consultation_id = $1), 0)"
# Read receipts only move forward and never past the last message.
MARK_READ = """
INSERT INTO chat_reads AS r (consultation_id, user_id, up_to_seq)
SELECT k.id, $2,
       least($3, coalesce((SELECT last_seq FROM chat_counters WHERE consultation_id = $1), 0))
  FROM consultations k
 WHERE k.id = $1 AND $2 IN (k.user_id, k.astrologer_id)
ON CONFLICT (consultation_id, user_id)
DO UPDATE SET up_to_seq = greatest(r.up_to_seq, EXCLUDED.up_to_seq), updated_at = now()
RETURNING up_to_seq
"""
LOCK = "SELECT pg_advisory_lock($1, hashtext($2::text))"


async def room_for_participant(
    conn: Executor, consultation_id: uuid.UUID, user_id: uuid.UUID
) -> ChatRoom:
    """The consultation if `user_id` is one of its two participants; `NotFound` otherwise."""
    row = await conn.fetchrow(GET_FOR_PARTICIPANT, consultation_id, user_id)
    if row is None:
        raise NotFound("no such consultation")
    return ChatRoom(
        row["id"], row["user_id"], row["astrologer_id"], row["type"], row["status"], row
    )


async def last_seq(conn: Executor, consultation_id: uuid.UUID) -> int:
    return int(await conn.fetchval(LAST_SEQ, consultation_id))


async def send_message(
    conn: Executor,
    consultation_id: uuid.UUID,
    sender_id: uuid.UUID,
    client_msg_id: str,
    text: str,
    *,
    after_end_seconds: float,
) -> tuple[ChatMessage, bool]:
    """Store a message; returns it and whether it is new (False: a resend of a stored one).

    `NotFound` when the sender is not a participant, `Conflict consultation_not_active` when the
    consultation does not take messages now."""
    try:
        row = await conn.fetchrow(
            SEND, consultation_id, sender_id, client_msg_id, text, after_end_seconds
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "chat_messages_client_id_unique":
            raise
        existing = await conn.fetchrow(GET_BY_CLIENT_ID, consultation_id, sender_id, client_msg_id)
        assert existing is not None, "a unique violation means the row exists"
        return ChatMessage.from_row(existing), False
    if row is not None:
        return ChatMessage.from_row(row), True
    # Nothing inserted: tell a stranger "not found", a participant why not.
    existing = await conn.fetchrow(GET_BY_CLIENT_ID, consultation_id, sender_id, client_msg_id)
    if existing is not None:  # a resend after the consultation ended still gets its seq back
        return ChatMessage.from_row(existing), False
    consultation = await conn.fetchrow(GET_CONSULTATION, consultation_id)
    if consultation is None or sender_id not in (
        consultation["user_id"],
        consultation["astrologer_id"],
    ):
        raise NotFound("no such consultation")
    raise Conflict(
        f"this consultation does not take messages now (status {consultation['status']})",
        code="consultation_not_active",
    )


async def send_and_deliver(
    pool: asyncpg.Pool[Any],
    consultation_id: uuid.UUID,
    sender_id: uuid.UUID,
    client_msg_id: str,
    text: str,
    *,
    after_end_seconds: float,
    deliver: Callable[[ChatMessage], Awaitable[None]],
) -> tuple[ChatMessage, bool]:
    """`send_message`, then `deliver(message)` for a new message, both under the consultation's
    advisory lock, so that deliveries of one consultation start in seq order across processes.

    The lock is a session lock on a pooled connection: the pool's reset on release
    (`pg_advisory_unlock_all()`) drops it even if `deliver` raises."""
    async with pool.acquire() as conn:
        await conn.execute(LOCK, CHAT_LOCK_CLASS, str(consultation_id))
        try:
            message, created = await send_message(
                conn,
                consultation_id,
                sender_id,
                client_msg_id,
                text,
                after_end_seconds=after_end_seconds,
            )
            if created:
                await deliver(message)
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock($1, hashtext($2::text))",
                CHAT_LOCK_CLASS,
                str(consultation_id),
            )
    return message, created


async def history(
    conn: Executor, consultation_id: uuid.UUID, after_seq: int, limit: int = HISTORY_MAX
) -> list[ChatMessage]:
    """Messages with seq > `after_seq`, in seq order. The caller checks who may read them."""
    rows = await conn.fetch(HISTORY, consultation_id, after_seq, min(limit, HISTORY_MAX))
    return [ChatMessage.from_row(r) for r in rows]


async def mark_read(
    conn: Executor, consultation_id: uuid.UUID, user_id: uuid.UUID, up_to_seq: int
) -> int:
    """Store that `user_id` has read up to `up_to_seq` (never backwards, never past the last
    message); returns the stored value. `NotFound` for a non-participant."""
    value = await conn.fetchval(MARK_READ, consultation_id, user_id, up_to_seq)
    if value is None:
        raise NotFound("no such consultation")
    return int(value)
