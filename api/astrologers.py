"""Discovery: the astrologer listing, an astrologer's page, reviews, free slots and the waitlist."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator

from api.framework import Call, Router
from api.models import (
    Input,
    ListQuery,
    Output,
    Page,
    RatesOut,
    decode_cursor,
    encode_cursor,
    time_id_cursor,
)
from consultations import booking, discovery, presence, reviews, waitlist
from core.errors import NotFound
from core.storage import STORAGE
from core.times import rfc3339

router = Router("astrologers")

ConsultationType = Literal["chat", "voice", "video"]


class ListIn(ListQuery):
    skill: str | None = Field(None, min_length=1, max_length=40)
    language: str | None = Field(None, min_length=2, max_length=3)
    type: ConsultationType | None = Field(None, description="only those offering this type")
    online: bool | None = Field(None, description="true: only astrologers online or busy now")
    min_rating: Decimal | None = Field(None, ge=0, le=5)
    max_rate: int | None = Field(None, ge=0, description="per minute, minor units")
    q: str | None = Field(None, min_length=1, max_length=100, description="name search")
    sort: discovery.Sort = discovery.DEFAULT_SORT

    @field_validator("skill", "language")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value


class RatingOut(Output):
    average: float
    count: int


class AstrologerOut(Output):
    id: str
    display_name: str
    skills: list[str]
    languages: list[str]
    experience_years: int
    rates: RatesOut
    rating: RatingOut
    status: Literal["online", "busy", "offline"]
    avatar_url: str | None
    consultations_count: int

    @classmethod
    def of(cls, a: discovery.Astrologer, status: str, call: Call) -> dict[str, Any]:
        storage = call.request.app.get(STORAGE)
        return {
            "id": str(a.id),
            "display_name": a.display_name,
            "skills": a.skills,
            "languages": a.languages,
            "experience_years": a.experience_years,
            "rates": {
                "chat": a.rate_chat,
                "voice": a.rate_voice,
                "video": a.rate_video,
                "question": a.rate_question,  # issue 16
            },
            "rating": {"average": float(a.rating_avg), "count": a.rating_count},
            "status": status,
            "avatar_url": storage.download_url(a.avatar_key)
            if storage is not None and a.avatar_key
            else None,
            "consultations_count": a.consultations_count,
        }


class ReviewUserOut(Output):
    id: str
    name: str | None


class ReviewOut(Output):
    id: str
    consultation_id: str | None  # issue 16: null for the review of a question
    question_id: str | None = None  # issue 16
    user: ReviewUserOut
    rating: int
    comment: str | None
    created_at: str

    @classmethod
    def of(cls, r: reviews.Review) -> ReviewOut:
        return cls.model_validate(r.to_public())


class AstrologerDetailOut(AstrologerOut):
    bio: str
    timezone: str
    recent_reviews: list[ReviewOut]


class SlotOut(Output):
    start: str
    end: str


class SlotsIn(Input):
    date: date


class SlotsOut(Output):
    date: str
    timezone: str
    slot_minutes: int
    slots: list[SlotOut]


class WaitlistIn(Input):
    type: ConsultationType = "chat"


class WaitlistOut(Output):
    id: str
    astrologer_id: str
    type: str
    status: Literal["waiting", "offered"]
    position: int
    offer_expires_at: str | None

    @classmethod
    def of(cls, place: waitlist.Place) -> WaitlistOut:
        return cls(
            id=str(place.id),
            astrologer_id=str(place.astrologer_id),
            type=place.type,
            status=place.status,  # type: ignore[arg-type]  # PLACE selects only open entries
            position=place.position,
            offer_expires_at=rfc3339(place.offer_expires_at),
        )


RECENT_REVIEWS = 5  # what the astrologer's page shows; the rest is paginated under /reviews
# Built once: subscripting a generic model per request costs a cache lookup each time.
AstrologerPage = Page[AstrologerOut]


@router.get("/v1/astrologers", access="public", query=ListIn, response=AstrologerPage)
async def list_astrologers(call: Call) -> Page[AstrologerOut]:
    """GET /v1/astrologers

    Approved astrologers. Filters: skill, language, type, online=true (online or busy now),
    min_rating, max_rate (the rate of `type`, else the cheapest offered), q (name contains).
    sort=rating|rate_asc|rate_desc|experience|popular (default popular, most consultations).
    Keyset pages: pass `next_cursor` back as `cursor` with the same filters and sort."""
    query = call.query(ListIn)
    filters = discovery.Filters(
        skill=query.skill,
        language=query.language,
        type=query.type,
        online=bool(query.online),
        min_rating=query.min_rating,
        max_rate=query.max_rate,
        q=query.q,
    )
    after = (
        discovery.parse_cursor(decode_cursor(query.cursor, 3), query.sort) if query.cursor else None
    )
    items, more = await discovery.search(
        call.services.db, filters, sort=query.sort, after=after, limit=query.limit
    )
    statuses = await presence.get_statuses(call.services.redis, [a.id for a in items])
    next_cursor = (
        encode_cursor(*discovery.cursor_values(items[-1], query.sort, query.type)) if more else None
    )
    if query.online:  # drop the few whose heartbeats stopped since the last presence sweep
        items = [a for a in items if statuses[a.id] != "offline"]
    # One validation of plain dicts (pydantic-core) rather than a model construction per item.
    return AstrologerPage.model_validate(
        {
            "items": [AstrologerOut.of(a, statuses[a.id], call) for a in items],
            "next_cursor": next_cursor,
        }
    )


@router.get("/v1/astrologers/{id}", access="public", response=AstrologerDetailOut)
async def get_astrologer(call: Call) -> AstrologerDetailOut:
    """GET /v1/astrologers/{id}

    An approved astrologer with bio and the newest reviews. An astrologer's id is their user id."""
    astrologer_id = call.uuid("id")
    a = await discovery.get(call.services.db, astrologer_id)
    status = await presence.get_status(call.services.redis, astrologer_id)
    recent = await reviews.list_for(
        call.services.db, astrologer_id, after=None, limit=RECENT_REVIEWS
    )
    return AstrologerDetailOut(
        **AstrologerOut.of(a, status, call),
        bio=a.bio,
        timezone=a.timezone,
        recent_reviews=[ReviewOut.of(r) for r in recent],
    )


@router.get(
    "/v1/astrologers/{id}/reviews", access="public", query=ListQuery, response=Page[ReviewOut]
)
async def list_reviews(call: Call) -> Page[ReviewOut]:
    """GET /v1/astrologers/{id}/reviews

    The astrologer's reviews, newest first, paginated."""
    query = call.query(ListQuery)
    astrologer_id = call.uuid("id")
    await discovery.get(call.services.db, astrologer_id)  # 404 for an unlisted astrologer
    after = time_id_cursor(query.cursor)
    found = await reviews.list_for(
        call.services.db, astrologer_id, after=after, limit=query.limit + 1
    )
    page = found[: query.limit]
    next_cursor = None
    if len(found) > query.limit:
        next_cursor = encode_cursor(page[-1].created_at.isoformat(), str(page[-1].id))
    return Page[ReviewOut](items=[ReviewOut.of(r) for r in page], next_cursor=next_cursor)


@router.get("/v1/astrologers/{id}/slots", access="public", query=SlotsIn, response=SlotsOut)
async def get_slots(call: Call) -> SlotsOut:
    """GET /v1/astrologers/{id}/slots?date=YYYY-MM-DD

    Free slots of that date in the astrologer's time zone (SLOT_MINUTES long), as RFC 3339 UTC
    times; pass a slot's `start` as `scheduled_at` to book it."""
    day = call.query(SlotsIn).date
    astrologer_id = call.uuid("id")
    settings = call.services.settings
    slots = await booking.free_slots(
        call.services.db, settings, astrologer_id, day, datetime.now(UTC)
    )
    availability = await booking.get_availability(call.services.db, astrologer_id)
    return SlotsOut(
        date=day.isoformat(),
        timezone=availability.timezone,
        slot_minutes=settings.slot_minutes,
        slots=[SlotOut(start=rfc3339(s.start) or "", end=rfc3339(s.end) or "") for s in slots],
    )


@router.post(
    "/v1/astrologers/{id}/waitlist",
    access="user",
    body=WaitlistIn,
    response=WaitlistOut,
    status=201,
    errors={
        402: "insufficient_balance",
        409: "astrologer_offline, astrologer_available (free: request them)",
    },
)
async def join_waitlist(call: Call) -> WaitlistOut:
    """POST /v1/astrologers/{id}/waitlist

    Join a busy astrologer's queue → your `position` (joining again answers the same place).
    When the astrologer is free, the first in line gets a `waitlist:offer` event and may request
    them until `expires_at`; the balance is checked again then."""
    place = await waitlist.join(
        call.services,
        user_id=call.principal.user_id,
        astrologer_id=call.uuid("id"),
        type_=call.body(WaitlistIn).type,
    )
    return WaitlistOut.of(place)


@router.get("/v1/astrologers/{id}/waitlist", access="user", response=WaitlistOut)
async def get_waitlist_place(call: Call) -> WaitlistOut:
    """GET /v1/astrologers/{id}/waitlist

    Your current place in the astrologer's queue; 404 when you are not in it."""
    place = await waitlist.position(
        call.services, user_id=call.principal.user_id, astrologer_id=call.uuid("id")
    )
    if place is None:
        raise NotFound("you are not in this queue")
    return WaitlistOut.of(place)


@router.delete("/v1/astrologers/{id}/waitlist", access="user", status=204)
async def leave_waitlist(call: Call) -> None:
    """DELETE /v1/astrologers/{id}/waitlist

    Leave the queue (204 even when you were not in it)."""
    await waitlist.leave(
        call.services, user_id=call.principal.user_id, astrologer_id=call.uuid("id")
    )
