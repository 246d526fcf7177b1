"""Birth profiles: the birth details a person keeps for themselves (`self`) and for family and
friends, the copies frozen on consultations and questions, and who may see those copies.

Storage (migration 0016): one row per profile, everything personal in `data`, an encrypted JSON
document (core/crypto.py) bound to the profile's id and owner. The account's own birth details
(GET/PATCH /v1/me) ARE the `self` profile: PATCH /v1/me writes it, GET /v1/me reads it, so the two
never disagree. Birth details stored in `users.birth_*` before encryption are moved into the self
profile the first time it is read (or by `astrolive rotate-data-key`).

A consultation or question gets a frozen, encrypted copy of the chosen profiles (at most 2;
default: the self profile when it has a birth date). Its astrologer sees the copy from the request
until PROFILE_VISIBLE_DAYS after it ended; nobody else ever does (the user knows their own data).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from core import crypto
from core.errors import Conflict, NotFound, ValidationFailed
from core.settings import Settings
from db.pool import Conn, Executor

RELATIONS = ("self", "spouse", "partner", "child", "parent", "sibling", "friend", "other")
MAX_PROFILES = 20  # API.md
MAX_ATTACHED = 2  # profiles per consultation or question (e.g. two people for matching)
# The personal fields, all inside the encrypted document.
FIELDS = (
    "name",
    "gender",
    "birth_date",
    "birth_time",
    "birth_place",
    "latitude",
    "longitude",
    "timezone",
)
# Statuses after which a consultation is over; PROFILE_VISIBLE_DAYS count from its end.
ENDED = ("completed", "rejected", "missed", "cancelled", "expired")


class TooManyProfiles(Conflict):
    code, message = "too_many_profiles", f"at most {MAX_PROFILES} birth profiles per account"


class SelfProfileExists(Conflict):
    code, message = "self_profile_exists", "the account already has its self profile"


def data_aad(profile_id: object, user_id: object) -> bytes:
    return crypto.aad("birth_profiles.data", profile_id, user_id)


def frozen_aad(table: str, row_id: object) -> bytes:
    """A frozen copy on `consultations` or `questions` is bound to that row."""
    return crypto.aad(f"{table}.profiles_enc", row_id)


crypto.register(
    crypto.EncryptedColumn(
        table="birth_profiles",
        column="data",
        key="id",
        aad_columns=("id", "user_id"),
        aad_of=lambda values: data_aad(*values),
    )
)
crypto.register(
    crypto.EncryptedColumn(
        table="consultations",
        column="profiles_enc",
        key="id",
        aad_columns=("id",),
        aad_of=lambda values: frozen_aad("consultations", values[0]),
    )
)


@dataclass(frozen=True)
class BirthProfile:
    id: uuid.UUID
    user_id: uuid.UUID
    relation: str
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def birth_date(self) -> date | None:
        value = self.data.get("birth_date")
        return date.fromisoformat(value) if value else None

    @property
    def birth_time(self) -> time | None:
        value = self.data.get("birth_time")
        return time.fromisoformat(value) if value else None

    @property
    def birth_place(self) -> str | None:
        value = self.data.get("birth_place")
        return str(value) if value is not None else None

    def to_public(self) -> dict[str, Any]:
        """API.md's profile: `{id, name, relation, gender?, birth_date, birth_time?, ...}`."""
        return {"id": str(self.id), "relation": self.relation, **_public_fields(self.data)}

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> BirthProfile:
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            relation=row["relation"],
            data=crypto.current().decrypt_json(row["data"], data_aad(row["id"], row["user_id"])),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


def _public_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data.get(name) for name in FIELDS}


@dataclass(frozen=True)
class ProfileChanges:
    """The fields a request sent (only those in `fields` change; None clears an optional one)."""

    fields: frozenset[str]
    values: dict[str, Any] = field(default_factory=dict)


COLUMNS = "id, user_id, relation, data, created_at, updated_at"
LIST = f"""
SELECT {COLUMNS} FROM birth_profiles WHERE user_id = $1
 ORDER BY relation <> 'self', created_at, id
"""
GET = f"SELECT {COLUMNS} FROM birth_profiles WHERE id = $1 AND user_id = $2"
GET_SELF = f"SELECT {COLUMNS} FROM birth_profiles WHERE user_id = $1 AND relation = 'self'"
GET_MANY = f"SELECT {COLUMNS} FROM birth_profiles WHERE user_id = $1 AND id = ANY($2::uuid[])"
# The account row is the lock that serialises "count, then insert" for the 20-profile limit.
LOCK_USER = "SELECT name, gender FROM users WHERE id = $1 FOR UPDATE"
COUNT = "SELECT count(*) FROM birth_profiles WHERE user_id = $1"
INSERT = f"""
INSERT INTO birth_profiles (id, user_id, relation, data) VALUES ($1, $2, $3, $4)
RETURNING {COLUMNS}
"""
UPDATE = f"""
UPDATE birth_profiles SET relation = $3, data = $4, updated_at = now()
 WHERE id = $1 AND user_id = $2
RETURNING {COLUMNS}
"""
DELETE = "DELETE FROM birth_profiles WHERE id = $1 AND user_id = $2"
# Birth details kept in plaintext before 0016: read and erased in the transaction that moves them.
LEGACY = """
SELECT name, gender, birth_date, birth_time, birth_place FROM users
 WHERE id = $1 AND (birth_date IS NOT NULL OR birth_time IS NOT NULL OR birth_place IS NOT NULL)
   FOR UPDATE
"""
CLEAR_LEGACY = """
UPDATE users SET birth_date = NULL, birth_time = NULL, birth_place = NULL WHERE id = $1
"""
LEGACY_USERS = """
SELECT id FROM users
 WHERE id > $1 AND (birth_date IS NOT NULL OR birth_time IS NOT NULL OR birth_place IS NOT NULL)
 ORDER BY id LIMIT $2
"""
SET_FROZEN = "UPDATE consultations SET profiles_enc = $2 WHERE id = $1"
VISIBILITY = """
SELECT astrologer_id, status, ended_at, updated_at, profiles_enc FROM consultations WHERE id = $1
"""


def _seal(profile_id: uuid.UUID, user_id: uuid.UUID, data: dict[str, Any]) -> bytes:
    return crypto.current().encrypt_json(data, data_aad(profile_id, user_id))


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, time):
            out[key] = value.isoformat(timespec="minutes")
        elif isinstance(value, date):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


# -- reads --------------------------------------------------------------------------------------


async def list_profiles(conn: Conn, user_id: uuid.UUID) -> list[BirthProfile]:
    """The account's profiles, self first, then oldest first."""
    await migrate_legacy(conn, user_id)
    return [BirthProfile.from_row(r) for r in await conn.fetch(LIST, user_id)]


async def get_profile(conn: Executor, user_id: uuid.UUID, profile_id: uuid.UUID) -> BirthProfile:
    row = await conn.fetchrow(GET, profile_id, user_id)
    if row is None:
        raise NotFound("no such profile")
    return BirthProfile.from_row(row)


async def get_self(conn: Conn, user_id: uuid.UUID) -> BirthProfile | None:
    """The account's own birth details (what GET /v1/me shows)."""
    await migrate_legacy(conn, user_id)
    row = await conn.fetchrow(GET_SELF, user_id)
    return BirthProfile.from_row(row) if row else None


async def migrate_legacy(conn: Conn, user_id: uuid.UUID) -> bool:
    """Move plaintext users.birth_* (from before encryption) into the encrypted self profile.
    Cheap when there is nothing to move (an index-free check of one row by primary key)."""
    async with conn.transaction():
        row = await conn.fetchrow(LEGACY, user_id)
        if row is None:
            return False
        legacy = {
            "birth_date": row["birth_date"],
            "birth_time": row["birth_time"],
            "birth_place": row["birth_place"],
        }
        existing = await conn.fetchrow(GET_SELF, user_id)
        if existing is None:
            data = _jsonable({"name": row["name"] or "Me", "gender": row["gender"], **legacy})
            new_id = uuid.uuid4()
            await conn.execute(INSERT, new_id, user_id, "self", _seal(new_id, user_id, data))
        else:
            profile = BirthProfile.from_row(existing)
            merged = {**profile.data}
            for key, value in _jsonable(legacy).items():
                if merged.get(key) is None:
                    merged[key] = value
            await conn.execute(
                UPDATE, profile.id, user_id, "self", _seal(profile.id, user_id, merged)
            )
        await conn.execute(CLEAR_LEGACY, user_id)
        return True


async def migrate_all_legacy(conn: Conn, batch_size: int = 500) -> int:
    """`migrate_legacy` for every account still holding plaintext birth details."""
    moved = 0
    last = uuid.UUID(int=0)
    while True:
        ids = [r["id"] for r in await conn.fetch(LEGACY_USERS, last, batch_size)]
        for user_id in ids:
            moved += await migrate_legacy(conn, user_id)
        if len(ids) < batch_size:
            return moved
        last = ids[-1]


# -- writes -------------------------------------------------------------------------------------


def _check(relation: str, data: dict[str, Any], *, require_birth: bool) -> None:
    problems: dict[str, str] = {}
    if relation not in RELATIONS:
        problems["relation"] = "one of " + ", ".join(RELATIONS)
    if not data.get("name"):
        problems["name"] = "required"
    if require_birth and not data.get("birth_date"):
        problems["birth_date"] = "required"
    if require_birth and not data.get("birth_place"):
        problems["birth_place"] = "required"
    if (data.get("latitude") is None) != (data.get("longitude") is None):
        problems["latitude"] = "give latitude and longitude together"
    if problems:
        raise ValidationFailed(problems)


async def create_profile(
    conn: Conn, user_id: uuid.UUID, relation: str, values: dict[str, Any]
) -> BirthProfile:
    """Save a new profile; 409 too_many_profiles past 20, 409 self_profile_exists for a second
    self profile (PATCH it, or PATCH /v1/me)."""
    data = _jsonable({name: values.get(name) for name in FIELDS})
    _check(relation, data, require_birth=True)
    async with conn.transaction():
        await migrate_legacy(conn, user_id)
        if await conn.fetchrow(LOCK_USER, user_id) is None:
            raise NotFound()
        if await conn.fetchval(COUNT, user_id) >= MAX_PROFILES:
            raise TooManyProfiles()
        new_id = uuid.uuid4()
        try:
            async with conn.transaction():
                row = await conn.fetchrow(
                    INSERT, new_id, user_id, relation, _seal(new_id, user_id, data)
                )
        except asyncpg.UniqueViolationError as exc:
            raise SelfProfileExists() from exc
    assert row is not None
    return BirthProfile.from_row(row)


async def update_profile(
    conn: Conn, user_id: uuid.UUID, profile_id: uuid.UUID, changes: ProfileChanges
) -> BirthProfile:
    """Change some fields of one of the account's profiles (another's: 404). The self profile
    stays self, and no other becomes self."""
    async with conn.transaction():
        row = await conn.fetchrow(GET + " FOR UPDATE", profile_id, user_id)
        if row is None:
            raise NotFound("no such profile")
        profile = BirthProfile.from_row(row)
        relation = changes.values.get("relation", profile.relation)
        if "relation" in changes.fields and (relation == "self") != (profile.relation == "self"):
            raise ValidationFailed({"relation": "the self profile is the account's own"})
        data = {**profile.data}
        for name in FIELDS:
            if name in changes.fields:
                data[name] = changes.values.get(name)
        data = _jsonable(data)
        _check(relation, data, require_birth=relation != "self")
        updated = await conn.fetchrow(
            UPDATE, profile_id, user_id, relation, _seal(profile_id, user_id, data)
        )
    assert updated is not None
    return BirthProfile.from_row(updated)


async def delete_profile(conn: Executor, user_id: uuid.UUID, profile_id: uuid.UUID) -> None:
    """Delete one of the account's profiles; copies frozen on consultations stay as they are."""
    status = await conn.execute(DELETE, profile_id, user_id)
    if status.endswith(" 0"):
        raise NotFound("no such profile")


async def update_self_txn(conn: Conn, user_id: uuid.UUID, changes: dict[str, Any]) -> None:
    """PATCH /v1/me's birth fields (and name, gender) written to the self profile, created when
    missing (with the account's name, or "Me"). Runs in the caller's transaction."""
    await migrate_legacy(conn, user_id)
    account = await conn.fetchrow(LOCK_USER, user_id)
    if account is None:
        raise NotFound()
    row = await conn.fetchrow(GET_SELF, user_id)
    if row is None:
        if not any(k in changes for k in ("birth_date", "birth_time", "birth_place")):
            return  # only a name or gender change, and no birth details to keep in step
        data: dict[str, Any] = {"name": account["name"] or "Me", "gender": account["gender"]}
        data.update(_jsonable(changes))
        if not data.get("name"):
            data["name"] = "Me"
        new_id = uuid.uuid4()
        await conn.execute(INSERT, new_id, user_id, "self", _seal(new_id, user_id, data))
        return
    profile = BirthProfile.from_row(row)
    data = {**profile.data, **_jsonable(changes)}
    if not data.get("name"):
        data["name"] = account["name"] or "Me"
    await conn.execute(UPDATE, profile.id, user_id, "self", _seal(profile.id, user_id, data))


# -- frozen copies ------------------------------------------------------------------------------


async def freeze(
    conn: Conn, user_id: uuid.UUID, profile_ids: list[uuid.UUID] | None
) -> list[dict[str, Any]]:
    """The profiles to copy onto a new consultation or question, as public dicts: the given ids
    (at most 2, the user's own: another's is 404), or by default the self profile when it has a
    birth date (else none)."""
    if profile_ids is None:
        own = await get_self(conn, user_id)
        return [own.to_public()] if own is not None and own.birth_date else []
    unique = list(dict.fromkeys(profile_ids))
    if len(unique) > MAX_ATTACHED:
        raise ValidationFailed({"profile_ids": f"at most {MAX_ATTACHED}"})
    await migrate_legacy(conn, user_id)
    rows = await conn.fetch(GET_MANY, user_id, unique)
    found = {r["id"]: BirthProfile.from_row(r) for r in rows}
    missing = [str(i) for i in unique if i not in found]
    if missing:
        raise NotFound("no such profile", details={"profile_ids": missing})
    return [found[i].to_public() for i in unique]


def seal_frozen(table: str, row_id: uuid.UUID, profiles: list[dict[str, Any]]) -> bytes | None:
    return crypto.current().encrypt_json(profiles, frozen_aad(table, row_id)) if profiles else None


def open_frozen(table: str, row_id: uuid.UUID, sealed: bytes | None) -> list[dict[str, Any]]:
    if sealed is None:
        return []
    value = crypto.current().decrypt_json(sealed, frozen_aad(table, row_id))
    return list(value)


async def attach_txn(
    conn: Executor, consultation_id: uuid.UUID, profiles: list[dict[str, Any]]
) -> None:
    """Store the frozen copy on a consultation (in the transaction that creates it)."""
    if profiles:
        await conn.execute(
            SET_FROZEN, consultation_id, seal_frozen("consultations", consultation_id, profiles)
        )


def visible_until(
    settings: Settings, status: str, ended_at: datetime | None, updated_at: datetime
) -> datetime | None:
    """When the astrologer stops seeing the copy; None while the consultation is not over."""
    end = ended_at if ended_at is not None else (updated_at if status in ENDED else None)
    return None if end is None else end + timedelta(days=settings.profile_visible_days)


async def visible_profiles(
    conn: Executor, settings: Settings, consultation_id: uuid.UUID, viewer_id: uuid.UUID
) -> list[dict[str, Any]] | None:
    """The consultation's frozen profiles if `viewer_id` is its astrologer and the window is
    open; None (absent from the answer) otherwise."""
    row = await conn.fetchrow(VISIBILITY, consultation_id)
    if row is None or row["astrologer_id"] != viewer_id:
        return None
    until = visible_until(settings, row["status"], row["ended_at"], row["updated_at"])
    if until is not None and datetime.now(UTC) >= until:
        return None
    return open_frozen("consultations", consultation_id, row["profiles_enc"])


async def with_profiles(
    conn: Executor,
    settings: Settings,
    consultation_id: uuid.UUID,
    viewer_id: uuid.UUID,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """`payload` (a consultation as to_public makes it) plus `profiles` when `viewer_id` may see
    them; a copy, the caller's dict is not changed."""
    profiles = await visible_profiles(conn, settings, consultation_id, viewer_id)
    return payload if profiles is None else {**payload, "profiles": profiles}
