"""An astrologer's own availability: online/offline now, and weekly hours for bookings."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from api.framework import Call, Router
from api.models import Input, Output
from consultations import booking, presence

router = Router("astrologer")

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")


class StatusIn(Input):
    status: Literal["online", "offline"]


class StatusOut(Output):
    status: Literal["online", "busy", "offline"]


def _minutes(value: str) -> int:
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


class WindowIO(Input):
    weekday: int = Field(ge=0, le=6, description="0 = Monday")
    start: str = Field(examples=["10:00"], description="HH:MM in the astrologer's time zone")
    end: str = Field(examples=["13:00"], description="HH:MM, after start; 24:00 is midnight")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("a time as HH:MM")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> WindowIO:
        if self.start == "24:00" or _minutes(self.end) <= _minutes(self.start):
            raise ValueError("end must be after start")
        return self


class AvailabilityIO(Input):
    timezone: str = Field(examples=["Asia/Kolkata"], min_length=1, max_length=64)
    slots: list[WindowIO] = Field(max_length=70)


class AvailabilityOut(Output):
    timezone: str
    slots: list[dict[str, int | str]]

    @classmethod
    def of(cls, a: booking.Availability) -> AvailabilityOut:
        return cls(
            timezone=a.timezone,
            slots=[
                {
                    "weekday": w.weekday,
                    "start": booking.Window.hhmm(w.start_minute),
                    "end": booking.Window.hhmm(w.end_minute),
                }
                for w in a.windows
            ],
        )


@router.post(
    "/v1/astrologer/status",
    access="astrologer",
    body=StatusIn,
    response=StatusOut,
    errors={403: "not_verified: only approved astrologers can go online"},
)
async def set_status(call: Call) -> StatusOut:
    """POST /v1/astrologer/status

    Go online or offline. Only verified astrologers can go online; online lasts while the app's
    live connection sends heartbeats (PRESENCE_TTL_SECONDS). The answer is `busy` during a
    consultation (set by the server, never by the app)."""
    status = await presence.set_status(
        call.services, call.principal.user_id, call.body(StatusIn).status
    )
    return StatusOut(status=status)  # type: ignore[arg-type]  # presence returns one of the three


@router.get("/v1/astrologer/status", access="astrologer", response=StatusOut)
async def get_status(call: Call) -> StatusOut:
    """GET /v1/astrologer/status

    Your current presence as users see it."""
    status = await presence.get_status(call.services.redis, call.principal.user_id)
    return StatusOut(status=status)


@router.put(
    "/v1/astrologer/availability",
    access="astrologer",
    body=AvailabilityIO,
    response=AvailabilityOut,
    errors={409: "profile_required"},
)
async def put_availability(call: Call) -> AvailabilityOut:
    """PUT /v1/astrologer/availability

    Replace your weekly hours: `{timezone, slots: [{weekday, start, end}]}` in your time zone.
    Users book SLOT_MINUTES slots cut from them; existing bookings are kept."""
    body = call.body(AvailabilityIO)
    windows = [booking.Window(s.weekday, _minutes(s.start), _minutes(s.end)) for s in body.slots]
    async with call.services.db.acquire() as conn:
        saved = await booking.set_availability(conn, call.principal.user_id, body.timezone, windows)
    return AvailabilityOut.of(saved)


@router.get("/v1/astrologer/availability", access="astrologer", response=AvailabilityOut)
async def get_availability(call: Call) -> AvailabilityOut:
    """GET /v1/astrologer/availability

    Your weekly hours."""
    return AvailabilityOut.of(
        await booking.get_availability(call.services.db, call.principal.user_id)
    )
