"""Consultations: requests and bookings, the astrologer's answer, cancellation, review, complaint.

The live session itself (`/end`, join, the meter) belongs to billing/ and realtime/.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from api.astrologers import ReviewOut
from api.consultation_out import (
    ConsultationOut,
    ConsultationType,
    Status,
    breakdown_lines,
)
from api.framework import Call, Router
from api.models import Input, ListQuery, Output, Page, encode_cursor, time_id_cursor
from api.profiles import ConsultationWithProfilesOut
from auth import birth_profiles
from consultations import booking, lifecycle, reminders, reviews, shortfall
from core import ratelimit
from core.times import rfc3339
from support import tickets

router = Router("consultations")


class ShortfallIn(Input):
    gateway: Literal["stripe", "razorpay", "test"]


class RescheduleIn(Input):
    scheduled_at: AwareDatetime = Field(description="a free slot's `start` of the same astrologer")


class CreateIn(Input):
    astrologer_id: uuid.UUID
    type: ConsultationType
    scheduled_at: AwareDatetime | None = Field(
        None, description="book this slot (a `start` from /v1/astrologers/{id}/slots)"
    )
    promo_code: str | None = Field(None, min_length=1, max_length=32)
    # Issue 17: a booking the wallet cannot hold is kept while this gateway pays the shortfall.
    pay_shortfall: ShortfallIn | None = Field(
        None,
        description="with scheduled_at: when the wallet is short, answer `awaiting_payment` with "
        "a recharge of exactly the shortfall instead of 402",
    )
    # Issue 16: birth profiles shown to the astrologer (a frozen copy); default: your self profile.
    profile_ids: list[uuid.UUID] | None = Field(
        None,
        max_length=2,
        description="your birth profiles to show the astrologer (default: your `self` profile "
        "when it has a birth date); a frozen copy is kept on the consultation",
    )

    @model_validator(mode="after")
    def _shortfall_needs_a_slot(self) -> CreateIn:  # issue 17
        if self.pay_shortfall is not None and self.scheduled_at is None:
            raise ValueError("pay_shortfall is for bookings: give scheduled_at")
        return self


class ListIn(ListQuery):
    status: Status | None = None


class ReasonIn(Input):
    reason: str | None = Field(None, max_length=500)


class ReviewIn(Input):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)


class ComplaintIn(Input):
    reason: str = Field(min_length=1, max_length=2000)


class ComplaintOut(Output):
    id: str = Field(description="the refund ticket's id (GET /v1/support/tickets/{id})")
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
    errors={
        402: "insufficient_balance (a booking: details.shortfall, unless pay_shortfall)",
        404: "no such astrologer (or not a verified one)",
        409: _CONFLICTS,
        422: "invalid_promo",
    },
    rate_limit=ratelimit.CONSULTATION_REQUEST,
)
async def create_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations

    Request an instant consultation (`requested`; the astrologer has REQUEST_TIMEOUT_SECONDS to
    accept) or, with `scheduled_at`, book a slot (`scheduled`, the slot's price held in the
    wallet). The rate, share, free minutes and promo are frozen on it. Honours Idempotency-Key.

    A booking the wallet cannot hold is `402 insufficient_balance` with `details.shortfall`; with
    `pay_shortfall: {gateway}` it is instead `awaiting_payment` with `payment_due_at` and a
    `recharge` of exactly the shortfall (GST on top): pay it within BOOKING_PAYMENT_SECONDS and
    the booking becomes `scheduled`; otherwise it becomes `expired`, the slot is free again, and
    money that arrives later stays in the wallet."""
    body = call.body(CreateIn)
    # Issue 16: the birth profiles to freeze, checked (another person's id: 404) before anything.
    async with call.services.db.acquire() as conn:
        frozen = await birth_profiles.freeze(conn, call.principal.user_id, body.profile_ids)
    if body.scheduled_at is not None:
        c = await booking.book(
            call.services,
            user_id=call.principal.user_id,
            astrologer_id=body.astrologer_id,
            type_=body.type,
            scheduled_at=body.scheduled_at,
            promo_code=body.promo_code,
            pay_shortfall=body.pay_shortfall.gateway if body.pay_shortfall else None,  # issue 17
        )
        await birth_profiles.attach_txn(call.services.db, c.id, frozen)  # issue 16
        if c.status == "awaiting_payment":  # issue 17
            return await _with_payment(call, ConsultationOut.of(c, call))
    else:
        c = await lifecycle.request(
            call.services,
            user_id=call.principal.user_id,
            astrologer_id=body.astrologer_id,
            type_=body.type,
            promo_code=body.promo_code,
            profiles=frozen,  # issue 16
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


@router.get(
    "/v1/consultations/{id}",
    access="authenticated",
    response=ConsultationWithProfilesOut,  # issue 16: `profiles` only for its astrologer
)
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
    if c.status == "awaiting_payment" and call.principal.user_id == c.user_id:  # issue 17
        out = await _with_payment(call, out)
    # Issue 16: its astrologer sees the frozen birth profiles (within PROFILE_VISIBLE_DAYS).
    shown = await birth_profiles.visible_profiles(
        call.services.db, call.services.settings, c.id, call.principal.user_id
    )
    if shown is not None:
        return ConsultationWithProfilesOut.model_validate({**out.model_dump(), "profiles": shown})
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
    if c.scheduled_at is not None:  # issue 17: a booking's cancellation, both sides told
        await reminders.announce(call.services, c, "booking_cancelled")
    return ConsultationOut.of(c, call)


@router.post(
    "/v1/consultations/{id}/review",
    access="user",
    body=ReviewIn,
    response=ReviewOut,
    status=201,
    errors={409: "already_reviewed, invalid_state (not completed)"},
    rate_limit=ratelimit.REVIEW,
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
    return ReviewOut.of(review)


@router.post(
    "/v1/consultations/{id}/complaint",
    access="user",
    body=ComplaintIn,
    response=ComplaintOut,
    status=201,
    errors={
        404: "not your consultation",
        409: "ticket_exists, invalid_state (not ended), refund_window_closed",
    },
    rate_limit=ratelimit.TICKET,
)
async def complain(call: Call) -> ComplaintOut:
    """POST /v1/consultations/{id}/complaint

    Ask for a refund review of a consultation of yours that ended: opens a `refund` support
    ticket (its id is the answer's `id`; follow it under /v1/support/tickets). One open refund
    ticket per consultation (409 ticket_exists)."""
    consultation_id = call.uuid("id")
    ticket = await tickets.open_ticket(
        call.services,
        author_id=call.principal.user_id,
        category="refund",
        text=call.body(ComplaintIn).reason,
        consultation_id=consultation_id,
    )
    return ComplaintOut(
        id=str(ticket.id),
        consultation_id=str(consultation_id),
        reason=ticket.text,
        status=ticket.status,
        created_at=rfc3339(ticket.created_at),
    )


# -- issue 17: bookings paid by shortfall, rescheduling ---------------------------------------


async def _with_payment(call: Call, out: ConsultationOut) -> ConsultationOut:
    """A booking in `awaiting_payment` with its due time and the recharge to pay."""
    from api.wallet import recharge_out

    due, recharge = await shortfall.payment_of(call.services.db, uuid.UUID(out.id))
    out.payment_due_at = rfc3339(due)
    if recharge is not None:
        shown = recharge_out(recharge, call.services.settings.razorpay_key_id)
        out.recharge = shown.model_dump(mode="json", exclude_none=True)
    return out


@router.post(
    "/v1/consultations/{id}/reschedule",
    access="user",
    body=RescheduleIn,
    response=ConsultationOut,
    idempotent=True,
    errors={
        404: "not your consultation",
        409: "invalid_state (not scheduled), reschedule_too_late, slot_taken",
        422: "not a future slot of the astrologer",
    },
)
async def reschedule_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations/{id}/reschedule

    Move your `scheduled` booking to another free slot of the same astrologer, before the
    cancellation cut-off (CANCEL_FULL_REFUND_HOURS before it); the hold moves with it, both sides
    are told, and the reminders follow the new time."""
    c = await reminders.reschedule(
        call.services,
        consultation_id=call.uuid("id"),
        user_id=call.principal.user_id,
        scheduled_at=call.body(RescheduleIn).scheduled_at,
    )
    return ConsultationOut.of(c, call)
