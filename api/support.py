"""Support tickets and refund requests (API.md v1.1): the author's routes and the admin queue."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field, StrictInt

from api.consultation_out import MeterLine, breakdown_lines
from api.framework import Call, Router
from api.messages import MessageOut
from api.models import Input, ListQuery, Output, Page, encode_cursor, time_id_cursor
from consultations import chat, lifecycle
from core import ratelimit
from core.times import rfc3339
from support import tickets

router = Router("support")

Category = Literal["refund", "payment", "technical", "behaviour", "other"]
TicketStatus = Literal["open", "in_review", "resolved", "rejected"]
CHAT_IN_QUEUE = 500  # the admin sees this much of the consultation's chat beside the ticket


class TicketIn(Input):
    category: Category
    consultation_id: uuid.UUID | None = None
    recharge_id: uuid.UUID | None = None
    question_id: uuid.UUID | None = None
    text: str = Field(min_length=1, max_length=4000)


class MessageIn(Input):
    text: str = Field(min_length=1, max_length=4000)


class ResolveIn(Input):
    outcome: Literal["refund", "rejected", "answered"]
    refund_amount: StrictInt | None = Field(
        None, gt=0, description="outcome refund only; omit to refund all that is left"
    )
    note: str = Field(min_length=1, max_length=2000)


class QueueQuery(ListQuery):
    status: TicketStatus | None = "open"


class TicketMessageOut(Output):
    id: str
    author_id: str
    from_support: bool
    text: str
    created_at: str | None


class TicketOut(Output):
    id: str
    author_id: str
    category: Category
    consultation_id: str | None
    recharge_id: str | None
    question_id: str | None
    status: TicketStatus
    text: str
    outcome: str | None
    refund_amount: int | None = Field(description="what the resolution refunded, minor units")
    note: str | None = Field(description="the resolution note")
    resolved_at: str | None
    created_at: str | None
    updated_at: str | None
    messages: list[TicketMessageOut]

    @classmethod
    def of(cls, t: tickets.Ticket) -> TicketOut:
        def s(v: object) -> str | None:
            return None if v is None else str(v)

        return cls(
            id=str(t.id),
            author_id=str(t.author_id),
            category=t.category,  # type: ignore[arg-type]  # the CHECK constraint limits it
            consultation_id=s(t.consultation_id),
            recharge_id=s(t.recharge_id),
            question_id=s(t.question_id),
            status=t.status,  # type: ignore[arg-type]  # the CHECK constraint limits it
            text=t.text,
            outcome=t.outcome,
            refund_amount=t.refund_amount,
            note=t.note,
            resolved_at=rfc3339(t.resolved_at),
            created_at=rfc3339(t.created_at),
            updated_at=rfc3339(t.updated_at),
            messages=[
                TicketMessageOut(
                    id=str(m.id),
                    author_id=str(m.author_id),
                    from_support=m.from_support,
                    text=m.text,
                    created_at=rfc3339(m.created_at),
                )
                for m in t.messages
            ],
        )


class ConsultationBrief(Output):
    id: str
    user_id: str
    astrologer_id: str
    astrologer_name: str | None
    type: str
    status: str
    end_reason: str | None
    rate: int
    billed_minutes: int
    total_charged: int
    started_at: str | None
    ended_at: str | None


class AdminTicketOut(TicketOut):
    consultation: ConsultationBrief | None = None
    breakdown: list[MeterLine] | None = Field(
        None, description="the consultation's bill minute by minute (the meter's lines)"
    )
    chat: list[MessageOut] | None = Field(
        None, description="the consultation's chat, in order (the first 500 messages)"
    )
    chat_url: str | None = Field(None, description="the whole chat history, paginated")


def _status_errors() -> dict[int, str]:
    return {404: "not the author's", 409: "ticket_closed"}


@router.post(
    "/v1/support/tickets",
    access=("user", "astrologer"),
    body=TicketIn,
    response=TicketOut,
    status=201,
    errors={
        404: "the consultation, recharge or question is not yours",
        409: "ticket_exists, invalid_state (not ended), refund_window_closed",
    },
    rate_limit=ratelimit.TICKET,
)
async def open_ticket(call: Call) -> TicketOut:
    """POST /v1/support/tickets

    Open a support ticket. A `refund` ticket names a consultation (or question) of your own that
    ended within REFUND_REQUEST_DAYS; one refund ticket per consultation may be open at a time."""
    body = call.body(TicketIn)
    t = await tickets.open_ticket(
        call.services,
        author_id=call.principal.user_id,
        category=body.category,
        text=body.text,
        consultation_id=body.consultation_id,
        recharge_id=body.recharge_id,
        question_id=body.question_id,
    )
    return TicketOut.of(t)


@router.get(
    "/v1/support/tickets", access=("user", "astrologer"), query=ListQuery, response=Page[TicketOut]
)
async def list_tickets(call: Call) -> Page[TicketOut]:
    """GET /v1/support/tickets

    Your tickets, newest first, each with its messages."""
    query = call.query(ListQuery)
    found = await tickets.list_mine(
        call.services.db,
        call.principal.user_id,
        after=time_id_cursor(query.cursor),
        limit=query.limit + 1,
    )
    page = found[: query.limit]
    more = len(found) > query.limit
    return Page[TicketOut](
        items=[TicketOut.of(t) for t in page],
        next_cursor=encode_cursor(page[-1].created_at.isoformat(), str(page[-1].id))
        if more
        else None,
    )


@router.get("/v1/support/tickets/{id}", access="authenticated", response=TicketOut)
async def get_ticket(call: Call) -> TicketOut:
    """GET /v1/support/tickets/{id}

    A ticket of yours (or any, for an admin) with its messages."""
    t = await tickets.get_for(
        call.services.db,
        call.uuid("id"),
        call.principal.user_id,
        admin=call.principal.role == "admin",
    )
    return TicketOut.of(t)


@router.post(
    "/v1/support/tickets/{id}/messages",
    access="authenticated",
    body=MessageIn,
    response=TicketMessageOut,
    status=201,
    errors=_status_errors(),
    rate_limit=ratelimit.TICKET_MESSAGE,
)
async def post_message(call: Call) -> TicketMessageOut:
    """POST /v1/support/tickets/{id}/messages

    Write on a ticket: its author, or an admin (whose reply puts an open ticket `in_review`
    and tells the author)."""
    m = await tickets.add_message(
        call.services,
        ticket_id=call.uuid("id"),
        author_id=call.principal.user_id,
        admin=call.principal.role == "admin",
        text=call.body(MessageIn).text,
    )
    return TicketMessageOut(
        id=str(m.id),
        author_id=str(m.author_id),
        from_support=m.from_support,
        text=m.text,
        created_at=rfc3339(m.created_at),
    )


async def _admin_view(call: Call, t: tickets.Ticket, *, with_chat: bool) -> AdminTicketOut:
    out = AdminTicketOut.model_validate({**TicketOut.of(t).model_dump()})
    if t.consultation_id is None:
        return out
    c = await lifecycle.get(call.services.db, t.consultation_id)
    if c is None:
        return out
    out.consultation = ConsultationBrief(
        id=str(c.id),
        user_id=str(c.user_id),
        astrologer_id=str(c.astrologer_id),
        astrologer_name=c.astrologer_name,
        type=c.type,
        status=c.status,
        end_reason=c.end_reason,
        rate=c.rate,
        billed_minutes=c.billed_minutes,
        total_charged=c.total_charged,
        started_at=rfc3339(c.started_at),
        ended_at=rfc3339(c.ended_at),
    )
    out.breakdown = await breakdown_lines(call, c)
    out.chat_url = f"/v1/consultations/{c.id}/messages"
    if with_chat:
        messages = await chat.history(call.services.db, c.id, 0, CHAT_IN_QUEUE)
        out.chat = [MessageOut.model_validate(m.to_public()) for m in messages]
    return out


@router.get("/v1/admin/tickets", access="admin", query=QueueQuery, response=Page[AdminTicketOut])
async def ticket_queue(call: Call) -> Page[AdminTicketOut]:
    """GET /v1/admin/tickets?status=open

    The support queue, oldest first (default status `open`), each ticket with its consultation,
    the consultation's bill minute by minute and its chat."""
    query = call.query(QueueQuery)
    found = await tickets.queue(
        call.services.db,
        status=query.status,
        after=time_id_cursor(query.cursor),
        limit=query.limit + 1,
    )
    page = found[: query.limit]
    more = len(found) > query.limit
    return Page[AdminTicketOut](
        items=[await _admin_view(call, t, with_chat=True) for t in page],
        next_cursor=encode_cursor(page[-1].created_at.isoformat(), str(page[-1].id))
        if more
        else None,
    )


@router.post(
    "/v1/admin/tickets/{id}/resolve",
    access="admin",
    body=ResolveIn,
    response=AdminTicketOut,
    errors={
        404: "no such ticket",
        409: "ticket_closed, refund_exceeds_charged, not_refundable",
    },
)
async def resolve_ticket(call: Call) -> AdminTicketOut:
    """POST /v1/admin/tickets/{id}/resolve

    Close a ticket: `refund` (resolved; refunds `refund_amount`, or all not yet refunded, to the
    wallet through the refund rules, in the same transaction), `answered` (resolved) or
    `rejected`. The author is told. A ticket is closed once: a second resolve is 409."""
    body = call.body(ResolveIn)
    t = await tickets.resolve(
        call.services,
        ticket_id=call.uuid("id"),
        admin_id=call.principal.user_id,
        outcome=body.outcome,
        note=body.note,
        refund_amount=body.refund_amount,
    )
    return await _admin_view(call, t, with_chat=False)
