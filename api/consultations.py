"""Consultations: requests and bookings, the astrologer's answer, cancellation, review, complaint.

The live session itself (`/end`, join, the meter) belongs to billing/ and realtime/.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, Field

from api.framework import Call, Router
from api.models import Input, ListQuery, Output, Page, encode_cursor, time_id_cursor
from api.session_end import MeterLine, breakdown_lines
from consultations import booking, lifecycle, reviews

router = Router("consultations")

ConsultationType = Literal["chat", "voice", "video"]
Status = Literal[
    "scheduled", "requested", "accepted", "active", "completed", "rejected", "missed", "cancelled"
]


class CreateIn(Input):
    astrologer_id: uuid.UUID
    type: ConsultationType
    scheduled_at: AwareDatetime | None = Field(
        None, description="book this slot (a `start` from /v1/astrologers/{id}/slots)"
    )
    promo_code: str | None = Field(None, min_length=1, max_length=32)


class ListIn(ListQuery):
    status: Status | None = None


class ReasonIn(Input):
    reason: str | None = Field(None, max_length=500)


class ReviewIn(Input):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)


class ComplaintIn(Input):
    reason: str = Field(min_length=1, max_length=2000)


class UserRef(Output):
    id: str
    name: str | None


class AstrologerRef(Output):
    id: str
    display_name: str | None


class ConsultationOut(Output):
    id: str
    user: UserRef
    astrologer: AstrologerRef
    user_id: str
    astrologer_id: str
    type: ConsultationType
    status: Status
    end_reason: str | None
    rate: int = Field(description="what the user pays a minute, minor units (after a promo)")
    list_rate: int = Field(description="the astrologer's own rate a minute")
    currency: str
    free_minutes: int
    promo_credit: int = Field(description="a flat promo: paid by the platform first")
    promo_applied: bool
    max_minutes: int | None = Field(
        description="on creation: minutes the wallet affords now; later: the session cap"
    )
    scheduled_at: str | None
    scheduled_end: str | None
    requested_at: str | None
    expires_at: str | None = Field(description="while requested: when it becomes missed")
    accepted_at: str | None
    started_at: str | None
    ended_at: str | None
    billed_minutes: int
    total_charged: int
    close_reason: str | None
    created_at: str | None
    # GET /v1/consultations/{id} only: the bill line by line (api/session_end.py, billing.meter).
    breakdown: list[MeterLine] | None = None

    @classmethod
    def of(cls, c: lifecycle.Consultation, call: Call) -> ConsultationOut:
        data: dict[str, Any] = lifecycle.to_public(
            c, request_timeout_seconds=call.services.settings.request_timeout_seconds
        )
        return cls.model_validate(data)


class ReviewOut(Output):
    id: str
    consultation_id: str
    rating: int
    comment: str | None
    created_at: str | None


class ComplaintOut(Output):
    id: str
    consultation_id: str
    reason: str
    status: str
    created_at: str | None


_CONFLICTS = "astrologer_busy, astrologer_offline, slot_taken, invalid_state"


@router.post(
    "/v1/consultations",
    access="user",
    body=CreateIn,
    response=ConsultationOut,
    status=201,
    idempotent=True,
    errors={402: "insufficient_balance", 409: _CONFLICTS, 422: "invalid_promo"},
)
async def create_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations

    Request an instant consultation (`requested`; the astrologer has REQUEST_TIMEOUT_SECONDS to
    accept) or, with `scheduled_at`, book a slot (`scheduled`, the slot's price held in the
    wallet). The rate, share, free minutes and promo are frozen on it. Honours Idempotency-Key."""
    body = call.body(CreateIn)
    if body.scheduled_at is not None:
        c = await booking.book(
            call.services,
            user_id=call.principal.user_id,
            astrologer_id=body.astrologer_id,
            type_=body.type,
            scheduled_at=body.scheduled_at,
            promo_code=body.promo_code,
        )
    else:
        c = await lifecycle.request(
            call.services,
            user_id=call.principal.user_id,
            astrologer_id=body.astrologer_id,
            type_=body.type,
            promo_code=body.promo_code,
        )
    return ConsultationOut.of(c, call)


@router.get(
    "/v1/consultations",
    access=("user", "astrologer"),
    query=ListIn,
    response=Page[ConsultationOut],
)
async def list_consultations(call: Call) -> Page[ConsultationOut]:
    """GET /v1/consultations

    Mine (as the user, or as the astrologer for an astrologer), newest first; filter `status`."""
    query = call.query(ListIn)
    after = time_id_cursor(query.cursor)
    found = await lifecycle.list_mine(
        call.services.db,
        call.principal.user_id,
        as_astrologer=call.principal.role == "astrologer",
        status=query.status,
        after=after,
        limit=query.limit + 1,
    )
    page = found[: query.limit]
    next_cursor = None
    if len(found) > query.limit:
        next_cursor = encode_cursor(page[-1].created_at.isoformat(), str(page[-1].id))
    return Page[ConsultationOut](
        items=[ConsultationOut.of(c, call) for c in page], next_cursor=next_cursor
    )


@router.get("/v1/consultations/{id}", access="authenticated", response=ConsultationOut)
async def get_consultation(call: Call) -> ConsultationOut:
    """GET /v1/consultations/{id}

    A consultation of yours (or any, for an admin)."""
    c = await lifecycle.get_for(
        call.services.db,
        call.uuid("id"),
        call.principal.user_id,
        admin=call.principal.role == "admin",
    )
    out = ConsultationOut.of(c, call)
    out.breakdown = await breakdown_lines(call, c)
    return out


@router.post(
    "/v1/consultations/{id}/accept",
    access="astrologer",
    response=ConsultationOut,
    errors={409: "invalid_state, request_expired, astrologer_busy"},
)
async def accept_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations/{id}/accept

    Accept a request while it is `requested` (within REQUEST_TIMEOUT_SECONDS)."""
    c = await lifecycle.accept(
        call.services, consultation_id=call.uuid("id"), astrologer_id=call.principal.user_id
    )
    return ConsultationOut.of(c, call)


@router.post(
    "/v1/consultations/{id}/reject",
    access="astrologer",
    body=ReasonIn,
    response=ConsultationOut,
    errors={409: "invalid_state"},
)
async def reject_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations/{id}/reject

    Decline a request or a booking (a booking's hold is released in full)."""
    c = await lifecycle.reject(
        call.services,
        consultation_id=call.uuid("id"),
        astrologer_id=call.principal.user_id,
        reason=call.body(ReasonIn).reason,
    )
    return ConsultationOut.of(c, call)


@router.post(
    "/v1/consultations/{id}/cancel",
    access="user",
    body=ReasonIn,
    response=ConsultationOut,
    idempotent=True,
    errors={409: "invalid_state"},
)
async def cancel_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations/{id}/cancel

    Cancel before the session is active. A booking's hold is released in full when cancelled at
    least CANCEL_FULL_REFUND_HOURS before its time; later, CANCEL_LATE_FEE_PERCENT of it is kept."""
    c = await lifecycle.cancel(
        call.services,
        consultation_id=call.uuid("id"),
        user_id=call.principal.user_id,
        reason=call.body(ReasonIn).reason,
    )
    return ConsultationOut.of(c, call)


@router.post(
    "/v1/consultations/{id}/review",
    access="user",
    body=ReviewIn,
    response=ReviewOut,
    status=201,
    errors={409: "already_reviewed, invalid_state (not completed)"},
)
async def review_consultation(call: Call) -> ReviewOut:
    """POST /v1/consultations/{id}/review

    Rate a completed consultation of yours, once (1-5, optional comment)."""
    body = call.body(ReviewIn)
    async with call.services.db.acquire() as conn:
        review = await reviews.submit(
            conn,
            consultation_id=call.uuid("id"),
            user_id=call.principal.user_id,
            rating=body.rating,
            comment=body.comment,
        )
    return ReviewOut(
        id=str(review.id),
        consultation_id=str(review.consultation_id),
        rating=review.rating,
        comment=review.comment,
        created_at=lifecycle.iso(review.created_at),
    )


@router.post(
    "/v1/consultations/{id}/complaint",
    access="user",
    body=ComplaintIn,
    response=ComplaintOut,
    status=201,
    errors={409: "already_complained, invalid_state (no session took place)"},
)
async def complain(call: Call) -> ComplaintOut:
    """POST /v1/consultations/{id}/complaint

    Ask for a refund review of a consultation that took place; one per consultation."""
    async with call.services.db.acquire() as conn:
        complaint = await reviews.complain(
            conn,
            consultation_id=call.uuid("id"),
            user_id=call.principal.user_id,
            reason=call.body(ComplaintIn).reason,
        )
    return ComplaintOut(
        id=str(complaint.id),
        consultation_id=str(complaint.consultation_id),
        reason=complaint.reason,
        status=complaint.status,
        created_at=lifecycle.iso(complaint.created_at),
    )
