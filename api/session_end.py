"""Ending a live session over REST, and the bill of a session line by line (billing.meter)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from api.framework import Call, Router
from api.models import Output
from billing import meter
from consultations import lifecycle

router = Router("consultations")


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


class ConsultationOut(Output):
    """The consultation as `GET /v1/consultations/{id}` shows it (plus any other fields the
    consultations view carries)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    end_reason: str | None = None
    billed_minutes: int
    total_charged: int


class MeterOut(Output):
    consultation_id: str
    lines: list[MeterLine]


def _audience(call: Call, c: lifecycle.Consultation) -> meter.Audience:
    if call.principal.role == "admin":
        return "admin"
    return "user" if call.principal.user_id == c.user_id else "astrologer"


async def breakdown_lines(call: Call, c: lifecycle.Consultation) -> list[MeterLine]:
    """The per-minute breakdown of `c` as the caller may see it (GET /v1/consultations/{id})."""
    lines = await meter.breakdown(call.services.db, c.id, _audience(call, c))
    return [MeterLine.model_validate(line) for line in lines]


@router.post(
    "/v1/consultations/{id}/end",
    access=("user", "astrologer"),
    response=ConsultationOut,
    errors={404: "not a participant", 409: "not_active: the session never started"},
)
async def end_consultation(call: Call) -> dict[str, Any]:
    """POST /v1/consultations/{id}/end

    A participant ends the live session now: minutes that began are charged, nothing after.
    Ending a session that already ended returns it unchanged."""
    consultation_id = call.uuid("id")
    services = call.services
    await meter.end_by_participant(services, consultation_id, call.principal.user_id)
    c = await lifecycle.get_for(services.db, consultation_id, call.principal.user_id)
    return lifecycle.to_public(c)


@router.get(
    "/v1/consultations/{id}/meter",
    access=("user", "astrologer", "admin"),
    response=MeterOut,
)
async def get_meter(call: Call) -> MeterOut:
    """GET /v1/consultations/{id}/meter

    The session's bill line by line (the same breakdown `GET /v1/consultations/{id}` carries),
    for its participants and admins; anyone else gets 404."""
    consultation_id = call.uuid("id")
    principal = call.principal
    db = call.services.db
    c = await lifecycle.get_for(
        db, consultation_id, principal.user_id, admin=principal.role == "admin"
    )
    return MeterOut(consultation_id=str(consultation_id), lines=await breakdown_lines(call, c))
