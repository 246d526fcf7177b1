"""Ending a live session over REST, and the bill of a session line by line (live/)."""

from __future__ import annotations

from api.consultation_out import ConsultationOut, MeterLine, breakdown_lines
from api.framework import Call, Router
from api.models import Output
from consultations import lifecycle
from live import session

router = Router("consultations")


class MeterOut(Output):
    consultation_id: str
    lines: list[MeterLine]


@router.post(
    "/v1/consultations/{id}/end",
    access=("user", "astrologer"),
    response=ConsultationOut,
    errors={404: "not a participant", 409: "not_active: the consultation is not live"},
)
async def end_consultation(call: Call) -> ConsultationOut:
    """POST /v1/consultations/{id}/end

    A participant ends the live session now: minutes that began before this instant are
    charged, nothing after (the end wins over a minute being charged at the same moment). An
    accepted consultation that has not started yet can be ended too: by the astrologer (it
    becomes `rejected`) or the user (`cancelled`); any hold is released and the astrologer is
    free. Ending a consultation that already ended returns it unchanged."""
    consultation_id = call.uuid("id")
    services = call.services
    await session.end_by_participant(services, consultation_id, call.principal.user_id)
    c = await lifecycle.get_for(services.db, consultation_id, call.principal.user_id)
    return ConsultationOut.of(c, call)


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
