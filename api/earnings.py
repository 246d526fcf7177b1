"""Astrologer earnings and payout requests (API.md "Astrologers")."""

from __future__ import annotations

from pydantic import Field

from api.admin_money import PayoutOut
from api.framework import Call, Router
from api.models import Input, ListQuery, Output, encode_cursor, int_cursor
from api.wallet import TransactionOut
from billing import payouts, statements
from core import ratelimit

router = Router("earnings")


class EarningsOut(Output):
    balance: int = Field(description="earned and not yet paid out or requested")
    currency: str
    lifetime: int = Field(description="all earned, net of refunds")
    pending_payout: int = Field(description="requested or approved, not yet paid")
    items: list[TransactionOut] = Field(description="the earnings ledger, newest first")
    next_cursor: str | None = None


class PayoutIn(Input):
    amount: int = Field(gt=0, description="minor units; at least MIN_PAYOUT")


@router.get("/v1/astrologer/earnings", access="astrologer", query=ListQuery, response=EarningsOut)
async def get_earnings(call: Call) -> EarningsOut:
    """GET /v1/astrologer/earnings

    The caller's earnings balance, lifetime total, pending payout and a page of the ledger."""
    query = call.query(ListQuery)
    before = int_cursor(query.cursor)
    currency = call.services.settings.currency
    me = call.principal.user_id
    summary = await payouts.earnings_of(call.services.db, me, currency)
    found = await statements.lines(
        call.services.db,
        kind="astrologer_earnings",
        owner_id=me,
        currency=currency,
        before=before,
        limit=query.limit + 1,
    )
    more = len(found) > query.limit
    return EarningsOut(
        balance=summary.balance,
        currency=currency,
        lifetime=summary.lifetime,
        pending_payout=summary.pending_payout,
        items=[TransactionOut.model_validate(line) for line in found[: query.limit]],
        next_cursor=encode_cursor(found[query.limit - 1].cursor) if more else None,
    )


@router.post(
    "/v1/astrologer/payouts",
    access="astrologer",
    body=PayoutIn,
    response=PayoutOut,
    status=201,
    idempotent=True,
    errors={
        402: "insufficient_earnings: the earnings do not cover it",
        409: "payout_pending: a payout is already pending",
        422: "below the minimum",
    },
    rate_limit=ratelimit.PAYOUT,
)
async def request_payout(call: Call) -> PayoutOut:
    """POST /v1/astrologer/payouts

    Request a payout of earned balance: reserved now, paid after an admin approves it."""
    settings = call.services.settings
    async with call.services.db.acquire() as conn:
        payout = await payouts.request_payout(
            conn,
            astrologer_id=call.principal.user_id,
            amount=call.body(PayoutIn).amount,
            currency=settings.currency,
            min_payout=settings.min_payout,
        )
    return PayoutOut.model_validate(payout)
