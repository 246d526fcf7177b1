"""Push registrations: the SQL of the `devices` table. Only `notify/` writes it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from db.pool import Executor

Platform = Literal["android", "ios", "web"]


@dataclass(frozen=True)
class Device:
    id: uuid.UUID
    user_id: uuid.UUID
    platform: Platform
    push_token: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Device:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


COLUMNS = "id, user_id, platform, push_token, created_at"
# Registering again is harmless (the same row comes back); a token seen under another account
# moves to it, because the install now belongs to whoever signed in last.
REGISTER = f"""
INSERT INTO devices (user_id, platform, push_token) VALUES ($1, $2, $3)
ON CONFLICT (push_token) DO UPDATE
   SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform, last_seen_at = now()
RETURNING {COLUMNS}, (xmax = 0) AS created
"""
UNREGISTER = "DELETE FROM devices WHERE user_id = $1 AND push_token = $2"
DROP_TOKEN = "DELETE FROM devices WHERE push_token = $1"  # noqa: S105  # SQL, not a password
LIST_FOR_USER = f"SELECT {COLUMNS} FROM devices WHERE user_id = $1 ORDER BY created_at"


async def register(
    conn: Executor, user_id: uuid.UUID, platform: Platform, push_token: str
) -> tuple[Device, bool]:
    """The device row for this token, now owned by `user_id`; and whether it was created."""
    row = await conn.fetchrow(REGISTER, user_id, platform, push_token)
    assert row is not None
    return Device.from_row(row), bool(row["created"])


async def unregister(conn: Executor, user_id: uuid.UUID, push_token: str) -> bool:
    """Forget the caller's device with this token; False when they have none such."""
    return str(await conn.execute(UNREGISTER, user_id, push_token)).endswith(" 1")


async def drop_token(conn: Executor, push_token: str) -> bool:
    """The push provider says this token is dead (uninstalled app, bad token): forget it."""
    return str(await conn.execute(DROP_TOKEN, push_token)).endswith(" 1")


async def list_for_user(conn: Executor, user_id: uuid.UUID) -> list[Device]:
    return [Device.from_row(r) for r in await conn.fetch(LIST_FOR_USER, user_id)]
