"""Chat messages of a consultation: the only writer of `chat_messages`, `chat_counters` and
`chat_reads` (migration 0006).

Order and exactly-once, from the database outwards:
- `seq` comes from the consultation's counter row, bumped in the very statement that inserts the
  message; a failed insert rolls its bump back, so seqs never skip nor repeat, whoever sends. The
  counter row stays locked until the inserting transaction commits, so when seq N is visible,
  every seq below N is already committed (the real-time relay relies on this to fill gaps).
- `client_msg_id` is unique per (consultation, sender): a resend finds the stored row and gets the
  same `seq` back.
- `ChatWriter` is the group commit of one process: the messages sent while a batch is in flight
  are stored together by the next batch, in one statement and one commit, each with its seq, in
  the order they were submitted. Delivery order is not decided here: every receiving process
  emits one consultation's messages in seq order (realtime/relay.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from core import crypto
from core.errors import Conflict, NotFound, ValidationFailed
from core.times import rfc3339
from db.pool import Executor

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000
MAX_CLIENT_MSG_ID_CHARS = 64
HISTORY_MAX = 500  # one history page; a client asks again with the last seq it got
# Messages stored by one group commit at most: one statement of a few hundred rows takes a couple of
# milliseconds, and a bigger batch would only make its first messages wait longer for their ack.
BATCH_MAX = 256


@dataclass(frozen=True)
class ChatMessage:
    id: uuid.UUID
    consultation_id: uuid.UUID
    seq: int
    sender_id: uuid.UUID
    client_msg_id: str
    text: str
    sent_at: datetime
    # Issue 17: the message's attachment, and its public form ({id, content_type, size, url})
    # once the caller (who has the file storage) filled it in: consultations/attachments.py.
    attachment_id: uuid.UUID | None = None
    attachment: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record, text: str | None = None) -> ChatMessage:
        """The message of a row; its text decrypted, unless the caller (who just stored it)
        gives it."""
        if text is None:
            text = _read_body(row)
        return cls(
            id=row["id"],
            consultation_id=row["consultation_id"],
            seq=row["seq"],
            sender_id=row["sender_id"],
            client_msg_id=row["client_msg_id"],
            text=text,
            sent_at=row["created_at"],
            attachment_id=row.get("attachment_id"),  # issue 17
        )

    def to_public(self) -> dict[str, Any]:
        """The `chat:message` payload of API.md (plus the sender's `client_msg_id`, so the
        sender's other devices can match their own messages)."""
        public = {
            "id": str(self.id),
            "consultation_id": str(self.consultation_id),
            "seq": self.seq,
            "sender_id": str(self.sender_id),
            "client_msg_id": self.client_msg_id,
            "text": self.text,
            "sent_at": rfc3339(self.sent_at, milliseconds=True),
        }
        if self.attachment is not None:  # issue 17
            public["attachment"] = self.attachment
        return public


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


MESSAGE_COLUMNS = (
    "id, consultation_id, seq, sender_id, client_msg_id, body, body_enc, created_at, attachment_id"
)
# What an insert returns: the caller has the text already, so the ciphertext need not come back.
STORED_COLUMNS = "id, consultation_id, seq, sender_id, client_msg_id, created_at"


# Texts at rest (migration 0016): encrypted in body_enc, bound to their consultation, sender and
# client_msg_id (unique together), so a ciphertext moved to another message does not decrypt.
# `body` holds the plaintext of messages from before encryption until rotate-data-key runs.
def body_aad(consultation_id: object, sender_id: object, client_msg_id: object) -> bytes:
    return crypto.aad("chat_messages.body_enc", consultation_id, sender_id, client_msg_id)


BODY_COLUMN = crypto.register(
    crypto.EncryptedColumn(
        table="chat_messages",
        column="body_enc",
        key="id",
        aad_columns=("consultation_id", "sender_id", "client_msg_id"),
        aad_of=lambda values: body_aad(*values),
        legacy="body",
        legacy_clear="body = NULL",
    )
)


def _seal(consultation_id: uuid.UUID, sender_id: uuid.UUID, client_msg_id: str, text: str) -> bytes:
    _check_text(text)
    return crypto.current().encrypt_text(text, body_aad(consultation_id, sender_id, client_msg_id))


def _check_text(text: str) -> None:
    """PostgreSQL refused NUL characters in the plaintext column; the ciphertext would take them,
    so they are refused here, as before."""
    if "\x00" in text:
        raise ValidationFailed({"text": "must not contain NUL characters"})


def _read_body(row: asyncpg.Record) -> str:
    sealed = row["body_enc"]
    if sealed is None:
        return str(row["body"])  # written before encryption, not yet rotated
    return crypto.current().decrypt_text(
        sealed, body_aad(row["consultation_id"], row["sender_id"], row["client_msg_id"])
    )


# The consultation, only for one of its two participants (anyone else: no row, i.e. not found).
GET_FOR_PARTICIPANT = """
SELECT * FROM consultations WHERE id = $1 AND $2 IN (user_id, astrologer_id)
"""
GET_CONSULTATION = "SELECT * FROM consultations WHERE id = $1"

# Check and act in one statement: only a participant, only while the consultation is active (issue
# 12: not while merely accepted, that was free chat; or, for the astrologer, within $5 seconds
# after it completed), bump the counter and insert
# the message with the new seq. A unique violation (a resent client_msg_id) aborts the whole
# statement, the bump included, so no seq is ever skipped.
SEND = f"""
WITH allowed AS (
    SELECT k.id FROM consultations k
     WHERE k.id = $1
       AND $2 IN (k.user_id, k.astrologer_id)
       AND (k.status = 'active'
            OR (k.status = 'completed' AND $2 = k.astrologer_id
                AND k.ended_at > now() - make_interval(secs => $5::float8)))
), bump AS (
    INSERT INTO chat_counters AS c (consultation_id, last_seq)
    SELECT id, 1 FROM allowed
    ON CONFLICT (consultation_id) DO UPDATE SET last_seq = c.last_seq + 1
    RETURNING last_seq
)
INSERT INTO chat_messages (consultation_id, seq, sender_id, client_msg_id, body_enc)
SELECT $1, last_seq, $2, $3, $4::bytea FROM bump
RETURNING {STORED_COLUMNS}
"""
GET_BY_CLIENT_ID = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
 WHERE consultation_id = $1 AND sender_id = $2 AND client_msg_id = $3
"""
# Many GET_BY_CLIENT_ID at once (ChatWriter's resends), by the (consultation, sender,
# client_msg_id) unique key.
GET_BY_CLIENT_IDS = f"""
SELECT {MESSAGE_COLUMNS} FROM chat_messages
  JOIN unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(consultation_id, sender_id, client_msg_id)
 USING (consultation_id, sender_id, client_msg_id)
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
# The group commit (ChatWriter): the same checks as SEND for every message of the batch, then one
# counter bump per consultation by its number of new messages, and the messages numbered in the
# order they were submitted ($1..$4 are parallel arrays). Already stored client_msg_ids and refused
# messages are left out (no row returned): the writer answers those one by one with SEND. Counter
# rows are locked in consultation id order, so two processes' batches never deadlock; a unique
# violation (the same resend racing on another process) aborts the whole statement, and the writer
# then stores the batch one message at a time.
SEND_BATCH = f"""
WITH input AS (
    SELECT t.cid, t.sender, t.cmid, t.body, t.ord
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[])
           WITH ORDINALITY AS t(cid, sender, cmid, body, ord)
), allowed AS MATERIALIZED (
    SELECT i.cid, i.sender, i.cmid, i.body,
           row_number() OVER (PARTITION BY i.cid ORDER BY i.ord) AS rn,
           count(*) OVER (PARTITION BY i.cid) AS n
      FROM input i
      JOIN consultations k ON k.id = i.cid
     WHERE i.sender IN (k.user_id, k.astrologer_id)
       AND (k.status = 'active'
            OR (k.status = 'completed' AND i.sender = k.astrologer_id
                AND k.ended_at > now() - make_interval(secs => $5::float8)))
       AND NOT EXISTS (SELECT 1 FROM chat_messages m
                        WHERE m.consultation_id = i.cid AND m.sender_id = i.sender
                          AND m.client_msg_id = i.cmid)
), bump AS (
    INSERT INTO chat_counters AS c (consultation_id, last_seq)
    SELECT cid, max(n) FROM allowed GROUP BY cid ORDER BY cid
    ON CONFLICT (consultation_id) DO UPDATE SET last_seq = c.last_seq + EXCLUDED.last_seq
    RETURNING consultation_id, last_seq
)
INSERT INTO chat_messages (consultation_id, seq, sender_id, client_msg_id, body_enc)
SELECT a.cid, b.last_seq - a.n + a.rn, a.sender, a.cmid, a.body
  FROM allowed a JOIN bump b ON b.consultation_id = a.cid
 ORDER BY a.cid, a.rn
RETURNING {STORED_COLUMNS}
"""


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

    `NotFound` when the sender is not a participant, `Conflict not_active` when the
    consultation does not take messages now."""
    try:
        row = await conn.fetchrow(
            SEND,
            consultation_id,
            sender_id,
            client_msg_id,
            _seal(consultation_id, sender_id, client_msg_id, text),
            after_end_seconds,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "chat_messages_client_id_unique":
            raise
        existing = await conn.fetchrow(GET_BY_CLIENT_ID, consultation_id, sender_id, client_msg_id)
        assert existing is not None, "a unique violation means the row exists"
        return ChatMessage.from_row(existing), False
    if row is not None:
        return ChatMessage.from_row(row, text), True
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
        code="not_active",  # API.md: the code of every "only while active" refusal
    )


# Issue 17: a message carrying an attachment, stored one at a time (not through the group commit:
# its file was just checked, and it is rare). The same checks as SEND, and the attachment must be
# a ready one of this consultation, uploaded by the sender.
SEND_ATTACHMENT = f"""
WITH allowed AS (
    SELECT k.id FROM consultations k
     WHERE k.id = $1
       AND $2 IN (k.user_id, k.astrologer_id)
       AND k.status = 'active'
       AND EXISTS (SELECT 1 FROM chat_attachments a
                    WHERE a.id = $5 AND a.consultation_id = $1 AND a.uploader_id = $2
                      AND a.status = 'ready')
), bump AS (
    INSERT INTO chat_counters AS c (consultation_id, last_seq)
    SELECT id, 1 FROM allowed
    ON CONFLICT (consultation_id) DO UPDATE SET last_seq = c.last_seq + 1
    RETURNING last_seq
)
INSERT INTO chat_messages (consultation_id, seq, sender_id, client_msg_id, body_enc, attachment_id)
SELECT $1, last_seq, $2, $3, $4::bytea, $5 FROM bump
RETURNING {STORED_COLUMNS}, attachment_id
"""


async def send_attachment_message(
    conn: Executor,
    consultation_id: uuid.UUID,
    sender_id: uuid.UUID,
    client_msg_id: str,
    text: str,
    attachment_id: uuid.UUID,
) -> tuple[ChatMessage, bool]:
    """Store a message with a ready attachment (text may be empty); like `send_message`: the
    same client_msg_id again is the stored message, `not_active` outside an active session."""
    try:
        row = await conn.fetchrow(
            SEND_ATTACHMENT,
            consultation_id,
            sender_id,
            client_msg_id,
            _seal(consultation_id, sender_id, client_msg_id, text),
            attachment_id,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "chat_messages_client_id_unique":
            raise
        row = None
    if row is not None:
        return ChatMessage.from_row(row, text), True
    existing = await conn.fetchrow(GET_BY_CLIENT_ID, consultation_id, sender_id, client_msg_id)
    if existing is not None:
        return ChatMessage.from_row(existing), False
    raise Conflict("this consultation does not take messages now", code="not_active")


Stored = Callable[[list[tuple["ChatMessage", Any]]], None]


@dataclass
class _Pending:
    """A message waiting for the group commit; `waiters` get its (message, created) result."""

    consultation_id: uuid.UUID
    sender_id: uuid.UUID
    client_msg_id: str
    text: str
    tag: Any
    waiters: list[asyncio.Future[tuple[ChatMessage, bool]]] = field(default_factory=list)

    @property
    def key(self) -> tuple[uuid.UUID, uuid.UUID, str]:
        return (self.consultation_id, self.sender_id, self.client_msg_id)


class ChatWriter:
    """The group commit of one process: `send` queues a message; one task stores everything queued
    in one statement (SEND_BATCH) on a connection it keeps, calls `on_stored` with the new messages
    (in seq order per consultation, each with the `tag` it was sent with) right after the commit,
    then answers every waiting `send`. One batch at a time, so a sender's messages get seqs in the
    order it sent them, across batches too.

    A message sent again while its first copy is still queued or in flight is the same message (the
    second `send` gets `created=False`). Anything the batch statement leaves out or fails on is
    stored or answered one message at a time with `send_message`, which gives the exact answer:
    the stored copy of a resend, `NotFound`, `Conflict not_active`, or the error."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        after_end_seconds: float,
        on_stored: Stored,
        max_batch: int = BATCH_MAX,
    ) -> None:
        self.pool = pool
        self.after_end_seconds = after_end_seconds
        self.on_stored = on_stored
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._queued: dict[tuple[uuid.UUID, uuid.UUID, str], _Pending] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None  # the pooled connection the batches run on (PoolConnectionProxy)
        self._cycle: asyncio.Future[None] | None = None
        self.batches = 0  # batches stored since start (for tests and benchmarks)

    async def send(
        self,
        consultation_id: uuid.UUID,
        sender_id: uuid.UUID,
        client_msg_id: str,
        text: str,
        tag: Any = None,
    ) -> tuple[ChatMessage, bool]:
        """Store a message; returns it and whether it is new. Queues it without suspending, so
        messages are stored in the order `send` was called."""
        _check_text(text)  # refused alone, before it can fail a whole batch
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[ChatMessage, bool]] = loop.create_future()
        key = (consultation_id, sender_id, client_msg_id)
        item = self._queued.get(key)
        if item is None:
            item = _Pending(consultation_id, sender_id, client_msg_id, text, tag)
            self._queue.append(item)
            self._queued[key] = item
            if self._task is None:
                self._task = asyncio.create_task(self._run())
        item.waiters.append(waiter)
        return await waiter

    async def settled(self) -> None:
        """Wait until the batch in flight now (if any) has been stored and handed to `on_stored`."""
        if self._cycle is not None:
            await asyncio.shield(self._cycle)

    async def close(self) -> None:
        """Finish what is queued, then give the connection back to the pool."""
        if self._task is not None:
            await asyncio.shield(self._task)
        await self._drop_connection()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                self._cycle = loop.create_future()
                try:
                    results = await self._store(batch)
                finally:
                    for item in batch:
                        self._queued.pop(item.key, None)
                    self._cycle.set_result(None)
                    self._cycle = None
                    self.batches += 1
                self._answer(batch, results)
        finally:
            self._task = None

    async def _store(self, batch: list[_Pending]) -> list[tuple[ChatMessage, bool] | BaseException]:
        """Store a batch and hand its new messages to `on_stored`; one result per item."""
        rows: list[asyncpg.Record] | None = None
        try:
            conn = await self._connection()
            rows = await conn.fetch(
                SEND_BATCH,
                [i.consultation_id for i in batch],
                [i.sender_id for i in batch],
                [i.client_msg_id for i in batch],
                [_seal(i.consultation_id, i.sender_id, i.client_msg_id, i.text) for i in batch],
                self.after_end_seconds,
            )
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            log.info("chat batch stored one by one", exc_info=True)  # a racing resend; rare
        except Exception:
            log.warning("chat batch failed; storing one by one", exc_info=True)
            await self._drop_connection()
        stored: dict[tuple[uuid.UUID, uuid.UUID, str], ChatMessage] = {}
        texts = {item.key: item.text for item in batch}
        for row in rows or ():
            key = (row["consultation_id"], row["sender_id"], row["client_msg_id"])
            stored[key] = ChatMessage.from_row(row, texts[key])
        resent = await self._stored_copies([i for i in batch if i.key not in stored])  # issue 15
        results: list[tuple[ChatMessage, bool] | BaseException] = []
        new: list[tuple[ChatMessage, Any]] = []
        for item in batch:
            message_or_none = stored.get(item.key)
            if message_or_none is not None:
                results.append((message_or_none, True))
                new.append((message_or_none, item.tag))
                continue
            if item.key in resent:  # a resend of a stored message: its stored copy
                results.append((resent[item.key], False))
                continue
            try:  # left out (a resend, refused) or the batch failed: the exact answer, alone
                message, created = await send_message(
                    self.pool,
                    item.consultation_id,
                    item.sender_id,
                    item.client_msg_id,
                    item.text,
                    after_end_seconds=self.after_end_seconds,
                )
            except Exception as exc:
                results.append(exc)
                continue
            results.append((message, created))
            if created:
                new.append((message, item.tag))
        if new:
            new.sort(key=lambda pair: (pair[0].consultation_id, pair[0].seq))
            try:
                self.on_stored(new)
            except Exception:  # stored is stored: the ack still goes out; receivers catch up
                log.exception("chat delivery hand-off failed")
        return results

    async def _stored_copies(
        self, items: list[_Pending]
    ) -> dict[tuple[uuid.UUID, uuid.UUID, str], ChatMessage]:
        """The stored copies of `items` that are resends, in ONE query (issue 15: a reconnecting
        client resends its unacked messages in bursts; one lookup each made resends six times
        slower than new messages). What is not found gets its exact answer alone."""
        if not items:
            return {}
        try:
            rows = await self.pool.fetch(
                GET_BY_CLIENT_IDS,
                [i.consultation_id for i in items],
                [i.sender_id for i in items],
                [i.client_msg_id for i in items],
            )
        except Exception:
            log.warning("resend lookup failed; answering one by one", exc_info=True)
            return {}
        return {
            (r["consultation_id"], r["sender_id"], r["client_msg_id"]): ChatMessage.from_row(r)
            for r in rows
        }

    @staticmethod
    def _answer(
        batch: Sequence[_Pending], results: Sequence[tuple[ChatMessage, bool] | BaseException]
    ) -> None:
        for item, result in zip(batch, results, strict=True):
            for n, waiter in enumerate(item.waiters):
                if waiter.done():  # the sender went away; the message is stored all the same
                    continue
                if isinstance(result, BaseException):
                    waiter.set_exception(result)
                else:
                    # Later copies of a message queued twice are resends of the first.
                    waiter.set_result(result if n == 0 else (result[0], False))

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            await self._drop_connection()
            self._conn = await self.pool.acquire()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await self.pool.release(conn)
            except Exception:
                log.warning("could not release the chat writer connection", exc_info=True)


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
