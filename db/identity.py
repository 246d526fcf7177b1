"""Users and their logins: the SQL that the API (sign-in, profiles) and the real-time layer (connect
checks) share. Besides this module, only `auth/` writes `users` (profile fields, status, Cognito
link), `auth_sessions` and `refresh_tokens` (auth/sessions.py: logins, rotation, revocation)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time

import asyncpg

from core.tokens import Role
from db.pool import Executor


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    phone: str
    role: Role
    status: str
    name: str | None
    gender: str | None
    birth_date: date | None
    birth_time: time | None
    birth_place: str | None
    languages: list[str]
    locale: str
    avatar_key: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


USER_COLUMNS = (
    "id, phone, role, status, name, gender, birth_date, birth_time, birth_place, languages, "
    "locale, avatar_key, created_at"
)
GET_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"
GET_USER_BY_PHONE = f"SELECT {USER_COLUMNS} FROM users WHERE phone = $1"
# Registers a phone on first sight; an existing account keeps its role (API.md).
UPSERT_USER = f"""
WITH ins AS (
    INSERT INTO users (phone, role) VALUES ($1, $2)
    ON CONFLICT (phone) DO NOTHING
    RETURNING {USER_COLUMNS}, true AS created
)
SELECT * FROM ins
UNION ALL
SELECT {USER_COLUMNS}, false AS created FROM users
 WHERE phone = $1 AND NOT EXISTS (SELECT 1 FROM ins)
"""
SET_ROLE = f"UPDATE users SET role = $2, updated_at = now() WHERE id = $1 RETURNING {USER_COLUMNS}"
SESSION_ACTIVE = """
SELECT s.revoked_at IS NULL AND u.status = 'active'
  FROM auth_sessions s JOIN users u ON u.id = s.user_id
 WHERE s.id = $1 AND s.user_id = $2
"""


async def get_user(conn: Executor, user_id: uuid.UUID) -> User | None:
    row = await conn.fetchrow(GET_USER, user_id)
    return User.from_row(row) if row else None


async def upsert_user(conn: Executor, phone: str, role: Role = "user") -> tuple[User, bool]:
    """The user with this E.164 phone, created with `role` if new; and whether it was created."""
    row = await conn.fetchrow(UPSERT_USER, phone, role)
    assert row is not None
    return User.from_row(row), bool(row["created"])


async def set_role(conn: Executor, user_id: uuid.UUID, role: Role) -> User:
    row = await conn.fetchrow(SET_ROLE, user_id, role)
    assert row is not None
    return User.from_row(row)


async def session_active(conn: Executor, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """True while the login is not revoked and its user not blocked."""
    return bool(await conn.fetchval(SESSION_ACTIVE, session_id, user_id))
