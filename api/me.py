"""GET/PATCH /v1/me and the avatar upload."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Literal

from pydantic import Field, field_validator

from api.framework import Call, Router
from api.models import Input, Output
from api.storage import STORAGE, PresignedUpload, Storage
from auth import profiles
from core.errors import NotFound
from db import identity

router = Router("me")

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")  # ISO 639-1/639-3 codes: en, hi, ta, mai


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UserOut(Output):
    id: str
    phone: str = Field(examples=["+919812345678"])
    role: Literal["user", "astrologer", "admin"]
    name: str | None
    gender: Literal["male", "female", "other"] | None
    birth_date: str | None = Field(examples=["1990-04-21"])
    birth_time: str | None = Field(examples=["06:30"])
    birth_place: str | None
    languages: list[str]
    avatar_url: str | None
    created_at: str = Field(examples=["2026-11-25T14:03:00Z"])

    @classmethod
    def of(cls, user: identity.User, storage: Storage) -> UserOut:
        return cls(
            id=str(user.id),
            phone=user.phone,
            role=user.role,
            name=user.name,
            gender=user.gender,  # type: ignore[arg-type]  # the column's CHECK allows only these
            birth_date=user.birth_date.isoformat() if user.birth_date else None,
            birth_time=user.birth_time.strftime("%H:%M") if user.birth_time else None,
            birth_place=user.birth_place,
            languages=list(user.languages),
            avatar_url=storage.download_url(user.avatar_key) if user.avatar_key else None,
            created_at=rfc3339(user.created_at),
        )


class MePatch(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    gender: Literal["male", "female", "other"] | None = None
    birth_date: str | None = Field(None, description="YYYY-MM-DD", examples=["1990-04-21"])
    birth_time: str | None = Field(None, description="HH:MM, 24-hour", examples=["06:30"])
    birth_place: str | None = Field(None, min_length=1, max_length=200)
    languages: list[str] | None = Field(None, max_length=10)

    @field_validator("birth_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("use YYYY-MM-DD")
        try:
            parsed = date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("not a real date") from exc
        if parsed.year < 1900 or parsed > datetime.now(UTC).date():
            raise ValueError("between 1900-01-01 and today")
        return value

    @field_validator("birth_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError("use HH:MM, 00:00 to 23:59")
        return value

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [v.strip().lower() for v in value]
        if any(not _LANGUAGE.match(v) for v in cleaned):
            raise ValueError("language codes like en, hi, ta")
        return list(dict.fromkeys(cleaned))


class UploadIn(Input):
    content_type: str = Field(max_length=100, examples=["image/jpeg"])
    size: int = Field(gt=0, description="exact size of the file in bytes")


class UploadOut(Output):
    upload_url: str
    method: str = Field(examples=["PUT"])
    headers: dict[str, str]
    key: str
    expires_in: int

    @classmethod
    def of(cls, up: PresignedUpload) -> UploadOut:
        return cls(
            upload_url=up.url,
            method=up.method,
            headers=up.headers,
            key=up.key,
            expires_in=up.expires_in,
        )


@router.get("/v1/me", access="authenticated", response=UserOut)
async def get_me(call: Call) -> UserOut:
    """GET /v1/me

    The caller's own profile."""
    user = await identity.get_user(call.services.db, call.principal.user_id)
    if user is None:
        raise NotFound()
    return UserOut.of(user, call.request.app[STORAGE])


@router.patch("/v1/me", access="authenticated", body=MePatch, response=UserOut)
async def patch_me(call: Call) -> UserOut:
    """PATCH /v1/me

    Change any of name, gender, birth_date, birth_time, birth_place, languages; null clears one."""
    body = call.body(MePatch)
    changes = profiles.MeChanges(
        fields=frozenset(body.model_fields_set),
        name=body.name,
        gender=body.gender,
        birth_date=date.fromisoformat(body.birth_date) if body.birth_date else None,
        birth_time=time.fromisoformat(body.birth_time) if body.birth_time else None,
        birth_place=body.birth_place,
        languages=body.languages,
    )
    user = await profiles.update_me(call.services.db, call.principal.user_id, changes)
    return UserOut.of(user, call.request.app[STORAGE])


@router.post("/v1/me/avatar", access="authenticated", body=UploadIn, response=UploadOut)
async def upload_avatar(call: Call) -> UploadOut:
    """POST /v1/me/avatar

    A presigned upload for a new avatar: JPEG, PNG, WebP or HEIC, at most 5 MiB. PUT the file to
    `upload_url` with `headers`; another type or size is refused by the storage."""
    body = call.body(UploadIn)
    key = await profiles.start_avatar_upload(
        call.services.db, call.principal.user_id, body.content_type, body.size
    )
    storage = call.request.app[STORAGE]
    return UploadOut.of(storage.presign_upload(key, body.content_type.lower(), body.size))
