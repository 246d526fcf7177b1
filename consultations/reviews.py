"""Reviews and complaints of consultations.

A review is by the consultation's user, of a `completed` consultation, once (UNIQUE on the
consultation: a second, even racing, is 409 already_reviewed). The astrologer's rating aggregates
(`rating_sum`, `rating_count`; `rating_avg` is generated from them) move in the same transaction
by relative increments, which the row lock serialises, so concurrent reviews all count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from consultations import lifecycle
from core.errors import Conflict, NotFound
from core.times import rfc3339
from db.pool import Conn, Executor


class AlreadyReviewed(Conflict):
    code, message = "already_reviewed", "this consultation has already been reviewed"


class AlreadyComplained(Conflict):
    code, message = "already_complained", "a complaint about this consultation is already open"


@dataclass(frozen=True)
class Review:
    id: uuid.UUID
    consultation_id: uuid.UUID | None  # issue 16: None for a review of a question
    user_id: uuid.UUID
    user_name: str | None
    astrologer_id: uuid.UUID
    rating: int
    comment: str | None
    created_at: datetime
    question_id: uuid.UUID | None = None  # issue 16: reviews of answered questions count too

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Review:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "consultation_id": str(self.consultation_id) if self.consultation_id else None,
            "question_id": str(self.question_id) if self.question_id else None,  # issue 16
            "user": {"id": str(self.user_id), "name": self.user_name},
            "rating": self.rating,
            "comment": self.comment,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True)
class Complaint:
    id: uuid.UUID
    consultation_id: uuid.UUID
    reason: str
    status: str
    created_at: datetime


REVIEW_COLUMNS = """
r.id, r.consultation_id, r.user_id, u.name AS user_name, r.astrologer_id, r.rating, r.comment,
r.created_at, r.question_id
"""
INSERT_REVIEW = f"""
WITH r AS (
    INSERT INTO reviews (consultation_id, user_id, astrologer_id, rating, comment)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (consultation_id) DO NOTHING
    RETURNING *
)
SELECT {REVIEW_COLUMNS} FROM r JOIN users u ON u.id = r.user_id
"""
ADD_RATING = """
UPDATE astrologer_profiles
   SET rating_sum = rating_sum + $2, rating_count = rating_count + 1
 WHERE user_id = $1
"""
# Newest first, keyset on (created_at, id): reviews_astrologer_recent answers it as a range scan.
LIST_REVIEWS = f"""
SELECT {REVIEW_COLUMNS} FROM reviews r JOIN users u ON u.id = r.user_id
 WHERE r.astrologer_id = $1
   AND ($2::timestamptz IS NULL OR (r.created_at, r.id) < ($2, $3::uuid))
 ORDER BY r.created_at DESC, r.id DESC
 LIMIT $4
"""
INSERT_COMPLAINT = """
INSERT INTO complaints (consultation_id, user_id, reason) VALUES ($1, $2, $3)
ON CONFLICT (consultation_id) DO NOTHING
RETURNING id, consultation_id, reason, status, created_at
"""


async def _own(
    conn: Executor, consultation_id: uuid.UUID, user_id: uuid.UUID
) -> lifecycle.Consultation:
    c = await lifecycle.get(conn, consultation_id)
    if c is None or c.user_id != user_id:
        raise NotFound("no such consultation")
    return c


async def submit(
    conn: Conn, *, consultation_id: uuid.UUID, user_id: uuid.UUID, rating: int, comment: str | None
) -> Review:
    """The user reviews their completed consultation, once; the astrologer's rating moves in the
    same transaction."""
    async with conn.transaction():
        c = await _own(conn, consultation_id, user_id)
        if c.status != "completed":
            raise lifecycle.InvalidState(c.status, "only a completed consultation can be reviewed")
        row = await conn.fetchrow(INSERT_REVIEW, c.id, user_id, c.astrologer_id, rating, comment)
        if row is None:
            raise AlreadyReviewed()
        await conn.execute(ADD_RATING, c.astrologer_id, rating)
    return Review.from_row(row)


async def list_for(
    conn: Executor,
    astrologer_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Review]:
    rows = await conn.fetch(
        LIST_REVIEWS,
        astrologer_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [Review.from_row(r) for r in rows]


async def complain(
    conn: Conn, *, consultation_id: uuid.UUID, user_id: uuid.UUID, reason: str
) -> Complaint:
    """Record the user's complaint (a request for a refund review) about a consultation that took
    place (active or completed); one per consultation."""
    c = await _own(conn, consultation_id, user_id)
    if c.started_at is None:
        raise lifecycle.InvalidState(c.status, "a complaint needs a session")
    row = await conn.fetchrow(INSERT_COMPLAINT, c.id, user_id, reason)
    if row is None:
        raise AlreadyComplained()
    return Complaint(
        row["id"], row["consultation_id"], row["reason"], row["status"], row["created_at"]
    )
