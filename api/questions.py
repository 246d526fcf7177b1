"""Questions (e-mail consultations): ask, list, read, answer, cancel, review (issue 16)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field

from api.framework import Call, Router
from api.models import Input, ListQuery, Output, encode_cursor, time_id_cursor
from api.profiles import ProfileOut
from core import ratelimit
from questions import service

router = Router("questions")

Status = Literal["open", "answered", "expired", "cancelled"]


class AskIn(Input):
    astrologer_id: uuid.UUID
    text: str = Field(min_length=1, max_length=service.MAX_TEXT)
    profile_ids: list[uuid.UUID] | None = Field(
        None,
        max_length=2,
        description="your birth profiles to show the astrologer (default: your `self` profile "
        "when it has a birth date); a frozen copy is kept on the question",
    )


class AnswerIn(Input):
    text: str = Field(min_length=1, max_length=service.MAX_ANSWER)


class ReviewIn(Input):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)


class ListIn(ListQuery):
    status: Status | None = None


class PartyRef(Output):
    id: str
    name: str | None = None
    display_name: str | None = None


class QuestionOut(Output):
    id: str
    user: PartyRef
    astrologer: PartyRef
    user_id: str
    astrologer_id: str
    status: Status
    text: str
    answer: str | None = Field(description="the astrologer's answer once given")
    price: int = Field(description="held from the wallet when asked, charged when answered")
    currency: str
    answer_due_at: str = Field(description="an open question expires then (hold released)")
    answered_at: str | None
    closed_at: str | None
    created_at: str
    profiles: list[ProfileOut] | None = Field(
        None,
        description="the frozen birth profiles: present only for its astrologer, until "
        "PROFILE_VISIBLE_DAYS after it closed",
    )


class AskedOut(Output):
    """The question just asked, without its text (kept only encrypted)."""

    id: str
    user: PartyRef
    astrologer: PartyRef
    user_id: str
    astrologer_id: str
    status: Status
    answer: str | None
    price: int
    currency: str
    answer_due_at: str
    answered_at: str | None
    closed_at: str | None
    created_at: str


class QuestionPage(Output):
    items: list[QuestionOut]
    next_cursor: str | None = None


class QuestionReviewOut(Output):
    id: str
    question_id: str
    rating: int
    comment: str | None
    created_at: str


def _out(call: Call, q: service.Question) -> dict[str, Any]:
    """The viewer's view, validated; `profiles` absent (not null) when not theirs to see."""
    data = q.to_public(
        call.principal.user_id, visible_days=call.services.settings.profile_visible_days
    )
    return QuestionOut.model_validate(data).model_dump(mode="json", exclude_unset=True)


@router.post(
    "/v1/questions",
    access="user",
    body=AskIn,
    response=AskedOut,
    status=201,
    idempotent=True,
    errors={
        402: "insufficient_balance",
        404: "no such astrologer",
        409: "questions_not_offered, idempotency_conflict",
    },
    rate_limit=ratelimit.QUESTION,
)
async def ask_question(call: Call) -> dict[str, Any]:
    """POST /v1/questions

    Ask an astrologer who offers questions (`rates.question`) a written question (at most 2000
    characters). Its price is held from the wallet until it is answered (then charged), cancelled
    or expired after QUESTION_ANSWER_HOURS (then released). Honours `Idempotency-Key`: the same
    key and question return the first answer; another question with that key is 409. The answer
    leaves out the text (read it with GET): idempotent answers are stored, texts only encrypted."""
    body = call.body(AskIn)
    q, _ = await service.ask(
        call.services,
        user_id=call.principal.user_id,
        astrologer_id=body.astrologer_id,
        text=body.text,
        profile_ids=body.profile_ids,
        idempotency_key=call.request.headers.get("Idempotency-Key"),
    )
    out = _out(call, q)
    out.pop("text")
    return out


@router.get("/v1/questions", access=("user", "astrologer"), query=ListIn, response=QuestionPage)
async def list_questions(call: Call) -> dict[str, Any]:
    """GET /v1/questions

    Mine, newest first: the questions I asked, or for an astrologer their inbox; filter
    `status`."""
    query = call.query(ListIn)
    found = await service.list_mine(
        call.services.db,
        call.principal.user_id,
        as_astrologer=call.principal.role == "astrologer",
        status=query.status,
        after=time_id_cursor(query.cursor),
        limit=query.limit + 1,
    )
    page = found[: query.limit]
    next_cursor = None
    if len(found) > query.limit:
        next_cursor = encode_cursor(page[-1].created_at.isoformat(), str(page[-1].id))
    return {"items": [_out(call, q) for q in page], "next_cursor": next_cursor}


@router.get("/v1/questions/{id}", access="authenticated", response=QuestionOut)
async def get_question(call: Call) -> dict[str, Any]:
    """GET /v1/questions/{id}

    A question of yours (asked or received; any, for an admin), with its answer once given."""
    q = await service.get_for(
        call.services.db,
        call.uuid("id"),
        call.principal.user_id,
        admin=call.principal.role == "admin",
    )
    return _out(call, q)


@router.post(
    "/v1/questions/{id}/answer",
    access="astrologer",
    body=AnswerIn,
    response=QuestionOut,
    errors={409: "invalid_state, question_expired"},
)
async def answer_question(call: Call) -> dict[str, Any]:
    """POST /v1/questions/{id}/answer

    Its astrologer answers (at most 8000 characters) while it is open: the held price is charged
    and split like a minute (the astrologer's share to earnings); the user is told (inbox, push,
    and e-mail when their address is verified)."""
    q = await service.answer(
        call.services,
        astrologer_id=call.principal.user_id,
        question_id=call.uuid("id"),
        text=call.body(AnswerIn).text,
    )
    return _out(call, q)


@router.post(
    "/v1/questions/{id}/cancel",
    access="user",
    response=QuestionOut,
    errors={409: "invalid_state"},
)
async def cancel_question(call: Call) -> dict[str, Any]:
    """POST /v1/questions/{id}/cancel

    Its user withdraws it while open: the held price is released."""
    q = await service.cancel(
        call.services, user_id=call.principal.user_id, question_id=call.uuid("id")
    )
    return _out(call, q)


@router.post(
    "/v1/questions/{id}/review",
    access="user",
    body=ReviewIn,
    response=QuestionReviewOut,
    status=201,
    errors={409: "already_reviewed, invalid_state"},
    rate_limit=ratelimit.REVIEW,
)
async def review_question(call: Call) -> QuestionReviewOut:
    """POST /v1/questions/{id}/review

    Its user rates an answered question, once; it counts toward the astrologer's rating like a
    consultation's review."""
    body = call.body(ReviewIn)
    result = await service.review(
        call.services,
        user_id=call.principal.user_id,
        question_id=call.uuid("id"),
        rating=body.rating,
        comment=body.comment,
    )
    return QuestionReviewOut.model_validate(result)
