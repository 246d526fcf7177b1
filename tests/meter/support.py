"""Helpers of the meter tests: accepted consultations ready to start, a recording emitter,
participants that keep sending heartbeats, and ledger checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.services import Services
from live import session
from tests.factories import fund, make_astrologer, make_user


@dataclass
class RecordingEmitter:
    """The `Emitter` protocol, keeping what was emitted (the processes' Socket.IO is tested by
    the real-time suite; here we check what the meter says)."""

    events: list[tuple[str, Any, str]] = field(default_factory=list)

    async def emit(self, event: str, data: Any, room: str) -> None:
        self.events.append((event, data, room))

    def of(self, event: str, to: uuid.UUID | None = None) -> list[Any]:
        """The payloads of `event`; with `to`, only the copies sent to that participant (their
        room in the consultation, or their personal room)."""
        return [
            data
            for name, data, room in self.events
            if name == event and (to is None or room.endswith(f"user:{to}"))
        ]


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID


async def accepted_consultation(
    db: asyncpg.Pool[Any],
    *,
    rate: int = 100,
    wallet: int = 10_000,
    free_minutes: int = 0,
    max_minutes: int | None = None,
    share_percent: int = 60,
) -> Session:
    """A user with `wallet` in it and an accepted consultation with a new astrologer."""
    user = await make_user(db)
    astrologer = await make_astrologer(db)
    if wallet:
        await fund(db, user.id, wallet)
    cid = await db.fetchval(
        "INSERT INTO consultations (user_id, astrologer_id, type, status, rate, list_rate,"
        " share_percent, free_minutes, max_minutes, accepted_at)"
        " VALUES ($1, $2, 'chat', 'accepted', $3, $3, $4, $5, $6, now()) RETURNING id",
        user.id, astrologer.id, rate, share_percent, free_minutes, max_minutes,
    )  # fmt: skip
    assert isinstance(cid, uuid.UUID)
    return Session(cid, user.id, astrologer.id)


async def start(services: Services, s: Session) -> None:
    assert await session.participant_joined(services, s.id, s.user_id) == "waiting"
    assert await session.participant_joined(services, s.id, s.astrologer_id) == "started"


@contextlib.asynccontextmanager
async def heartbeats(
    services: Services, s: Session, *, every: float = 0.1
) -> AsyncIterator[dict[str, bool]]:
    """The processes holding both participants' sockets beat until the context ends; set
    `alive[who] = False` to make one of them stop (as a process that died would)."""
    alive = {"user": True, "astrologer": True}

    async def beat() -> None:
        while True:
            pairs = []
            if alive["user"]:
                pairs.append((s.id, s.user_id))
            if alive["astrologer"]:
                pairs.append((s.id, s.astrologer_id))
            await session.participants_beat(services, pairs)
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield alive
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    within: float = 20,
    every: float = 0.05,
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


async def sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.time()))


async def meter_row(db: asyncpg.Pool[Any], cid: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT * FROM meters WHERE consultation_id = $1", cid
    )
    assert row is not None
    return row


async def consultation(db: asyncpg.Pool[Any], cid: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await db.fetchrow("SELECT * FROM consultations WHERE id = $1", cid)
    assert row is not None
    return row


async def charged_minutes(db: asyncpg.Pool[Any], cid: uuid.UUID) -> list[int]:
    """The minutes the ledger charged, from the transfer keys, in order (repeats would show)."""
    keys = await db.fetch(
        "SELECT idempotency_key FROM transfers WHERE consultation_id = $1"
        " AND idempotency_key LIKE 'charge:%' ORDER BY created_at",
        cid,
    )
    return sorted(int(k["idempotency_key"].rsplit(":", 1)[1]) for k in keys)


async def refunded_overcharges(db: asyncpg.Pool[Any], cid: uuid.UUID) -> list[int]:
    """Minutes charged past the stop and refunded by it (live.meter; must not happen in a
    healthy system: only a Redis loss or a dead process's last seconds can cause one)."""
    rows = await db.fetch(
        "SELECT details->'overcharge' AS m FROM meter_events"
        " WHERE consultation_id = $1 AND kind = 'refund' AND details ? 'overcharge'",
        cid,
    )
    values = [r["m"] if isinstance(r["m"], list) else json.loads(r["m"]) for r in rows]
    return sorted(int(m) for v in values for m in v)


async def assert_each_minute_once(db: asyncpg.Pool[Any], cid: uuid.UUID) -> int:
    """Every minute 1..N charged exactly once in the ledger and explained once, none of them
    starting at or after the stop (a minute charged past it must have been refunded); returns
    N, the billed minutes."""
    refunded = await refunded_overcharges(db, cid)
    charged = await charged_minutes(db, cid)
    assert charged == list(range(1, len(charged) + 1)), charged
    minutes = [m for m in charged if m not in refunded]
    assert refunded == charged[len(minutes) :], (refunded, charged)  # only a tail is refunded
    lines = await db.fetch(
        "SELECT minute FROM meter_events WHERE consultation_id = $1 AND kind = 'charge'"
        " ORDER BY minute",
        cid,
    )
    assert [r["minute"] for r in lines] == charged
    row = await meter_row(db, cid)
    assert row["charged_minutes"] == len(minutes)
    if row["stopped_at"] is not None and minutes:
        start = row["started_at"].timestamp()
        last_due = start + (len(minutes) - 1) * row["minute_seconds"]
        assert last_due < row["stopped_at"].timestamp(), "a minute after the end was billed"
    return len(minutes)


async def wallet(db: asyncpg.Pool[Any], user_id: uuid.UUID) -> int:
    value = await db.fetchval(
        "SELECT balance FROM accounts WHERE kind = 'user_wallet' AND owner_id = $1", user_id
    )
    return int(value or 0)


async def earnings(db: asyncpg.Pool[Any], astrologer_id: uuid.UUID) -> int:
    value = await db.fetchval(
        "SELECT balance FROM accounts WHERE kind = 'astrologer_earnings' AND owner_id = $1",
        astrologer_id,
    )
    return int(value or 0)
