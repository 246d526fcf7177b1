"""Birth profiles: GET/POST /v1/me/profiles, PATCH/DELETE /v1/me/profiles/{id} (issue 16)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from api.consultation_out import ConsultationOut
from api.framework import Call, Router
from api.me import check_birth_date, check_birth_time
from api.models import Input, Output
from auth import birth_profiles

router = Router("profiles")

Relation = Literal["self", "spouse", "partner", "child", "parent", "sibling", "friend", "other"]
_TZ = re.compile(r"^[A-Za-z_]+(/[A-Za-z0-9_+\-]+){0,2}$")  # IANA names: Asia/Kolkata, UTC


class ProfileOut(Output):
    id: str
    name: str
    relation: Relation
    gender: Literal["male", "female", "other"] | None = None
    birth_date: str | None = Field(examples=["1990-04-21"])
    birth_time: str | None = Field(None, examples=["06:30"])
    birth_place: str | None = Field(examples=["Pune, India"])
    latitude: float | None = None
    longitude: float | None = None
    timezone: str | None = Field(None, examples=["Asia/Kolkata"])

    @classmethod
    def of(cls, profile: birth_profiles.BirthProfile) -> ProfileOut:
        return cls.model_validate(profile.to_public())


class ProfileList(Output):
    items: list[ProfileOut]


class ConsultationWithProfilesOut(ConsultationOut):
    """A consultation as its astrologer sees it, with the frozen birth profiles."""

    profiles: list[ProfileOut] | None = Field(
        None,
        description="the birth profiles frozen when it was requested: present only for its "
        "astrologer, from the request until PROFILE_VISIBLE_DAYS after it ended",
    )


class _ProfileFields(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    gender: Literal["male", "female", "other"] | None = None
    birth_date: str | None = Field(None, description="YYYY-MM-DD", examples=["1990-04-21"])
    birth_time: str | None = Field(None, description="HH:MM, 24-hour", examples=["06:30"])
    birth_place: str | None = Field(None, min_length=1, max_length=200)
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    timezone: str | None = Field(None, max_length=64, examples=["Asia/Kolkata"])

    @field_validator("birth_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return check_birth_date(value)

    @field_validator("birth_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return check_birth_time(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        if value is not None and not _TZ.match(value):
            raise ValueError("an IANA time zone name like Asia/Kolkata")
        return value

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ProfileIn(_ProfileFields):
    name: str = Field(min_length=1, max_length=100)  # required here
    relation: Relation
    birth_date: str = Field(description="YYYY-MM-DD", examples=["1990-04-21"])  # required here
    birth_place: str = Field(min_length=1, max_length=200)  # required here


class ProfilePatch(_ProfileFields):
    relation: Relation | None = None


@router.get("/v1/me/profiles", access="user", response=ProfileList)
async def list_profiles(call: Call) -> ProfileList:
    """GET /v1/me/profiles

    Your saved birth profiles (at most 20), your own (`self`) first."""
    async with call.services.db.acquire() as conn:
        found = await birth_profiles.list_profiles(conn, call.principal.user_id)
    return ProfileList(items=[ProfileOut.of(p) for p in found])


@router.post(
    "/v1/me/profiles",
    access="user",
    body=ProfileIn,
    response=ProfileOut,
    status=201,
    errors={409: "too_many_profiles, self_profile_exists"},
)
async def create_profile(call: Call) -> ProfileOut:
    """POST /v1/me/profiles

    Save a birth profile (yourself, family, friends); at most 20. Stored encrypted; a copy is
    shown to the astrologer of a consultation or question it is attached to (`profile_ids`)."""
    body = call.body(ProfileIn)
    async with call.services.db.acquire() as conn:
        profile = await birth_profiles.create_profile(
            conn, call.principal.user_id, body.relation, body.values()
        )
    return ProfileOut.of(profile)


@router.patch("/v1/me/profiles/{id}", access="user", body=ProfilePatch, response=ProfileOut)
async def update_profile(call: Call) -> ProfileOut:
    """PATCH /v1/me/profiles/{id}

    Change some fields of one of your profiles (null clears an optional one); the `self`
    profile is also what PATCH /v1/me changes. Copies already attached to consultations stay."""
    body = call.body(ProfilePatch)
    values = body.values()
    if "relation" in values and values["relation"] is None:
        values.pop("relation")
    changes = birth_profiles.ProfileChanges(fields=frozenset(values), values=values)
    async with call.services.db.acquire() as conn:
        profile = await birth_profiles.update_profile(
            conn, call.principal.user_id, call.uuid("id"), changes
        )
    return ProfileOut.of(profile)


@router.delete("/v1/me/profiles/{id}", access="user", status=204)
async def delete_profile(call: Call) -> None:
    """DELETE /v1/me/profiles/{id}

    Delete one of your profiles; a consultation's frozen copy stays in that consultation."""
    await birth_profiles.delete_profile(call.services.db, call.principal.user_id, call.uuid("id"))
