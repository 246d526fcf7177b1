"""Support tickets: open, talk, review, resolve; refund tickets go through the refund rules.

    open ─(an admin replies)─► in_review ─► resolved (refund | answered)
      └──────────────────────────┴────────► rejected

Refund tickets: the author must be the user of the consultation (or question), which ended within
REFUND_REQUEST_DAYS; one open refund ticket per consultation (the partial unique index
`support_tickets_one_open_refund`, 409 ticket_exists).

Resolving is one transaction: the ticket row is locked, its status checked and changed, the refund
(billing.refunds.refund_consultation, key `ticket:{id}`: never more than was charged) and the
author's notifications written, all or nothing. Two admins resolving at once queue on the row
lock; the second sees the ticket closed (409 ticket_closed) and nothing moves twice.

Texts (the ticket's, each message's, the resolution note) are stored encrypted, bound to their
row and column (`crypto.aad`), so a dump shows none of them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from billing import refunds
from core import crypto
from core.errors import AppError, Conflict, NotFound, ValidationFailed
from core.services import Services
from db.pool import Conn, Executor

log = logging.getLogger(__name__)

CATEGORIES = ("refund", "payment", "technical", "behaviour", "other")
OUTCOMES = ("refund", "rejected", "answered")
OPEN_STATUSES = ("open", "in_review")


class TicketExists(Conflict):
    code, message = "ticket_exists", "a refund ticket for this is already open"


class TicketClosed(Conflict):
    code, message = "ticket_closed", "this ticket is already resolved or rejected"


class NotRefundable(AppError):
    status, code, message = 409, "not_refundable", "this cannot be refunded through a ticket"


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    ticket_id: uuid.UUID
    author_id: uuid.UUID
    from_support: bool
    text: str
    created_at: datetime


@dataclass(frozen=True)
class Ticket:
    id: uuid.UUID
    author_id: uuid.UUID
    category: str
    consultation_id: uuid.UUID | None
    recharge_id: uuid.UUID | None
    question_id: uuid.UUID | None
    status: str
    text: str
    outcome: str | None
    refund_amount: int | None
    refund_id: uuid.UUID | None
    note: str | None
    resolved_by: uuid.UUID | None
    resolved_at: datetime | None
    created_at: datetime
    updated_at: datetime
    messages: tuple[Message, ...] = ()


# -- encryption of texts ----------------------------------------------------------------------


def _aad(column: str, row_id: object) -> bytes:
    return crypto.aad(column, row_id)


def _seal(column: str, row_id: uuid.UUID, text: str) -> bytes:
    return crypto.current().encrypt_text(text, _aad(column, row_id))


def _open(column: str, row_id: uuid.UUID, envelope: bytes | None) -> str | None:
    if envelope is None:
        return None
    return crypto.current().decrypt_text(bytes(envelope), _aad(column, row_id))


def _aad_of(name: str) -> Callable[[Sequence[Any]], bytes]:
    def aad_of(row: Sequence[Any]) -> bytes:
        return _aad(name, row[0])

    return aad_of


for _table, _column, _name in (
    ("support_tickets", "text_enc", "support_tickets.text"),
    ("support_tickets", "note_enc", "support_tickets.note"),
    ("support_ticket_messages", "text_enc", "support_ticket_messages.text"),
):
    crypto.register(
        crypto.EncryptedColumn(
            table=_table, column=_column, key="id", aad_columns=("id",), aad_of=_aad_of(_name)
        )
    )


# -- SQL --------------------------------------------------------------------------------------

_COLUMNS = """
t.id, t.author_id, t.category, t.consultation_id, t.recharge_id, t.question_id, t.status,
t.text_enc, t.outcome, t.refund_amount, t.refund_id, t.note_enc, t.resolved_by, t.resolved_at,
t.created_at, t.updated_at
"""
INSERT_TICKET = """
INSERT INTO support_tickets (id, author_id, category, consultation_id, recharge_id, question_id,
                             text_enc)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
GET_TICKET = f"SELECT {_COLUMNS} FROM support_tickets t WHERE t.id = $1"
LOCK_TICKET = f"SELECT {_COLUMNS} FROM support_tickets t WHERE t.id = $1 FOR UPDATE"
MESSAGES = """
SELECT m.id, m.ticket_id, m.author_id, m.text_enc, m.created_at, (u.role = 'admin') AS from_support
  FROM support_ticket_messages m JOIN users u ON u.id = m.author_id
 WHERE m.ticket_id = ANY($1::uuid[])
 ORDER BY m.created_at, m.id
"""
INSERT_MESSAGE = """
INSERT INTO support_ticket_messages (id, ticket_id, author_id, text_enc) VALUES ($1, $2, $3, $4)
RETURNING created_at
"""
MINE = f"""
SELECT {_COLUMNS} FROM support_tickets t
 WHERE t.author_id = $1
   AND ($2::timestamptz IS NULL OR (t.created_at, t.id) < ($2, $3::uuid))
 ORDER BY t.created_at DESC, t.id DESC
 LIMIT $4
"""
# The admin queue: oldest first, keyset on (created_at, id).
QUEUE = f"""
SELECT {_COLUMNS} FROM support_tickets t
 WHERE ($1::text IS NULL OR t.status = $1)
   AND ($2::timestamptz IS NULL OR (t.created_at, t.id) > ($2, $3::uuid))
 ORDER BY t.created_at, t.id
 LIMIT $4
"""
TO_REVIEW = """
UPDATE support_tickets SET status = 'in_review', updated_at = now()
 WHERE id = $1 AND status = 'open'
"""
CLOSE = """
UPDATE support_tickets
   SET status = $2, outcome = $3, refund_amount = $4, refund_id = $5, note_enc = $6,
       resolved_by = $7, resolved_at = now(), updated_at = now()
 WHERE id = $1 AND status IN ('open', 'in_review')
"""
TOUCH = "UPDATE support_tickets SET updated_at = now() WHERE id = $1"
CONSULTATION_OF = """
SELECT user_id, astrologer_id, status, ended_at FROM consultations WHERE id = $1
"""
QUESTION_OF = "SELECT user_id, astrologer_id, status, closed_at FROM questions WHERE id = $1"
RECHARGE_OF = "SELECT user_id FROM recharges WHERE id = $1"
AUDIT = """
INSERT INTO audit_log (actor_id, action, target_type, target_id, reason, details)
VALUES ($1, $2, 'support_ticket', $3, $4, $5)
"""


def _ticket(row: asyncpg.Record, messages: Sequence[Message] = ()) -> Ticket:
    return Ticket(
        id=row["id"],
        author_id=row["author_id"],
        category=row["category"],
        consultation_id=row["consultation_id"],
        recharge_id=row["recharge_id"],
        question_id=row["question_id"],
        status=row["status"],
        text=_open("support_tickets.text", row["id"], row["text_enc"]) or "",
        outcome=row["outcome"],
        refund_amount=row["refund_amount"],
        refund_id=row["refund_id"],
        note=_open("support_tickets.note", row["id"], row["note_enc"]),
        resolved_by=row["resolved_by"],
        resolved_at=row["resolved_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        messages=tuple(messages),
    )


def _message(row: asyncpg.Record) -> Message:
    return Message(
        id=row["id"],
        ticket_id=row["ticket_id"],
        author_id=row["author_id"],
        from_support=bool(row["from_support"]),
        text=_open("support_ticket_messages.text", row["id"], row["text_enc"]) or "",
        created_at=row["created_at"],
    )


async def _with_messages(conn: Executor, rows: Sequence[asyncpg.Record]) -> list[Ticket]:
    found = await conn.fetch(MESSAGES, [r["id"] for r in rows])
    by_ticket: dict[uuid.UUID, list[Message]] = {}
    for m in found:
        by_ticket.setdefault(m["ticket_id"], []).append(_message(m))
    return [_ticket(r, by_ticket.get(r["id"], [])) for r in rows]


# -- opening ----------------------------------------------------------------------------------


async def _check_links(
    conn: Conn,
    settings_days: float,
    *,
    author_id: uuid.UUID,
    category: str,
    consultation_id: uuid.UUID | None,
    recharge_id: uuid.UUID | None,
    question_id: uuid.UUID | None,
) -> None:
    """What a ticket refers to must be the author's (404 otherwise: never reveal it exists); a
    refund ticket needs a consultation or question of the author's own, ended within the window."""
    now: datetime = await conn.fetchval("SELECT now()")
    window = timedelta(days=settings_days)
    if consultation_id is not None:
        c = await conn.fetchrow(CONSULTATION_OF, consultation_id)
        if c is None or author_id not in (c["user_id"], c["astrologer_id"]):
            raise NotFound("no such consultation")
        if category == "refund":
            if c["user_id"] != author_id:
                raise NotFound("no such consultation")
            if c["ended_at"] is None or c["status"] != "completed":
                raise Conflict(
                    "a refund is asked about a session that took place and ended",
                    code="invalid_state",
                    details={"status": c["status"]},
                )
            if now - c["ended_at"] > window:
                raise NotRefundable(
                    f"refunds are asked within {settings_days:g} days of the consultation",
                    code="refund_window_closed",
                )
    if question_id is not None:
        q = await conn.fetchrow(QUESTION_OF, question_id)
        if q is None or author_id not in (q["user_id"], q["astrologer_id"]):
            raise NotFound("no such question")
        if category == "refund":
            if q["user_id"] != author_id:
                raise NotFound("no such question")
            if q["closed_at"] is None:
                raise Conflict(
                    "a refund can be asked once the question is closed",
                    code="invalid_state",
                    details={"status": q["status"]},
                )
            if now - q["closed_at"] > window:
                raise NotRefundable(code="refund_window_closed")
    if recharge_id is not None:
        owner = await conn.fetchval(RECHARGE_OF, recharge_id)
        if owner != author_id:
            raise NotFound("no such recharge")
    if category == "refund" and consultation_id is None and question_id is None:
        raise ValidationFailed(
            {"consultation_id": "a refund ticket names a consultation or question"}
        )


async def open_ticket(
    services: Services,
    *,
    author_id: uuid.UUID,
    category: str,
    text: str,
    consultation_id: uuid.UUID | None = None,
    recharge_id: uuid.UUID | None = None,
    question_id: uuid.UUID | None = None,
) -> Ticket:
    """Open a ticket (`open`). 404 when a linked consultation, recharge or question is not the
    author's; for `refund`: 422 without a consultation or question, 409 invalid_state before it
    ended, refund_window_closed after REFUND_REQUEST_DAYS, ticket_exists when one is open."""
    if category not in CATEGORIES:
        raise ValidationFailed({"category": "one of " + ", ".join(CATEGORIES)})
    ticket_id = uuid.uuid4()
    async with services.db.acquire() as conn, conn.transaction():
        await _check_links(
            conn,
            services.settings.refund_request_days,
            author_id=author_id,
            category=category,
            consultation_id=consultation_id,
            recharge_id=recharge_id,
            question_id=question_id,
        )
        try:
            async with conn.transaction():
                await conn.execute(
                    INSERT_TICKET, ticket_id, author_id, category, consultation_id, recharge_id,
                    question_id, _seal("support_tickets.text", ticket_id, text),
                )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise TicketExists() from exc
        row = await conn.fetchrow(GET_TICKET, ticket_id)
    assert row is not None
    return _ticket(row)


# -- reading ----------------------------------------------------------------------------------


async def get_for(
    conn: Executor, ticket_id: uuid.UUID, viewer_id: uuid.UUID, *, admin: bool = False
) -> Ticket:
    """A ticket with its messages, for its author or an admin; 404 for anyone else."""
    row = await conn.fetchrow(GET_TICKET, ticket_id)
    if row is None or not (admin or row["author_id"] == viewer_id):
        raise NotFound("no such ticket")
    return (await _with_messages(conn, [row]))[0]


async def list_mine(
    conn: Executor,
    author_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Ticket]:
    rows = await conn.fetch(
        MINE, author_id, after[0] if after else None, after[1] if after else None, limit
    )
    return await _with_messages(conn, rows)


async def queue(
    conn: Executor,
    *,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Ticket]:
    """The admin queue, oldest first (keyset on created_at, id)."""
    rows = await conn.fetch(
        QUEUE, status, after[0] if after else None, after[1] if after else None, limit
    )
    return await _with_messages(conn, rows)


# -- talking ----------------------------------------------------------------------------------


async def add_message(
    services: Services,
    *,
    ticket_id: uuid.UUID,
    author_id: uuid.UUID,
    admin: bool,
    text: str,
) -> Message:
    """A message from the ticket's author or an admin (404 for anyone else; 409 ticket_closed on
    a closed ticket). An admin's reply puts an open ticket `in_review`, and tells the author."""
    message_id = uuid.uuid4()
    note_ids: list[uuid.UUID] = []
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_TICKET, ticket_id)
        if row is None or not (admin or row["author_id"] == author_id):
            raise NotFound("no such ticket")
        if row["status"] not in OPEN_STATUSES:
            raise TicketClosed()
        created = await conn.fetchval(
            INSERT_MESSAGE,
            message_id,
            ticket_id,
            author_id,
            _seal("support_ticket_messages.text", message_id, text),
        )
        await conn.execute(TOUCH, ticket_id)
        if admin and author_id != row["author_id"]:
            note_ids += await _tell_author_txn(
                conn, row, "ticket_reply", {}, key=f"ticket_reply:{message_id}"
            )
            if await conn.execute(TO_REVIEW, ticket_id) == "UPDATE 1":
                note_ids += await _status_changed_txn(conn, row, "in_review")
    await _deliver(services, note_ids)
    return Message(message_id, ticket_id, author_id, admin, text, created)


# -- resolving --------------------------------------------------------------------------------


async def resolve(
    services: Services,
    *,
    ticket_id: uuid.UUID,
    admin_id: uuid.UUID,
    outcome: str,
    note: str,
    refund_amount: int | None = None,
) -> Ticket:
    """An admin closes a ticket: `refund` (resolved, with a refund of `refund_amount`, default
    everything not yet refunded, through the refund rules), `answered` (resolved) or `rejected`.
    All in one transaction with the status change. 409 ticket_closed when it was already closed
    (a second admin), refund_exceeds_charged, not_refundable (no consultation to refund)."""
    if outcome not in OUTCOMES:
        raise ValidationFailed({"outcome": "one of " + ", ".join(OUTCOMES)})
    if outcome != "refund" and refund_amount is not None:
        raise ValidationFailed({"refund_amount": "only with outcome refund"})
    note_ids: list[uuid.UUID] = []
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_TICKET, ticket_id)
        if row is None:
            raise NotFound("no such ticket")
        if row["status"] not in OPEN_STATUSES:
            raise TicketClosed(details={"status": row["status"], "outcome": row["outcome"]})
        refund: refunds.ConsultationRefund | None = None
        if outcome == "refund":
            if row["consultation_id"] is None:
                raise NotRefundable(
                    "only a consultation's charges are refunded through a ticket; "
                    "refund a recharge or question from the money tools"
                )
            refund = await refunds.refund_consultation(
                conn,
                consultation_id=row["consultation_id"],
                amount=refund_amount,
                reason=f"support ticket {ticket_id}",
                actor_id=admin_id,
                key=f"ticket:{ticket_id}",
            )
        status = "rejected" if outcome == "rejected" else "resolved"
        await conn.execute(
            CLOSE, ticket_id, status, outcome, refund.amount if refund else None,
            refund.id if refund else None, _seal("support_tickets.note", ticket_id, note),
            admin_id,
        )  # fmt: skip
        await conn.execute(
            AUDIT, admin_id, f"ticket_{status}", str(ticket_id), note,
            {"outcome": outcome, "refund_amount": refund.amount if refund else None},
        )  # fmt: skip
        note_ids += await _status_changed_txn(conn, row, status, outcome=outcome)
        if refund is not None:
            note_ids += await _tell_author_txn(
                conn,
                row,
                "refund_issued",
                {"amount": refund.amount, "refund_id": str(refund.id)},
                key=f"refund_issued:{refund.id}",
                to=refund.user_id,
            )
        done = await conn.fetchrow(GET_TICKET, ticket_id)
        assert done is not None
        ticket = (await _with_messages(conn, [done]))[0]
    await _deliver(services, note_ids)
    return ticket


# -- telling the author -----------------------------------------------------------------------


async def _tell_author_txn(
    conn: Conn,
    row: asyncpg.Record,
    event: str,
    data: dict[str, Any],
    *,
    key: str,
    to: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    from notify import record_txn

    found = await record_txn(
        conn, to or row["author_id"], event, {**data, "ticket_id": str(row["id"])}, key=key
    )
    return [found] if found is not None else []


async def _status_changed_txn(
    conn: Conn, row: asyncpg.Record, status: str, *, outcome: str | None = None
) -> list[uuid.UUID]:
    return await _tell_author_txn(
        conn,
        row,
        "ticket_updated",
        {"ticket_status": status.replace("_", " "), "status": status, "outcome": outcome},
        key=f"ticket_updated:{row['id']}:{status}",
    )


async def _deliver(services: Services, note_ids: list[uuid.UUID]) -> None:
    from notify import enqueue_delivery

    for note_id in note_ids:
        await enqueue_delivery(services, note_id)
