"""Admin money actions (API.md "Admin"): consultation refunds, card refunds, payouts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field

from api.framework import Call, Router
from api.models import Input, ListQuery, Output, Page, encode_cursor, time_id_cursor
from billing import payouts, refunds

router = Router("admin")


class RefundIn(Input):
    consultation_id: uuid.UUID
    amount: int | None = Field(None, gt=0, description="minor units; omit for all that is left")
    reason: str = Field(min_length=1, max_length=500)


class RefundOut(Output):
    id: uuid.UUID
    consultation_id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    earnings_reversed: int = Field(description="taken back from the astrologer's earnings")
    reason: str
    created_at: datetime


class CardRefundIn(Input):
    amount: int | None = Field(None, gt=0, description="of the recharged amount; omit for all")
    reason: str = Field(min_length=1, max_length=500)


class CardRefundOut(Output):
    id: uuid.UUID
    recharge_id: uuid.UUID
    amount: int = Field(description="taken from the wallet (plus `bonus` clawed back)")
    bonus: int
    tax: int = Field(description="GST given back with it; the card gets amount + tax")
    status: Literal["requested", "submitted", "succeeded", "failed"]
    failure_reason: str | None
    created_at: datetime


class PayoutOut(Output):
    id: uuid.UUID
    astrologer_id: uuid.UUID
    amount: int
    currency: str
    status: Literal["requested", "approved", "paid", "failed", "rejected"]
    provider_ref: str | None = None
    failure_reason: str | None = None
    rejection_reason: str | None = None
    approved_at: datetime | None = None
    paid_at: datetime | None = None
    created_at: datetime


class PayoutsQuery(ListQuery):
    status: Literal["requested", "approved", "paid", "failed", "rejected"] | None = None


@router.post(
    "/v1/admin/refunds",
    access="admin",
    body=RefundIn,
    response=RefundOut,
    status=201,
    idempotent=True,
    errors={404: "no such consultation", 409: "refund_exceeds_charged: more than is left"},
)
async def refund_consultation(call: Call) -> RefundOut:
    """POST /v1/admin/refunds

    Refund all or part of a consultation's charges to the user's wallet, taking the astrologer's
    share back in proportion. Never more than was charged, across partial refunds."""
    body = call.body(RefundIn)
    header = call.request.headers.get("Idempotency-Key")
    key = f"admin:{call.principal.user_id}:{header}" if header else f"admin:{uuid.uuid4()}"
    async with call.services.db.acquire() as conn:
        refund = await refunds.refund_consultation(
            conn,
            consultation_id=body.consultation_id,
            amount=body.amount,
            reason=body.reason,
            actor_id=call.principal.user_id,
            key=key,
        )
    return RefundOut.model_validate(refund)


@router.post(
    "/v1/admin/recharges/{id}/refund",
    access="admin",
    body=CardRefundIn,
    response=CardRefundOut,
    status=202,
    idempotent=True,
    errors={
        402: "insufficient_balance: the wallet already spent it",
        409: "refund_exceeds_charged: more than the recharge credited, or not_refundable",
    },
)
async def refund_recharge(call: Call) -> CardRefundOut:
    """POST /v1/admin/recharges/{id}/refund

    Send (part of) a recharge back to the card: the wallet is debited now, the gateway refund
    follows from a job; if the gateway fails it, the money returns to the wallet."""
    body = call.body(CardRefundIn)
    async with call.services.db.acquire() as conn:
        refund = await refunds.request_card_refund(
            conn,
            recharge_id=call.uuid("id"),
            amount=body.amount,
            reason=body.reason,
            actor_id=call.principal.user_id,
        )
    await refunds.enqueue_card_refund(call.services, refund.id, "requested")
    return CardRefundOut.model_validate(refund)


@router.get("/v1/admin/payouts", access="admin", query=PayoutsQuery, response=Page[PayoutOut])
async def list_payouts(call: Call) -> Page[PayoutOut]:
    """GET /v1/admin/payouts

    Payout requests, newest first; filter with `status`."""
    query = call.query(PayoutsQuery)
    after = time_id_cursor(query.cursor)
    found = await payouts.list_payouts(
        call.services.db, status=query.status, after=after, limit=query.limit + 1
    )
    items = [PayoutOut.model_validate(p) for p in found[: query.limit]]
    last_item = found[query.limit - 1] if len(found) > query.limit else None
    cursor = (
        encode_cursor(last_item.created_at.isoformat(), str(last_item.id)) if last_item else None
    )
    return Page(items=items, next_cursor=cursor)


@router.post(
    "/v1/admin/payouts/{id}/approve",
    access="admin",
    response=PayoutOut,
    errors={404: "no such payout", 409: "payout_not_pending: not waiting for approval"},
)
async def approve_payout(call: Call) -> PayoutOut:
    """POST /v1/admin/payouts/{id}/approve

    Approve a requested payout; it is paid by the payout provider right after."""
    payout_id = call.uuid("id")
    async with call.services.db.acquire() as conn:
        payout = await payouts.approve_payout(
            conn, payout_id=payout_id, admin_id=call.principal.user_id
        )
    await payouts.enqueue_execution(call.services, payout.id)
    return PayoutOut.model_validate(payout)


class RejectPayoutIn(Input):
    reason: str = Field(min_length=1, max_length=500, description="told to the astrologer")


@router.post(
    "/v1/admin/payouts/{id}/reject",
    access="admin",
    body=RejectPayoutIn,
    response=PayoutOut,
    errors={404: "no such payout", 409: "payout_not_pending: not waiting for approval"},
)
async def reject_payout(call: Call) -> PayoutOut:
    """POST /v1/admin/payouts/{id}/reject

    Reject a requested payout: the reserved amount goes back to the astrologer's earnings at
    once. A payout already approved is in the provider's hands and cannot be rejected (409)."""
    body = call.body(RejectPayoutIn)
    async with call.services.db.acquire() as conn:
        payout = await payouts.reject_payout(
            conn, payout_id=call.uuid("id"), admin_id=call.principal.user_id, reason=body.reason
        )
    return PayoutOut.model_validate(payout)
