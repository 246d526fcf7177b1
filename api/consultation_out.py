"""The consultation as every REST route shows it (`ConsultationOut`), with its bill line by line
(`MeterLine`): one model, shared by api/consultations.py, api/session_end.py and api/support.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.framework import Call
from api.models import Output
from consultations import lifecycle
from live import bill

ConsultationType = Literal["chat", "voice", "video"]
Status = Literal[
    "scheduled", "requested", "accepted", "active", "completed", "rejected", "missed", "cancelled",
    # issue 17: a booking waiting for its shortfall payment, and one not paid in time
    "awaiting_payment", "expired",
]  # fmt: skip


class MeterLine(Output):
    """One meter event: `start`, `charge` (one per billed minute), `low_balance`, `end`,
    `refund`. The astrologer does not see the user's balance, the user not the astrologer's
    share (those fields are null)."""

    kind: str = Field(examples=["charge"])
    minute: int | None = Field(None, description="the billed minute (1 is the first)")
    due_at: datetime | None = Field(None, description="when the minute began")
    at: datetime = Field(description="when the event happened (the charge time for a minute)")
    amount: int = Field(description="what the wallet paid, minor units")
    free_amount: int = Field(description="what a free minute or promo paid instead")
    astrologer_share: int | None = None
    balance_after: int | None = None
    minutes_left: int | None = None
    reason: str | None = Field(None, description="the end reason, or why a refund was made")


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
    # GET /v1/consultations/{id} only: the bill line by line (api/session_end.py, live.bill).
    breakdown: list[MeterLine] | None = None
    # Issue 17: a booking in `awaiting_payment` (POST and GET): until when its slot is kept, and
    # the recharge of the shortfall to pay (see api/wallet.py RechargeOut).
    payment_due_at: str | None = None
    recharge: dict[str, Any] | None = Field(
        None,
        description="awaiting_payment: the recharge of the shortfall {id, status, amount, tax, "
        "total, client_secret | order_id, key_id}",
    )

    @classmethod
    def of(cls, c: lifecycle.Consultation, call: Call) -> ConsultationOut:
        data: dict[str, Any] = lifecycle.to_public(
            c, request_timeout_seconds=call.services.settings.request_timeout_seconds
        )
        return cls.model_validate(data)


def _audience(call: Call, c: lifecycle.Consultation) -> bill.Audience:
    if call.principal.role == "admin":
        return "admin"
    return "user" if call.principal.user_id == c.user_id else "astrologer"


async def breakdown_lines(call: Call, c: lifecycle.Consultation) -> list[MeterLine]:
    """The per-minute breakdown of `c` as the caller may see it (GET /v1/consultations/{id})."""
    lines = await bill.breakdown(call.services.db, c.id, _audience(call, c))
    return [MeterLine.model_validate(line) for line in lines]
