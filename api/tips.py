"""Tips (API.md v1.1 "Tips"): the user of a session thanks its astrologer from the wallet."""

from __future__ import annotations

from pydantic import Field, StrictInt

from api.framework import Call, Router
from api.models import Input, Output
from consultations import tips
from core import ratelimit
from core.times import rfc3339

router = Router("tips")


class TipIn(Input):
    amount: StrictInt = Field(
        ge=tips.MIN_TIP, description="minor units; at least 100, at most MAX_TIP (default 500000)"
    )


class TipOut(Output):
    id: str
    consultation_id: str
    amount: int = Field(description="taken from the wallet")
    astrologer_amount: int = Field(description="what the astrologer receives (TIP_SHARE_PERCENT)")
    currency: str
    created_at: str | None


@router.post(
    "/v1/consultations/{id}/tips",
    access="user",
    body=TipIn,
    response=TipOut,
    status=201,
    idempotent=True,
    errors={
        402: "insufficient_balance",
        409: "invalid_state, tip_limit_reached, idempotency_conflict",
        422: "amount out of range, Idempotency-Key missing",
    },
    rate_limit=ratelimit.TIP,
)
async def give_tip(call: Call) -> TipOut:
    """POST /v1/consultations/{id}/tips

    Tip the astrologer of your consultation while it is `active` or within 24 hours after it
    completed. Requires an `Idempotency-Key` header: the same key gives the same tip once. The
    astrologer receives TIP_SHARE_PERCENT of it (and `session:tip`); a user's tips of the last
    24 hours stay within MAX_TIPS_PER_DAY."""
    tip = await tips.give_tip(
        call.services,
        consultation_id=call.uuid("id"),
        user_id=call.principal.user_id,
        amount=call.body(TipIn).amount,
        idempotency_key=call.request.headers.get("Idempotency-Key", ""),
    )
    return TipOut(
        id=str(tip.id),
        consultation_id=str(tip.consultation_id),
        amount=tip.amount,
        astrologer_amount=tip.astrologer_part,
        currency=tip.currency,
        created_at=rfc3339(tip.created_at),
    )
