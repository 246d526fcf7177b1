"""An astrologer's onboarding: PUT /v1/astrologer/profile and verification documents."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from api.framework import Call, Router
from api.me import UploadIn, UploadOut
from api.models import Input, Output, RatesOut
from auth import profiles
from core import ratelimit
from core.errors import NotFound
from core.storage import STORAGE, Storage
from core.times import rfc3339

router = Router("astrologer")

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


class RatesIO(Input):
    chat: int | None = Field(None, description="per minute, minor units; null: not offered")
    voice: int | None = None
    video: int | None = None
    # Issue 16: a fixed price per written question (>= QUESTION_MIN_PRICE); null: not offered.
    question: int | None = Field(None, description="per question, minor units; null: no questions")


class ProfileIn(Input):
    display_name: str = Field(min_length=1, max_length=100)
    bio: str = Field("", max_length=4000)
    skills: list[str] = Field(default_factory=list, max_length=20)
    languages: list[str] = Field(default_factory=list, max_length=10)
    experience_years: int = Field(0, ge=0, le=80)
    rates: RatesIO

    @field_validator("skills")
    @classmethod
    def _skills(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip().lower() for v in value]
        if any(not 1 <= len(v) <= 40 for v in cleaned):
            raise ValueError("each skill 1 to 40 characters")
        return list(dict.fromkeys(cleaned))

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip().lower() for v in value]
        if any(not _LANGUAGE.match(v) for v in cleaned):
            raise ValueError("language codes like en, hi, ta")
        return list(dict.fromkeys(cleaned))


class AstrologerProfileOut(Output):
    id: str
    display_name: str
    bio: str
    skills: list[str]
    languages: list[str]
    experience_years: int
    rates: RatesOut
    verification: Literal["pending", "approved", "rejected"]
    verification_reason: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, p: profiles.AstrologerProfile) -> AstrologerProfileOut:
        return cls(
            id=str(p.user_id),
            display_name=p.display_name,
            bio=p.bio,
            skills=p.skills,
            languages=p.languages,
            experience_years=p.experience_years,
            rates=RatesOut(
                chat=p.rates.chat,
                voice=p.rates.voice,
                video=p.rates.video,
                question=p.rates.question,
            ),
            verification=p.verification,  # type: ignore[arg-type]  # the column's CHECK allows only these
            verification_reason=p.verification_reason,
            created_at=rfc3339(p.created_at),
            updated_at=rfc3339(p.updated_at),
        )


class DocumentIn(UploadIn):
    kind: Literal["id_proof", "certificate"]


class DocumentOut(Output):
    id: str
    kind: str
    content_type: str
    size: int
    download_url: str
    created_at: str

    @classmethod
    def of(cls, doc: profiles.Document, storage: Storage) -> DocumentOut:
        return cls(
            id=str(doc.id),
            kind=doc.kind,
            content_type=doc.content_type,
            size=doc.size_bytes,
            download_url=storage.download_url(doc.storage_key),
            created_at=rfc3339(doc.created_at),
        )


class DocumentUploadOut(UploadOut):
    document_id: str


class DocumentsOut(Output):
    items: list[DocumentOut]


@router.put(
    "/v1/astrologer/profile", access="astrologer", body=ProfileIn, response=AstrologerProfileOut
)
async def put_profile(call: Call) -> AstrologerProfileOut:
    """PUT /v1/astrologer/profile

    Create or replace the caller's profile. Rates are per minute in minor units within
    MIN_RATE..MAX_RATE; null means that type is not offered. A new profile (or a rejected one saved
    again) is `pending` until an admin approves it; only approved astrologers are listed. An
    approved profile goes back to `pending` (unlisted until approved again) when its display name
    changes, a rate rises by more than RATE_REVIEW_STEP_PERCENT (default 20) or a type is newly
    offered; a new photo (POST /v1/me/avatar) does the same."""
    body = call.body(ProfileIn)
    profile = await profiles.save_astrologer_profile(
        call.services.db,
        call.services.settings,
        call.principal.user_id,
        display_name=body.display_name,
        bio=body.bio,
        skills=body.skills,
        languages=body.languages,
        experience_years=body.experience_years,
        rates=profiles.Rates(
            body.rates.chat, body.rates.voice, body.rates.video, body.rates.question
        ),
    )
    return AstrologerProfileOut.of(profile)


@router.get("/v1/astrologer/profile", access="astrologer", response=AstrologerProfileOut)
async def get_profile(call: Call) -> AstrologerProfileOut:
    """GET /v1/astrologer/profile

    The caller's own profile with its verification state and any rejection reason."""
    profile = await profiles.get_astrologer_profile(call.services.db, call.principal.user_id)
    if profile is None:
        raise NotFound("no profile yet; PUT one first")
    return AstrologerProfileOut.of(profile)


@router.post(
    "/v1/astrologer/documents",
    access="astrologer",
    body=DocumentIn,
    response=DocumentUploadOut,
    rate_limit=ratelimit.UPLOAD,
)
async def upload_document(call: Call) -> DocumentUploadOut:
    """POST /v1/astrologer/documents

    A presigned upload for a verification document: PDF, JPEG, PNG, WebP or HEIC, at most 10 MiB."""
    body = call.body(DocumentIn)
    doc = await profiles.add_document(
        call.services.db, call.principal.user_id, body.kind, body.content_type, body.size
    )
    up = call.request.app[STORAGE].presign_upload(doc.storage_key, doc.content_type, body.size)
    return DocumentUploadOut(document_id=str(doc.id), **UploadOut.of(up).model_dump())


@router.get("/v1/astrologer/documents", access="astrologer", response=DocumentsOut)
async def list_documents(call: Call) -> DocumentsOut:
    """GET /v1/astrologer/documents

    The caller's documents, newest first, with download URLs."""
    docs = await profiles.documents_of(call.services.db, [call.principal.user_id])
    storage = call.request.app[STORAGE]
    return DocumentsOut(items=[DocumentOut.of(d, storage) for d in docs])


@router.get("/v1/astrologer/documents/{id}", access="astrologer", response=DocumentOut)
async def get_document(call: Call) -> DocumentOut:
    """GET /v1/astrologer/documents/{id}

    One of the caller's documents; another astrologer's is 404."""
    doc = await profiles.get_document(call.services.db, call.principal.user_id, call.uuid("id"))
    return DocumentOut.of(doc, call.request.app[STORAGE])
