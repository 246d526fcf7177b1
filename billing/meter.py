"""The minute meter of live sessions: every started minute charged once, on time, by the server.

How it works (DESIGN.md, Money and Live sessions):

- A session starts when both participants have joined an accepted consultation
  (`participant_joined`): the consultation becomes `active` and a `meters` row is written in one
  transaction, `session:started` goes to the consultation room, and minute 1 is charged at once.
- Minute N is due at `started_at + (N - 1) * minute`. Due meters live in the Redis sorted set
  `meter:due` (score = due time). Any web process claims due meters with one Lua script that
  re-scores what it took to now + lease: a process that dies holding meters gives them back when
  the lease runs out, and a slow one does not hold up the others.
- A claimed batch is charged in ONE PostgreSQL transaction: the `meters` rows are locked (sorted
  ids, the one lock order), the minutes are posted through `billing.ledger.post_charges` with the
  key `charge:{consultation}:{minute}`, and `meters.charged_minutes` and `meter_events` move with
  them. Two processes charging the same meter queue on its row lock; the second finds the minute
  charged. A minute the wallet cannot pay is not charged: the meter stops at that minute's start
  with `insufficient_balance`.
- Participants are "seen" on join and on every heartbeat (`participant_seen`, the sorted set
  `meter:seen`). One gone longer than `DISCONNECT_GRACE_SECONDS` stops the meter with
  `disconnected` at last-seen + grace; minutes keep being charged during the grace. Nothing here
  reacts to a socket's disconnect event.
- A stopped meter never charges a minute that starts at or after `stopped_at` (also a CHECK).
  After the stop, `finalize` (the arq job `finalize_consultation`, also run at once in-process)
  completes the consultation from the ledger's totals, applies the automatic refund rules and
  sends the receipts; it is safe to run any number of times.
- PostgreSQL is the truth: `sweep` rebuilds the Redis meters of running sessions from `meters`
  (the next minute is charged_minutes + 1), so after a Redis loss the minutes that fell due are
  charged late but exactly once, and stopped-but-unfinalized sessions are finalized.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

import asyncpg
from redis.asyncio import Redis

from billing import meter_keys as keys
from billing.ledger import Charge, ChargeResult, post_charges, wallet_balance
from billing.pricing import split_share
from core.errors import Conflict, NotFound
from core.services import Services
from db.pool import Conn

log = logging.getLogger(__name__)

StopReason = Literal[
    "user_ended", "astrologer_ended", "insufficient_balance", "disconnected", "max_duration"
]
Party = Literal["user", "astrologer", "system"]

# Who charged a minute, kept on each charge line so a bill can be traced to a process.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"
# A batch whose meters fell far behind (every process was down) charges the missed minutes in
# rounds, one minute per meter per round; each round is one post_charges call.
MAX_CATCHUP_ROUNDS = 10_000
# How often a busy meter loop still looks for vanished participants.
DISCONNECT_SCAN_SECONDS = 0.5
DISCONNECT_SCAN_LIMIT = 500
# One minute in the ledger's key space: `charge:{consultation}:{minute}` (DESIGN.md).
CHARGE_KEY = "charge:{consultation}:{minute}"


def charge_key(consultation_id: uuid.UUID, minute: int) -> str:
    return CHARGE_KEY.format(consultation=consultation_id, minute=minute)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@runtime_checkable
class BatchEmitter(Protocol):
    """An `Emitter` that can also send many room emits at once, in order (the web processes' and
    workers' `realtime.server.SioEmitter`): the ticks of a charged batch go out as one message."""

    async def emit_many(self, items: Sequence[tuple[str, Any, str]]) -> None: ...


# --- SQL ------------------------------------------------------------------------------------

CONSULTATION_FOR_JOIN = """
SELECT id, status, user_id, astrologer_id FROM consultations WHERE id = $1
"""
CONSULTATION_TERMS = """
SELECT user_id, astrologer_id, rate, coalesce(list_rate, rate) AS list_rate, share_percent,
       free_minutes, promo_credit, max_minutes, currency
  FROM consultations WHERE id = $1
"""
INSERT_METER = """
INSERT INTO meters (consultation_id, started_at, minute_seconds, max_minutes)
VALUES ($1, $2, $3, $4)
ON CONFLICT (consultation_id) DO NOTHING
RETURNING consultation_id
"""
INSERT_EVENT = """
INSERT INTO meter_events (consultation_id, kind, minute, due_at, amount, free_amount,
                          astrologer_share, balance_after, minutes_left, reason, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT DO NOTHING
"""
INSERT_EVENTS = """
INSERT INTO meter_events (consultation_id, kind, minute, due_at, amount, free_amount,
                          astrologer_share, balance_after, minutes_left, reason, details)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::int[], $10::text[],
                     $11::jsonb[])
ON CONFLICT DO NOTHING
"""
# Locks the meters of a batch in consultation id order (the lock order of every meter writer).
LOCK_METERS = """
SELECT m.consultation_id, m.started_at, m.minute_seconds, m.max_minutes, m.charged_minutes,
       m.charged_amount, m.free_amount, m.stopped_at,
       c.status, c.user_id, c.astrologer_id, c.rate, coalesce(c.list_rate, c.rate) AS list_rate,
       c.share_percent, c.free_minutes, c.promo_credit, c.currency
  FROM meters m JOIN consultations c ON c.id = m.consultation_id
 WHERE m.consultation_id = ANY($1::uuid[])
 ORDER BY m.consultation_id
   FOR UPDATE OF m
"""
# The loop's variant: a meter whose row another process holds is being charged right now; skip
# it instead of queueing behind it (that process reschedules it when it commits, and if it dies
# its transaction is rolled back and the claim's lease brings the meter back).
LOCK_METERS_SKIP = LOCK_METERS.rstrip() + " SKIP LOCKED\n"
METERS_EXIST = "SELECT consultation_id FROM meters WHERE consultation_id = ANY($1::uuid[])"
UPDATE_CHARGED = """
UPDATE meters m
   SET charged_minutes = u.minutes, charged_amount = u.charged, free_amount = u.free
  FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[]) AS u(id, minutes, charged, free)
 WHERE m.consultation_id = u.id
"""
STOP_METER = """
UPDATE meters SET stopped_at = $2, stop_reason = $3, stop_party = $4
 WHERE consultation_id = $1 AND stopped_at IS NULL
"""
RUNNING_METERS = """
SELECT m.consultation_id, m.started_at, m.minute_seconds, m.charged_minutes,
       c.user_id, c.astrologer_id
  FROM meters m JOIN consultations c ON c.id = m.consultation_id
 WHERE m.stopped_at IS NULL
"""
UNFINALIZED_METERS = """
SELECT consultation_id FROM meters WHERE stopped_at IS NOT NULL AND finalized_at IS NULL
"""
BREAKDOWN = """
SELECT kind, minute, due_at, at, amount, free_amount, astrologer_share, balance_after,
       minutes_left, reason
  FROM meter_events WHERE consultation_id = $1 ORDER BY id
"""


# --- Starting a session ---------------------------------------------------------------------


async def participant_joined(
    services: Services, consultation_id: uuid.UUID, user_id: uuid.UUID
) -> str:
    """A participant joined the consultation's room (Socket.IO `consultation:join`).

    Accepted consultation: remember the join; the second participant's join starts the session.
    Active one: a reconnect, which counts as being seen. Returns what happened: `waiting`,
    `started`, `rejoined` or `ignored` (not a participant, or nothing to meter)."""
    row = await services.db.fetchrow(CONSULTATION_FOR_JOIN, consultation_id)
    if row is None or user_id not in (row["user_id"], row["astrologer_id"]):
        return "ignored"
    if row["status"] == "active":
        await participant_seen(services, consultation_id, user_id)
        return "rejoined"
    if row["status"] != "accepted":
        return "ignored"
    joined_key = keys.joined(consultation_id)
    async with services.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(joined_key, str(user_id))
        pipe.expire(joined_key, keys.JOINED_TTL_SECONDS)
        pipe.smembers(joined_key)
        _, _, members = await pipe.execute()
    if {str(row["user_id"]), str(row["astrologer_id"])} <= set(members):
        return await start_session(services, consultation_id)
    return "waiting"


async def participant_seen(
    services: Services, consultation_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    """A heartbeat of a participant. Only running sessions are tracked (ZADD XX): a heartbeat of
    an ended session changes nothing. After a Redis loss the sweep re-adds the participants."""
    await services.redis.zadd(
        keys.SEEN, {keys.seen_member(consultation_id, user_id): time.time()}, xx=True
    )


async def participant_left(
    services: Services, consultation_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    """A socket of a participant went away. Deliberately nothing: the disconnect event is not
    reliable (DESIGN.md), so a session ends only when heartbeats stop for the grace period."""
    del services, consultation_id, user_id


def effective_max_minutes(consultation_max: int | None, setting_max: int) -> int | None:
    """The session's maximum: the consultation's own and MAX_SESSION_MINUTES (0 = none), the
    smaller of the two; None when neither sets one."""
    limits = [m for m in (consultation_max, setting_max or None) if m]
    return min(limits) if limits else None


async def start_session(services: Services, consultation_id: uuid.UUID) -> str:
    """accepted -> active, the meter row and its `start` event in one transaction; then
    `session:started`, the Redis timers, and minute 1 charged at once. `ignored` when the
    consultation was no longer accepted (another process started it first)."""
    from consultations.lifecycle import mark_active, publish

    settings = services.settings
    now = time.time()
    started_at = _at(now)
    async with services.db.acquire() as conn, conn.transaction():
        consultation = await mark_active(conn, consultation_id, started_at)
        if consultation is None:
            return "ignored"
        terms = await conn.fetchrow(CONSULTATION_TERMS, consultation_id)
        assert terms is not None
        max_minutes = effective_max_minutes(terms["max_minutes"], settings.max_session_minutes)
        minute_seconds = settings.minute_seconds()
        if (
            await conn.fetchval(
                INSERT_METER, consultation_id, started_at, minute_seconds, max_minutes
            )
            is None
        ):
            return "ignored"
        balance, held = await wallet_balance(conn, terms["user_id"], terms["currency"].strip())
        await conn.execute(
            INSERT_EVENT,
            consultation_id,
            "start",
            None,
            started_at,
            0,
            0,
            0,
            balance,
            None,
            None,
            {
                "rate": terms["rate"],
                "list_rate": terms["list_rate"],
                "share_percent": terms["share_percent"],
                "free_minutes": terms["free_minutes"],
                "promo_credit": terms["promo_credit"],
                "max_minutes": max_minutes,
                "minute_seconds": minute_seconds,
                "by": PROCESS_ID,
            },
        )
    user_id, astrologer_id = terms["user_id"], terms["astrologer_id"]
    await services.redis.zadd(
        keys.SEEN,
        {
            keys.seen_member(consultation_id, user_id): now,
            keys.seen_member(consultation_id, astrologer_id): now,
        },
    )
    await services.redis.delete(keys.joined(consultation_id))
    await services.emitter.emit(
        "session:started",
        {
            "consultation_id": str(consultation_id),
            "started_at": started_at.isoformat().replace("+00:00", "Z"),
            "rate": terms["rate"],
            "balance": balance - held,
            "max_minutes": max_minutes,
        },
        f"consultation:{consultation_id}",
    )
    await services.redis.zadd(keys.DUE, {str(consultation_id): now})
    await publish(services, consultation)  # consultation:updated, presence busy
    report = await charge_meters(services, [consultation_id])
    for stopped in report.stopped:  # minute 1 could not be paid
        await after_stop(services, stopped)
    return "started"


# --- Charging -------------------------------------------------------------------------------


@dataclass
class _Meter:
    """A locked `meters` row and its consultation's frozen terms, as the batch plans it."""

    consultation_id: uuid.UUID
    started: float
    minute_seconds: float
    max_minutes: int | None
    charged_minutes: int
    charged_amount: int
    free_amount: int
    stopped: bool
    status: str
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    rate: int
    list_rate: int
    share_percent: int
    free_minutes: int
    promo_credit: int
    currency: str
    user_seen: float | None = None
    astrologer_seen: float | None = None
    changed: bool = False
    stop: tuple[StopReason, Party, float] | None = None
    ticks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> _Meter:
        return cls(
            consultation_id=row["consultation_id"],
            started=row["started_at"].timestamp(),
            minute_seconds=row["minute_seconds"],
            max_minutes=row["max_minutes"],
            charged_minutes=row["charged_minutes"],
            charged_amount=row["charged_amount"],
            free_amount=row["free_amount"],
            stopped=row["stopped_at"] is not None,
            status=row["status"],
            user_id=row["user_id"],
            astrologer_id=row["astrologer_id"],
            rate=row["rate"],
            list_rate=row["list_rate"],
            share_percent=row["share_percent"],
            free_minutes=row["free_minutes"],
            promo_credit=row["promo_credit"],
            currency=row["currency"].strip(),
        )

    @property
    def running(self) -> bool:
        return not self.stopped and self.stop is None and self.status == "active"

    def due(self, minute: int) -> float:
        return self.started + (minute - 1) * self.minute_seconds

    def promo_minutes(self) -> int:
        """Minutes paid by a flat promo credit: every minute it covers even in part (the user is
        never charged for the part of a minute the promo was meant to pay)."""
        if not self.promo_credit or not self.rate:
            return 0
        return -(-self.promo_credit // self.rate)

    def is_free(self, minute: int) -> bool:
        return minute <= self.free_minutes + self.promo_minutes()

    def charge(self, minute: int) -> Charge:
        free = self.is_free(minute)
        price = self.rate
        # The share is computed on the astrologer's own rate (a percent promo does not cut it),
        # but a minute's transfer cannot pay out more than the minute's price.
        share = min(split_share(self.list_rate, self.share_percent)[0], price)
        return Charge(
            key=charge_key(self.consultation_id, minute),
            consultation_id=self.consultation_id,
            user_id=self.user_id,
            astrologer_id=self.astrologer_id,
            amount=0 if free else price,
            astrologer_share=share,
            free_amount=price if free else 0,
            currency=self.currency,
        )

    def minutes_left(self, balance: int) -> int | None:
        """Minutes that can still be charged after the last charged one: free minutes left plus
        what the balance pays, bounded by the maximum duration; None when unbounded."""
        n = self.charged_minutes
        free_left = max(0, self.free_minutes + self.promo_minutes() - n)
        left: int | None = None if self.rate == 0 else free_left + max(0, balance) // self.rate
        if self.max_minutes is not None:
            cap = max(0, self.max_minutes - n)
            left = cap if left is None else min(left, cap)
        return left

    def gone(self, at: float, grace: float) -> tuple[Party, float] | None:
        """The participant gone first by `at` (last seen + grace <= at) and when, if any."""
        candidates: list[tuple[float, Party]] = []
        if self.user_seen is not None and self.user_seen + grace <= at:
            candidates.append((self.user_seen + grace, "user"))
        if self.astrologer_seen is not None and self.astrologer_seen + grace <= at:
            candidates.append((self.astrologer_seen + grace, "astrologer"))
        if not candidates:
            return None
        when, party = min(candidates)
        return party, when

    def low(self, left: int | None) -> bool:
        """Two or fewer paid minutes left: `session:low_balance`."""
        return left is not None and left <= 2 and self.rate > 0


@dataclass
class _Events:
    """Columns of meter_events rows, inserted in one statement."""

    ids: list[uuid.UUID] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    minutes: list[int | None] = field(default_factory=list)
    dues: list[datetime | None] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    frees: list[int] = field(default_factory=list)
    shares: list[int] = field(default_factory=list)
    balances: list[int | None] = field(default_factory=list)
    lefts: list[int | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        consultation_id: uuid.UUID,
        kind: str,
        *,
        minute: int | None = None,
        due: float | None = None,
        amount: int = 0,
        free: int = 0,
        share: int = 0,
        balance: int | None = None,
        left: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.ids.append(consultation_id)
        self.kinds.append(kind)
        self.minutes.append(minute)
        self.dues.append(None if due is None else _at(due))
        self.amounts.append(amount)
        self.frees.append(free)
        self.shares.append(share)
        self.balances.append(balance)
        self.lefts.append(left)
        self.reasons.append(reason)
        self.details.append(details or {})

    async def insert(self, conn: Conn) -> None:
        if self.ids:
            await conn.execute(
                INSERT_EVENTS,
                self.ids,
                self.kinds,
                self.minutes,
                self.dues,
                self.amounts,
                self.frees,
                self.shares,
                self.balances,
                self.lefts,
                self.reasons,
                self.details,
            )


@dataclass(frozen=True)
class Stopped:
    """A meter this call stopped: what `session:ended` says, and what finalization needs."""

    consultation_id: uuid.UUID
    reason: StopReason
    party: Party
    stopped_at: datetime
    billed_minutes: int
    total_charged: int
    user_id: uuid.UUID
    astrologer_id: uuid.UUID


@dataclass
class BatchReport:
    charged: int = 0
    stopped: list[Stopped] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # seconds between due and charge


async def _load_seen(redis: Redis, meters: Sequence[_Meter]) -> None:
    members: list[str] = []
    for m in meters:
        members += [
            keys.seen_member(m.consultation_id, m.user_id),
            keys.seen_member(m.consultation_id, m.astrologer_id),
        ]
    if not members:
        return
    scores = await redis.zmscore(keys.SEEN, members)
    for i, m in enumerate(meters):
        m.user_seen, m.astrologer_seen = scores[2 * i], scores[2 * i + 1]


async def _stop_txn(
    conn: Conn, m: _Meter, reason: StopReason, party: Party, at: float, events: _Events
) -> Stopped | None:
    """Stop a locked meter at `at` (never before its last charged minute began)."""
    if m.charged_minutes:
        at = max(at, m.due(m.charged_minutes) + 0.001)
    stopped_at = _at(at)
    status = await conn.execute(STOP_METER, m.consultation_id, stopped_at, reason, party)
    if status != "UPDATE 1":
        return None
    m.stopped = True
    events.add(
        m.consultation_id,
        "end",
        minute=m.charged_minutes or None,
        amount=m.charged_amount,
        free=m.free_amount,
        reason=reason,
        details={"party": party, "billed_minutes": m.charged_minutes, "by": PROCESS_ID},
    )
    return Stopped(
        m.consultation_id,
        reason,
        party,
        stopped_at,
        m.charged_minutes,
        m.charged_amount,
        m.user_id,
        m.astrologer_id,
    )


async def _charge_locked(
    services: Services,
    conn: Conn,
    meters: Sequence[_Meter],
    now: float,
    events: _Events,
    report: BatchReport,
) -> None:
    """Charge every minute of these locked meters that is due by `now`, in rounds of one minute
    per meter; decide the stops (maximum reached, a participant gone, a minute not payable)."""
    grace = services.settings.disconnect_grace_seconds
    for _ in range(MAX_CATCHUP_ROUNDS):
        planned: list[tuple[_Meter, int, Charge]] = []
        for m in meters:
            if not m.running:
                continue
            n = m.charged_minutes + 1
            due = m.due(n)
            if due > now:
                continue
            if m.max_minutes is not None and n > m.max_minutes:
                m.stop = ("max_duration", "system", m.due(m.max_minutes + 1))
                continue
            gone = m.gone(due, grace)
            if gone is not None:
                m.stop = ("disconnected", gone[0], gone[1])
                continue
            planned.append((m, n, m.charge(n)))
        if not planned:
            return
        results: list[ChargeResult] = await post_charges(conn, [c for _, _, c in planned])
        for (m, n, c), result in zip(planned, results, strict=True):
            due = m.due(n)
            if result.status == "insufficient":
                # Minute n is not charged: the session ends when it would have begun.
                m.stop = ("insufficient_balance", "system", due)
                continue
            m.charged_minutes = n
            m.charged_amount += c.amount
            m.free_amount += c.free_amount
            m.changed = True
            left = m.minutes_left(result.balance_after)
            events.add(
                m.consultation_id,
                "charge",
                minute=n,
                due=due,
                amount=c.amount,
                free=c.free_amount,
                share=c.astrologer_share,
                balance=result.balance_after,
                left=left,
                details={"by": PROCESS_ID, "ledger": result.status},
            )
            report.charged += 1
            report.lags.append(time.time() - due)
            m.ticks.append(
                {
                    "consultation_id": str(m.consultation_id),
                    "minute": n,
                    "charged": m.charged_amount,
                    "amount": c.amount,
                    "free": c.free_amount > 0,
                    "balance": result.balance_after,
                    "minutes_left": left,
                }
            )
            if m.low(left):
                events.add(
                    m.consultation_id, "low_balance", minute=n, left=left,
                    balance=result.balance_after,
                )  # fmt: skip


async def _write_locked(
    conn: Conn, meters: Sequence[_Meter], events: _Events, report: BatchReport
) -> None:
    """Persist what `_charge_locked` and the caller decided, in the same transaction."""
    changed = [m for m in meters if m.changed]
    if changed:
        await conn.execute(
            UPDATE_CHARGED,
            [m.consultation_id for m in changed],
            [m.charged_minutes for m in changed],
            [m.charged_amount for m in changed],
            [m.free_amount for m in changed],
        )
    for m in meters:
        if m.stop is not None and not m.stopped:
            stopped = await _stop_txn(conn, m, *m.stop, events)
            if stopped is not None:
                report.stopped.append(stopped)
    await events.insert(conn)


async def _publish(
    services: Services, meters: Sequence[_Meter], asked: Sequence[uuid.UUID]
) -> None:
    """After the commit: reschedule running meters, drop finished ones, emit the ticks."""
    found = {m.consultation_id for m in meters}
    running = {str(m.consultation_id): m.due(m.charged_minutes + 1) for m in meters if m.running}
    finished = [str(m.consultation_id) for m in meters if not m.running]
    finished += [str(i) for i in asked if i not in found]
    if running or finished:
        async with services.redis.pipeline(transaction=False) as pipe:
            if running:
                pipe.zadd(keys.DUE, running)
            if finished:
                pipe.zrem(keys.DUE, *finished)
            await pipe.execute()
    items: list[tuple[str, Any, str]] = []
    for m in meters:
        room = f"consultation:{m.consultation_id}"
        for tick in m.ticks:
            items.append(("session:tick", tick, room))
            left = tick["minutes_left"]
            if m.low(left):
                payload = {"consultation_id": tick["consultation_id"], "minutes_left": left}
                items.append(("session:low_balance", payload, room))
    if not items:
        return
    emitter = services.emitter
    if isinstance(emitter, BatchEmitter):
        # One Redis message for the whole batch (realtime.server.BatchingRedisManager).
        await emitter.emit_many(items)
    else:
        for event, data, room in items:  # in order: a consultation's tick before its warning
            await emitter.emit(event, data, room)


async def charge_meters(
    services: Services,
    consultation_ids: Sequence[uuid.UUID],
    *,
    now: float | None = None,
    skip_locked: bool = False,
) -> BatchReport:
    """Charge every due minute of these meters (normally one each) in one transaction and stop
    the ones that cannot go on; then reschedule and emit. The caller runs `after_stop` for
    `report.stopped`. Safe for any ids, any number of times, from any process: the row locks and
    the ledger keys make each minute once."""
    now = time.time() if now is None else now
    report = BatchReport()
    events = _Events()
    async with services.db.acquire() as conn, conn.transaction():
        lock = LOCK_METERS_SKIP if skip_locked else LOCK_METERS
        rows = await conn.fetch(lock, sorted(set(consultation_ids)))
        meters = [_Meter.from_row(r) for r in rows]
        await _load_seen(services.redis, [m for m in meters if m.running])
        await _charge_locked(services, conn, meters, now, events, report)
        await _write_locked(conn, meters, events, report)
    locked = {m.consultation_id for m in meters}
    if skip_locked and len(locked) < len(set(consultation_ids)):
        # The skipped ones belong to whoever holds them; ids with no meter at all are dropped.
        rest = [i for i in consultation_ids if i not in locked]
        exist = {r["consultation_id"] for r in await services.db.fetch(METERS_EXIST, rest)}
        consultation_ids = [i for i in consultation_ids if i not in exist]
    await _publish(services, meters, consultation_ids)
    return report


# --- Ending ---------------------------------------------------------------------------------


async def stop_meter(
    services: Services,
    consultation_id: uuid.UUID,
    reason: StopReason,
    party: Party,
    *,
    at: float | None = None,
) -> Stopped | None:
    """Stop a running meter at `at` (now by default): a participant ended it, or was gone too
    long. In the same locked transaction the minutes already due by then are charged first, so
    nothing that started before the end is lost and nothing after it is billed. None when it was
    not running (already stopped, never started)."""
    at = time.time() if at is None else at
    report = BatchReport()
    events = _Events()
    async with services.db.acquire() as conn, conn.transaction():
        rows = await conn.fetch(LOCK_METERS, [consultation_id])
        meters = [_Meter.from_row(r) for r in rows]
        if not meters or not meters[0].running:
            return None
        m = meters[0]
        await _load_seen(services.redis, meters)
        await _charge_locked(services, conn, meters, at, events, report)
        if m.stop is None:
            m.stop = (reason, party, at)
        await _write_locked(conn, meters, events, report)
    await _publish(services, meters, [consultation_id])
    return report.stopped[0] if report.stopped else None


async def after_stop(services: Services, stopped: Stopped) -> None:
    """What follows a stop, outside its transaction: drop the Redis timers, tell both sides,
    queue the finalization job and run it now (the job finds it done; it is the safety net)."""
    cid = stopped.consultation_id
    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.DUE, str(cid))
        pipe.zrem(
            keys.SEEN,
            keys.seen_member(cid, stopped.user_id),
            keys.seen_member(cid, stopped.astrologer_id),
        )
        await pipe.execute()
    await services.emitter.emit(
        "session:ended",
        {
            "consultation_id": str(cid),
            "reason": stopped.reason,
            "billed_minutes": stopped.billed_minutes,
            "total_charged": stopped.total_charged,
        },
        f"consultation:{cid}",
    )
    await enqueue_finalize(services, cid)
    from billing.meter_finalize import finalize

    try:
        await finalize(services, cid)
    except Exception:  # the queued job (and the sweep) finalize it later
        log.exception("finalizing in-process failed", extra={"id": str(cid)})


async def enqueue_finalize(services: Services, consultation_id: uuid.UUID) -> None:
    try:
        await services.arq.enqueue_job(
            "finalize_consultation", str(consultation_id), _job_id=f"finalize:{consultation_id}"
        )
    except Exception:  # the sweep re-queues unfinalized sessions; never fail an end on Redis
        log.exception("could not queue finalize_consultation", extra={"id": str(consultation_id)})


async def end_by_participant(
    services: Services, consultation_id: uuid.UUID, actor_id: uuid.UUID
) -> None:
    """A participant ends their live session now (`POST .../end`, `consultation:end`). Ending one
    that already ended is a no-op; another person's consultation is not found; one that never
    started is a conflict."""
    row = await services.db.fetchrow(CONSULTATION_FOR_JOIN, consultation_id)
    if row is None or actor_id not in (row["user_id"], row["astrologer_id"]):
        raise NotFound()
    if row["status"] == "completed":
        return
    if row["status"] != "active":
        raise Conflict("this consultation is not in a live session", code="not_active")
    party: Party = "user" if actor_id == row["user_id"] else "astrologer"
    reason: StopReason = "user_ended" if party == "user" else "astrologer_ended"
    stopped = await stop_meter(services, consultation_id, reason, party)
    if stopped is not None:
        await after_stop(services, stopped)
    else:
        # Stopped by something else meanwhile: make sure it is finalized before answering.
        from billing.meter_finalize import finalize

        await finalize(services, consultation_id)


async def check_disconnects(services: Services, now: float | None = None) -> int:
    """Stop the sessions of participants not seen for longer than the grace. Returns how many
    were stopped here."""
    now = time.time() if now is None else now
    grace = services.settings.disconnect_grace_seconds
    members = await services.redis.zrangebyscore(
        keys.SEEN, "-inf", now - grace, start=0, num=DISCONNECT_SCAN_LIMIT, withscores=True
    )
    count = 0
    for member, seen in members:
        # Claim it: of several processes scanning at once, one goes on.
        if not await services.redis.zrem(keys.SEEN, member):
            continue
        consultation_id, user_id = keys.parse_seen_member(member)
        row = await services.db.fetchrow(CONSULTATION_FOR_JOIN, consultation_id)
        if row is None:
            continue
        party: Party = "user" if user_id == row["user_id"] else "astrologer"
        stopped = await stop_meter(
            services, consultation_id, "disconnected", party, at=seen + grace
        )
        if stopped is not None:
            count += 1
            await after_stop(services, stopped)
    return count


# --- The timer: claiming due meters ---------------------------------------------------------

# KEYS: due set, alive flag. ARGV: now, max count, lease-until. Pops the due members by
# re-scoring them to the lease end (so a dead claimer's meters come back), atomically: two
# processes never claim one due member at once. Also says whether Redis still has our data.
CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due do
    redis.call('ZADD', KEYS[1], ARGV[3], due[i])
end
return {redis.call('EXISTS', KEYS[2]), due}
"""


class MeterClock:
    """The claim script, loaded once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(CLAIM_LUA)

    async def claim(self, now: float, count: int, lease: float) -> tuple[bool, list[uuid.UUID]]:
        """(Redis still has the meters, the consultation ids claimed)."""
        alive, members = await self._script(
            keys=[keys.DUE, keys.ALIVE], args=[now, count, now + lease]
        )
        return bool(alive), [uuid.UUID(m) for m in members]


async def sweep(services: Services) -> dict[str, int]:
    """Rebuild the Redis meters of running sessions from PostgreSQL and re-queue unfinished
    finalizations. Existing timers and last-seen times are kept (NX); missing ones get the next
    minute's due time (charged + 1, in the past when minutes were missed: charged at once) and
    "seen now" (participants get a full grace after Redis lost when they were last seen)."""
    now = time.time()
    rows = await services.db.fetch(RUNNING_METERS)
    due: dict[str, float] = {}
    seen: dict[str, float] = {}
    for r in rows:
        cid = r["consultation_id"]
        due[str(cid)] = r["started_at"].timestamp() + r["charged_minutes"] * r["minute_seconds"]
        seen[keys.seen_member(cid, r["user_id"])] = now
        seen[keys.seen_member(cid, r["astrologer_id"])] = now
    chunk = 5000
    due_items, seen_items = list(due.items()), list(seen.items())
    for i in range(0, max(len(due_items), len(seen_items)), chunk):
        async with services.redis.pipeline(transaction=False) as pipe:
            if due_items[i : i + chunk]:
                pipe.zadd(keys.DUE, dict(due_items[i : i + chunk]), nx=True)
            if seen_items[i : i + chunk]:
                pipe.zadd(keys.SEEN, dict(seen_items[i : i + chunk]), nx=True)
            await pipe.execute()
    await services.redis.set(keys.ALIVE, str(now))
    unfinalized = await services.db.fetch(UNFINALIZED_METERS)
    for r in unfinalized:
        await enqueue_finalize(services, r["consultation_id"])
    if rows or unfinalized:
        log.info("meter sweep", extra={"running": len(rows), "unfinalized": len(unfinalized)})
    return {"running": len(rows), "unfinalized": len(unfinalized)}


async def finalize_pending(services: Services) -> int:
    """Finalize in this process the stopped sessions nobody finalized (the job is the other
    path); used by the web loop's periodic sweep."""
    from billing.meter_finalize import finalize

    done = 0
    for r in await services.db.fetch(UNFINALIZED_METERS):
        if await finalize(services, r["consultation_id"]):
            done += 1
    return done


class MeterLoop:
    """The per-process loop that charges due minutes. Start one in every web process; they share
    the work through the claim script."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.clock = MeterClock(services.redis)
        self.inflight: set[asyncio.Task[Any]] = set()
        self.background: set[asyncio.Task[Any]] = set()
        self.lags: list[float] = []
        self.charged = 0
        self.keep_lags = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _charge(self, ids: list[uuid.UUID]) -> None:
        try:
            report = await charge_meters(self.services, ids, skip_locked=True)
        except Exception:
            # The claimed meters come back after the lease; the ledger keys make a retry safe.
            log.exception("meter batch failed", extra={"meters": len(ids)})
            return
        self.charged += report.charged
        if self.keep_lags:
            self.lags.extend(report.lags)
        for stopped in report.stopped:
            self._spawn(self._after_stop(stopped))

    async def _after_stop(self, stopped: Stopped) -> None:
        try:
            await after_stop(self.services, stopped)
        except Exception:
            log.exception("after a meter stop", extra={"id": str(stopped.consultation_id)})

    async def _periodic(self) -> None:
        got = await self.services.redis.set(
            keys.SWEEP_LOCK, PROCESS_ID, nx=True, ex=keys.SWEEP_LOCK_TTL_SECONDS
        )
        if got:
            await sweep(self.services)
            await finalize_pending(self.services)

    async def run(self) -> None:
        settings = self.services.settings
        try:
            await sweep(self.services)
        except Exception:
            log.exception("meter sweep at start failed")
        last_sweep = last_scan = time.monotonic()
        while True:
            try:
                if len(self.inflight) >= settings.meter_concurrency:
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                now = time.time()
                alive, ids = await self.clock.claim(
                    now, settings.meter_batch_size, settings.meter_lease_seconds
                )
                if not alive:
                    log.warning("meters missing from Redis: rebuilding from PostgreSQL")
                    await sweep(self.services)
                if ids:
                    task = asyncio.ensure_future(self._charge(ids))
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
                mono = time.monotonic()
                if mono - last_scan >= DISCONNECT_SCAN_SECONDS or not ids:
                    last_scan = mono
                    await check_disconnects(self.services, now)
                if mono - last_sweep >= settings.meter_sweep_seconds:
                    last_sweep = mono
                    await self._periodic()
                if not ids:
                    await asyncio.sleep(settings.meter_poll_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("meter loop iteration failed")
                await asyncio.sleep(1)

    async def close(self) -> None:
        tasks = list(self.inflight) + list(self.background)
        if tasks:
            await asyncio.wait(tasks, timeout=10)


@contextlib.asynccontextmanager
async def running_loop(services: Services) -> AsyncIterator[MeterLoop]:
    """Run a `MeterLoop` for as long as the context lasts (a web process's lifetime)."""
    loop = MeterLoop(services)
    task = asyncio.create_task(loop.run(), name="meter-loop")
    try:
        yield loop
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await loop.close()


# --- The bill, line by line ------------------------------------------------------------------

Audience = Literal["user", "astrologer", "admin"]


async def breakdown(
    conn: Conn | asyncpg.Pool[Any], consultation_id: uuid.UUID, audience: Audience = "admin"
) -> list[dict[str, Any]]:
    """Every meter event of a consultation in order: start, each charged minute (due time, when
    it was charged, amount, free part, balance after), warnings, the end and its reason, refunds.
    The astrologer does not see the user's balance; the user does not see the astrologer's
    share."""
    lines = []
    for r in await conn.fetch(BREAKDOWN, consultation_id):
        line: dict[str, Any] = {
            "kind": r["kind"],
            "minute": r["minute"],
            "due_at": r["due_at"],
            "at": r["at"],
            "amount": r["amount"],
            "free_amount": r["free_amount"],
            "astrologer_share": r["astrologer_share"],
            "balance_after": r["balance_after"],
            "minutes_left": r["minutes_left"],
            "reason": r["reason"],
        }
        if audience == "astrologer":
            line["balance_after"] = line["minutes_left"] = None
        elif audience == "user":
            line["astrologer_share"] = None
        lines.append(line)
    return lines
