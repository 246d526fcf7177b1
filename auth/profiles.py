"""Profiles: a person's own details (`/v1/me`) and an astrologer's onboarding (profile, documents).

Only approved astrologers are listed or may go online; a new profile starts `pending`, and a
rejected one goes back to `pending` when its owner saves it again (a resubmission). Saving an
approved profile keeps it approved (bio, skills, a lower rate change at once), except what users
trust without reading (issue 14): a new display name, a new photo, a rate raised by more than
RATE_REVIEW_STEP_PERCENT, or a type newly offered send it back to `pending` until an admin approves
it again. The decision is taken in the same statement as the write, on the row's current values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time

import asyncpg

from core.errors import NotFound, ValidationFailed
from core.settings import Settings
from db import identity
from db.pool import Executor

IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/heic": "heic"}
DOCUMENT_TYPES = {"application/pdf": "pdf", **IMAGE_TYPES}
AVATAR_MAX_BYTES = 5 * 1024 * 1024  # API.md: images only, <= 5 MiB
DOCUMENT_MAX_BYTES = 10 * 1024 * 1024  # API.md: PDF or image, <= 10 MiB

# Each field has a "was it sent" flag, so PATCH can set a field to null and leave others alone,
# with one static statement.
UPDATE_ME = f"""
UPDATE users SET
    name        = CASE WHEN $2  THEN $3  ELSE name END,
    gender      = CASE WHEN $4  THEN $5  ELSE gender END,
    birth_date  = CASE WHEN $6  THEN $7::date ELSE birth_date END,
    birth_time  = CASE WHEN $8  THEN $9::time ELSE birth_time END,
    birth_place = CASE WHEN $10 THEN $11 ELSE birth_place END,
    languages   = CASE WHEN $12 THEN $13::text[] ELSE languages END,
    updated_at  = now()
 WHERE id = $1
RETURNING {identity.USER_COLUMNS}
"""
# An approved astrologer's new photo is reviewed again before they are listed with it (issue 14):
# the same statement sends the profile back to `pending`.
SET_AVATAR = f"""
WITH review AS (
    UPDATE astrologer_profiles SET verification = 'pending', updated_at = now()
     WHERE user_id = $1 AND verification = 'approved'
)
UPDATE users SET avatar_key = $2, updated_at = now() WHERE id = $1 RETURNING {identity.USER_COLUMNS}
"""

PROFILE_COLUMNS = (
    "user_id, display_name, bio, skills, languages, experience_years, rate_chat, rate_voice, "
    "rate_video, verification, verification_reason, verified_at, created_at, updated_at, "
    "rate_question"  # issue 16
)
# A rate that needs a new review (issue 14): newly offered, or raised by more than $11 percent.
_RAISED = (
    "(EXCLUDED.rate_{kind} IS NOT NULL AND (p.rate_{kind} IS NULL"
    " OR EXCLUDED.rate_{kind} * 100 > p.rate_{kind} * (100 + $11::int)))"
)
UPSERT_PROFILE = f"""
INSERT INTO astrologer_profiles AS p (user_id, display_name, bio, skills, languages,
                                      experience_years, rate_chat, rate_voice, rate_video,
                                      rate_question)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (user_id) DO UPDATE SET
    display_name = EXCLUDED.display_name, bio = EXCLUDED.bio, skills = EXCLUDED.skills,
    languages = EXCLUDED.languages, experience_years = EXCLUDED.experience_years,
    rate_chat = EXCLUDED.rate_chat, rate_voice = EXCLUDED.rate_voice,
    rate_video = EXCLUDED.rate_video, rate_question = EXCLUDED.rate_question,
    verification = CASE
        WHEN p.verification = 'rejected' THEN 'pending'
        WHEN p.verification = 'approved' AND (
            EXCLUDED.display_name IS DISTINCT FROM p.display_name
            OR {_RAISED.format(kind="chat")} OR {_RAISED.format(kind="voice")}
            OR {_RAISED.format(kind="video")} OR {_RAISED.format(kind="question")}
        ) THEN 'pending'
        ELSE p.verification END,
    updated_at = now()
RETURNING {PROFILE_COLUMNS}
"""
GET_PROFILE = f"SELECT {PROFILE_COLUMNS} FROM astrologer_profiles WHERE user_id = $1"

DOCUMENT_COLUMNS = "id, astrologer_id, kind, storage_key, content_type, size_bytes, created_at"
INSERT_DOCUMENT = f"""
INSERT INTO astrologer_documents (id, astrologer_id, kind, storage_key, content_type, size_bytes)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {DOCUMENT_COLUMNS}
"""
LIST_DOCUMENTS = f"""
SELECT {DOCUMENT_COLUMNS} FROM astrologer_documents
 WHERE astrologer_id = ANY($1::uuid[]) ORDER BY created_at DESC, id
"""
# Scoped by owner: another astrologer's document is simply not found.
GET_DOCUMENT = f"""
SELECT {DOCUMENT_COLUMNS} FROM astrologer_documents WHERE id = $1 AND astrologer_id = $2
"""


@dataclass(frozen=True)
class Rates:
    chat: int | None
    voice: int | None
    video: int | None
    question: int | None = None  # issue 16: a fixed price per written question; None: not offered


@dataclass(frozen=True)
class AstrologerProfile:
    user_id: uuid.UUID
    display_name: str
    bio: str
    skills: list[str]
    languages: list[str]
    experience_years: int
    rates: Rates
    verification: str
    verification_reason: str | None
    verified_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AstrologerProfile:
        return cls(
            user_id=row["user_id"],
            display_name=row["display_name"],
            bio=row["bio"],
            skills=list(row["skills"]),
            languages=list(row["languages"]),
            experience_years=row["experience_years"],
            rates=Rates(
                row["rate_chat"], row["rate_voice"], row["rate_video"], row["rate_question"]
            ),
            verification=row["verification"],
            verification_reason=row["verification_reason"],
            verified_at=row["verified_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class Document:
    id: uuid.UUID
    astrologer_id: uuid.UUID
    kind: str
    storage_key: str
    content_type: str
    size_bytes: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Document:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class MeChanges:
    """What a PATCH /v1/me sent: only the fields in `fields` change (None clears one)."""

    fields: frozenset[str]
    name: str | None = None
    gender: str | None = None
    birth_date: date | None = None
    birth_time: time | None = None
    birth_place: str | None = None
    languages: list[str] | None = None


async def update_me(conn: Executor, user_id: uuid.UUID, changes: MeChanges) -> identity.User:
    def sent(name: str) -> bool:
        return name in changes.fields

    row = await conn.fetchrow(
        UPDATE_ME,
        user_id,
        sent("name"), changes.name,
        sent("gender"), changes.gender,
        sent("birth_date"), changes.birth_date,
        sent("birth_time"), changes.birth_time,
        sent("birth_place"), changes.birth_place,
        sent("languages") and changes.languages is not None, changes.languages or [],
    )  # fmt: skip
    if row is None:
        raise NotFound()
    return identity.User.from_row(row)


def check_upload(content_type: str, size: int, allowed: dict[str, str], max_bytes: int) -> str:
    """The file extension for an allowed upload; 422 otherwise."""
    ext = allowed.get(content_type.lower())
    if ext is None:
        raise ValidationFailed({"content_type": "one of " + ", ".join(sorted(allowed))})
    if not 1 <= size <= max_bytes:
        raise ValidationFailed({"size": f"between 1 and {max_bytes} bytes"})
    return ext


async def start_avatar_upload(
    conn: Executor, user_id: uuid.UUID, content_type: str, size: int
) -> str:
    """The storage key the new avatar goes to. It becomes the user's avatar at once: the client
    uploads right after, and until it does the old picture is simply gone."""
    ext = check_upload(content_type, size, IMAGE_TYPES, AVATAR_MAX_BYTES)
    key = f"avatars/{user_id}/{uuid.uuid4()}.{ext}"
    await conn.execute(SET_AVATAR, user_id, key)
    return key


def check_rates(settings: Settings, rates: Rates) -> None:
    problems: dict[str, str] = {}
    for kind in ("chat", "voice", "video"):
        rate = getattr(rates, kind)
        if rate is not None and not settings.min_rate <= rate <= settings.max_rate:
            problems[f"rates.{kind}"] = (
                f"between {settings.min_rate} and {settings.max_rate} minor units a minute"
            )
    question_max = settings.max_rate * 60  # issue 16: at most an hour at the highest rate
    if rates.question is not None and not settings.question_min_price <= rates.question <= (
        question_max
    ):
        problems["rates.question"] = (
            f"between {settings.question_min_price} and {question_max} minor units a question"
        )
    if rates.chat is None and rates.voice is None and rates.video is None:
        problems["rates"] = "offer at least one of chat, voice, video"
    if problems:
        raise ValidationFailed(problems)


async def save_astrologer_profile(
    conn: Executor,
    settings: Settings,
    user_id: uuid.UUID,
    *,
    display_name: str,
    bio: str,
    skills: list[str],
    languages: list[str],
    experience_years: int,
    rates: Rates,
) -> AstrologerProfile:
    check_rates(settings, rates)
    row = await conn.fetchrow(
        UPSERT_PROFILE,
        user_id, display_name, bio, skills, languages, experience_years,
        rates.chat, rates.voice, rates.video, rates.question, settings.rate_review_step_percent,
    )  # fmt: skip
    assert row is not None
    return AstrologerProfile.from_row(row)


async def get_astrologer_profile(conn: Executor, user_id: uuid.UUID) -> AstrologerProfile | None:
    row = await conn.fetchrow(GET_PROFILE, user_id)
    return AstrologerProfile.from_row(row) if row else None


async def add_document(
    conn: Executor, astrologer_id: uuid.UUID, kind: str, content_type: str, size: int
) -> Document:
    """Record a verification document; the caller hands out the upload URL for its key."""
    ext = check_upload(content_type, size, DOCUMENT_TYPES, DOCUMENT_MAX_BYTES)
    doc_id = uuid.uuid4()
    key = f"documents/{astrologer_id}/{doc_id}.{ext}"
    row = await conn.fetchrow(
        INSERT_DOCUMENT, doc_id, astrologer_id, kind, key, content_type.lower(), size
    )
    assert row is not None
    return Document.from_row(row)


async def documents_of(conn: Executor, astrologer_ids: list[uuid.UUID]) -> list[Document]:
    return [Document.from_row(r) for r in await conn.fetch(LIST_DOCUMENTS, astrologer_ids)]


async def get_document(conn: Executor, astrologer_id: uuid.UUID, doc_id: uuid.UUID) -> Document:
    row = await conn.fetchrow(GET_DOCUMENT, doc_id, astrologer_id)
    if row is None:
        raise NotFound("no such document")
    return Document.from_row(row)


def group_documents(docs: list[Document]) -> dict[uuid.UUID, list[Document]]:
    grouped: dict[uuid.UUID, list[Document]] = {}
    for doc in docs:
        grouped.setdefault(doc.astrologer_id, []).append(doc)
    return grouped
