"""GET/PATCH /v1/me, e-mail verification and the avatar upload.

Birth details of /v1/me are the account's `self` birth profile (auth/birth_profiles.py), stored
encrypted; e-mail and locale are the notification settings (issue 16)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from api.framework import Call, Router
from api.models import Input, Output
from auth import birth_profiles, profiles
from auth import email as emails
from core import ratelimit
from core.errors import NotFound, ValidationFailed
from core.storage import STORAGE, PresignedUpload, Storage
from core.times import rfc3339
from db import identity

router = Router("me")

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")  # ISO 639-1/639-3 codes: en, hi, ta, mai
# The same shape as the users.email CHECK (migration 0007): something@domain.tld, no spaces.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
BIRTH_FIELDS = ("birth_date", "birth_time", "birth_place")


def check_birth_date(value: str | None) -> str | None:
    """A birth date as YYYY-MM-DD, a real one between 1900 and today (also for birth profiles)."""
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


def check_birth_time(value: str | None) -> str | None:
    """A birth time as HH:MM, 24-hour."""
    if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError("use HH:MM, 00:00 to 23:59")
    return value


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
    email: str | None = Field(None, description="where e-mail notifications go once verified")
    email_verified: bool = Field(False, description="the link sent to `email` was opened")
    locale: Literal["en", "hi"] = Field("en", description="the language of notifications")

    @classmethod
    def of(
        cls,
        user: identity.User,
        storage: Storage,
        *,
        self_profile: birth_profiles.BirthProfile | None = None,
        email: str | None = None,
        email_verified: bool = False,
    ) -> UserOut:
        """The account; birth details from its self profile when given (else the legacy
        plaintext columns, for answers that do not read the profile, like sign-in)."""
        birth_date = self_profile.birth_date if self_profile else user.birth_date
        birth_time = self_profile.birth_time if self_profile else user.birth_time
        return cls(
            id=str(user.id),
            phone=user.phone,
            role=user.role,
            name=user.name,
            gender=user.gender,  # type: ignore[arg-type]  # the column's CHECK allows only these
            birth_date=birth_date.isoformat() if birth_date else None,
            birth_time=birth_time.strftime("%H:%M") if birth_time else None,
            birth_place=self_profile.birth_place if self_profile else user.birth_place,
            languages=list(user.languages),
            avatar_url=storage.download_url(user.avatar_key) if user.avatar_key else None,
            created_at=rfc3339(user.created_at),
            email=email,
            email_verified=email_verified,
            locale="hi" if user.locale == "hi" else "en",
        )


class MePatch(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    gender: Literal["male", "female", "other"] | None = None
    birth_date: str | None = Field(None, description="YYYY-MM-DD", examples=["1990-04-21"])
    birth_time: str | None = Field(None, description="HH:MM, 24-hour", examples=["06:30"])
    birth_place: str | None = Field(None, min_length=1, max_length=200)
    languages: list[str] | None = Field(None, max_length=10)
    email: str | None = Field(
        None,
        max_length=254,
        description="a new address is unverified until the link mailed to it is opened",
        examples=["asha@example.com"],
    )
    locale: Literal["en", "hi"] | None = Field(None, description="the language of notifications")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, sep, domain = value.rpartition("@")
        if not sep or not _EMAIL.match(value):
            raise ValueError("not an e-mail address")
        return f"{local}@{domain.lower()}"

    @field_validator("birth_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return check_birth_date(value)

    @field_validator("birth_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return check_birth_time(value)

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


async def _me(call: Call, conn: Any, user: identity.User) -> UserOut:
    """The answer of GET/PATCH /v1/me: the account, its self profile, its e-mail state."""
    own = await birth_profiles.get_self(conn, user.id)
    state = await conn.fetchrow(emails.GET_STATE, user.id)
    return UserOut.of(
        user,
        call.request.app[STORAGE],
        self_profile=own,
        email=state["email"] if state else None,
        email_verified=bool(state and state["email_verified_at"]),
    )


@router.get("/v1/me", access="authenticated", response=UserOut)
async def get_me(call: Call) -> UserOut:
    """GET /v1/me

    The caller's own profile; the birth details are those of their `self` birth profile."""
    async with call.services.db.acquire() as conn:
        user = await identity.get_user(conn, call.principal.user_id)
        if user is None:
            raise NotFound()
        return await _me(call, conn, user)


@router.patch("/v1/me", access="authenticated", body=MePatch, response=UserOut)
async def patch_me(call: Call) -> UserOut:
    """PATCH /v1/me

    Change any of name, gender, birth_date, birth_time, birth_place, languages, email, locale;
    null clears one. Birth details are the `self` birth profile (created when first given). A new
    e-mail address is unverified until the link mailed to it is opened; notifications use
    `locale` and go by e-mail only to a verified address."""
    body = call.body(MePatch)
    sent = frozenset(body.model_fields_set)
    if "locale" in sent and body.locale is None:
        raise ValidationFailed({"locale": "one of en, hi"})
    changes = profiles.MeChanges(
        # Birth details live in the encrypted self profile, never in the users row.
        fields=sent - set(BIRTH_FIELDS),
        name=body.name,
        gender=body.gender,
        languages=body.languages,
    )
    user_id = call.principal.user_id
    mail_due, locale = False, None
    async with call.services.db.acquire() as conn:
        async with conn.transaction():
            user = await profiles.update_me(conn, user_id, changes)
            self_changes: dict[str, Any] = {
                name: getattr(body, name)
                for name in (*BIRTH_FIELDS, "name", "gender")
                if name in sent
            }
            if self_changes:
                await birth_profiles.update_self_txn(conn, user_id, self_changes)
            if "locale" in sent and body.locale is not None:
                await emails.set_locale(conn, user_id, body.locale)
            if "email" in sent:
                mail_due, locale = await emails.set_email(conn, user_id, body.email)
            user = await identity.get_user(conn, user_id) or user
        if mail_due and body.email:
            await emails.send_verification(call.services, user_id, body.email, locale)
        return await _me(call, conn, user)


class VerifyQuery(Input):
    token: str = Field(min_length=1, max_length=2048, description="from the link in the e-mail")


class VerifiedOut(Output):
    email: str
    email_verified: bool


@router.get(
    "/v1/me/email/verify",
    access="public",
    query=VerifyQuery,
    response=VerifiedOut,
    errors={400: "invalid_token: forged, expired, or the address changed since"},
)
async def verify_email_link(call: Call) -> VerifiedOut:
    """GET /v1/me/email/verify?token=...

    The link mailed to a new address: marks it verified (no sign-in needed: the token is signed
    and names the account and the address). 400 invalid_token when forged, expired, or the
    account's address changed since."""
    return await _verify(call)


async def _verify(call: Call) -> VerifiedOut:
    _, email = await emails.verify(
        call.services.db, call.services.settings, call.query(VerifyQuery).token
    )
    return VerifiedOut(email=email, email_verified=True)


@router.post(
    "/v1/me/email/verify",
    access="public",
    query=VerifyQuery,
    response=VerifiedOut,
    errors={400: "invalid_token: forged, expired, or the address changed since"},
)
async def verify_email(call: Call) -> VerifiedOut:
    """POST /v1/me/email/verify?token=...

    The same as the GET, for apps that open the link themselves."""
    return await _verify(call)


@router.post(
    "/v1/me/avatar",
    access="authenticated",
    body=UploadIn,
    response=UploadOut,
    rate_limit=ratelimit.UPLOAD,
)
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
