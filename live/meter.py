"""The minute meter's use case: charge due minutes in batches, stop sessions, rebuild after a
Redis loss. Timing and presence come from `live.clock` (Redis, one clock), decisions from
`live.planner` (pure), money from `billing.ledger`.

- A claimed batch is charged in ONE PostgreSQL transaction: the `meters` rows are locked (sorted
  ids, the one lock order), the planner says which minutes each may charge and whether it stops,
  the minutes are posted through `billing.ledger.post_charges` with the key
  `charge:{consultation}:{minute}`, and `meters.charged_minutes` and `meter_events` move with
  them. A minute the wallet cannot pay is not charged: the meter stops at that minute's start
  with `insufficient_balance`.
- A stop (end, disconnect deadline, maximum) is a point in time; no minute that starts at or after
  it is charged (planner + clock). Should one have been charged anyway (a Redis loss between the
  registration of an end and its commit), the stop refunds it in the same transaction and logs
  an error: `meter_events` kind `refund` with `details.overcharge`.
- After the stop, `live.finalize.finalize` (the arq job `finalize_consultation`, also run at once
  in-process) completes the consultation from the ledger's totals.
- PostgreSQL is the truth: `sweep` rebuilds the Redis timers and presence of running sessions
  from `meters` and `session_presence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import asyncpg

from billing import rules
from billing.ledger import ChargeResult, post_charges
from billing.refunds import RefundExceedsCharged, refund_consultation
from core import events, metrics
from core.services import Services
from db.pool import Conn, custom_plans
from live import keys
from live.clock import RedisClock, SessionState
from live.finalize import finalize
from live.planner import (
    PartyName,
    Plan,
    Policy,
    Stop,
    StopReason,
    Terms,
    Timing,
    overcharged,
    plan,
)

log = logging.getLogger(__name__)

# Who charged a minute, kept on each charge line so a bill can be traced to a process.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"
# A batch whose meters fell far behind (every process was down) charges the missed minutes in
# rounds, one minute per meter per round; each round is one post_charges call.
MAX_CATCHUP_ROUNDS = 10_000
# How often the loop looks for participants whose process stopped beating.
STALE_SCAN_SECONDS = 0.5
STALE_SCAN_LIMIT = 500
# A claimed meter that this batch could not take (another transaction holds its row, or the
# batch failed) is looked at again this soon, never a whole lease later (issue 12: the tail).
RETRY_SECONDS = 0.2


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@runtime_checkable
class BatchEmitter(Protocol):
    """An `Emitter` that can also send many room emits at once, in order (the web processes' and
    workers' `realtime.server.SioEmitter`): the ticks of a charged batch go out as one message."""

    async def emit_many(self, items: Sequence[tuple[str, Any, str]]) -> None: ...


# --- SQL ------------------------------------------------------------------------------------

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
# The loop's variant: a meter whose row another transaction holds is skipped instead of queueing
# behind it, and looked at again RETRY_SECONDS later.
LOCK_METERS_SKIP = LOCK_METERS.rstrip() + " SKIP LOCKED\n"
METERS_EXIST = "SELECT consultation_id FROM meters WHERE consultation_id = ANY($1::uuid[])"
UPDATE_CHARGED = """
UPDATE meters m
   SET charged_minutes = u.minutes, charged_amount = u.charged, free_amount = u.free
  FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[]) AS u(id, minutes, charged, free)
 WHERE m.consultation_id = u.id
"""
STOP_METER = """
UPDATE meters SET stopped_at = $2, stop_reason = $3, stop_party = $4, charged_minutes = $5,
                  charged_amount = $6, free_amount = $7
 WHERE consultation_id = $1 AND stopped_at IS NULL
"""
CHARGED_AFTER = """
SELECT minute, amount, free_amount FROM meter_events
 WHERE consultation_id = $1 AND kind = 'charge' AND minute > $2
 ORDER BY minute
"""
INSERT_REFUND_EVENT = """
INSERT INTO meter_events (consultation_id, kind, amount, reason, details)
VALUES ($1, 'refund', $2, $3, $4)
"""
RUNNING_METERS = """
SELECT m.consultation_id, m.started_at, m.minute_seconds, m.max_minutes, m.charged_minutes,
       c.user_id, c.astrologer_id
  FROM meters m JOIN consultations c ON c.id = m.consultation_id
 WHERE m.stopped_at IS NULL
"""
PRESENCE_OF_RUNNING = """
SELECT p.consultation_id, p.user_id, extract(epoch FROM p.present_at)::float8 AS present_at,
       extract(epoch FROM p.gone_at)::float8 AS gone_at
  FROM session_presence p JOIN meters m ON m.consultation_id = p.consultation_id
 WHERE m.stopped_at IS NULL
"""
UNFINALIZED_METERS = """
SELECT consultation_id FROM meters WHERE stopped_at IS NOT NULL AND finalized_at IS NULL
"""
WRITE_PRESENCE = """
INSERT INTO session_presence (consultation_id, user_id, present_at, gone_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[])
ON CONFLICT (consultation_id, user_id) DO UPDATE
   SET present_at = greatest(session_presence.present_at, excluded.present_at),
       gone_at = excluded.gone_at
"""


# --- A locked meter -------------------------------------------------------------------------


@dataclass
class _Meter:
    """A locked `meters` row and its consultation's frozen terms, as the batch plans it."""

    terms: Terms
    timing: Timing
    charged_minutes: int
    charged_amount: int
    free_amount: int
    stopped: bool
    status: str
    changed: bool = False
    plan: Plan | None = None
    stop: Stop | None = None
    wake: float | None = None
    ticks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> _Meter:
        return cls(
            terms=Terms(
                consultation_id=row["consultation_id"],
                user_id=row["user_id"],
                astrologer_id=row["astrologer_id"],
                money=rules.Terms.from_record(row),
            ),
            timing=Timing(
                started=row["started_at"].timestamp(),
                minute_seconds=row["minute_seconds"],
                max_minutes=row["max_minutes"],
            ),
            charged_minutes=row["charged_minutes"],
            charged_amount=row["charged_amount"],
            free_amount=row["free_amount"],
            stopped=row["stopped_at"] is not None,
            status=row["status"],
        )

    @property
    def id(self) -> uuid.UUID:
        return self.terms.consultation_id

    @property
    def running(self) -> bool:
        return not self.stopped and self.stop is None and self.status == "active"


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
class Refunded:
    """Minutes charged past the stop and refunded by it (must not happen; reported)."""

    minutes: list[int]
    amount: int


@dataclass(frozen=True)
class Stopped:
    """A meter this call stopped: what `session:ended` says, and what finalization needs."""

    consultation_id: uuid.UUID
    reason: StopReason
    party: PartyName
    stopped_at: datetime
    billed_minutes: int
    total_charged: int
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    earned: int = 0
    refunded: Refunded | None = None


@dataclass
class BatchReport:
    charged: int = 0
    stopped: list[Stopped] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # seconds between due and charge
    overcharged: int = 0  # minutes refunded because they started at or after their stop


# --- Charging -------------------------------------------------------------------------------


def _settings_times(services: Services) -> tuple[float, float]:
    """(grace, stale): the disconnect grace and how long a silent process is believed alive."""
    s = services.settings
    return s.disconnect_grace_seconds, s.realtime_heartbeat_seconds * keys.HEARTBEAT_MISSES


def _plan_all(
    services: Services, meters: Sequence[_Meter], states: dict[uuid.UUID, SessionState], now: float
) -> None:
    grace, stale = _settings_times(services)
    for m in meters:
        if not m.running:
            continue
        policy = Policy(m.terms.user_id, m.terms.astrologer_id, grace, stale)
        m.plan = plan(m.timing, m.charged_minutes, states.get(m.id), policy, now)


async def _charge_locked(
    conn: Conn, meters: Sequence[_Meter], events: _Events, report: BatchReport
) -> None:
    """Charge the planned minutes of these locked meters, in rounds of one minute per meter; a
    minute the wallet cannot pay stops its meter at that minute's start."""
    for _ in range(MAX_CATCHUP_ROUNDS):
        planned = []
        for m in meters:
            if m.running and m.plan is not None and m.charged_minutes < m.plan.last:
                n = m.charged_minutes + 1
                planned.append((m, n, m.terms.charge(n)))
        if not planned:
            break
        results: list[ChargeResult] = await post_charges(conn, [c for _, _, c in planned])
        for (m, n, c), result in zip(planned, results, strict=True):
            due = m.timing.due(n)
            if result.status == "insufficient":
                # Minute n is not charged: the session ends when it would have begun.
                m.stop = Stop("insufficient_balance", "system", due)
                continue
            m.charged_minutes = n
            m.charged_amount += c.amount
            m.free_amount += c.free_amount
            m.changed = True
            left = m.terms.minutes_left(n, result.available_after, m.timing.max_minutes)
            events.add(
                m.id, "charge", minute=n, due=due, amount=c.amount, free=c.free_amount,
                share=c.astrologer_share, balance=result.balance_after, left=left,
                details={"by": PROCESS_ID, "ledger": result.status},
            )  # fmt: skip
            report.charged += 1
            report.lags.append(time.time() - due)
            m.ticks.append(
                {
                    "consultation_id": str(m.id),
                    "minute": n,
                    "charged": m.charged_amount,
                    "amount": c.amount,
                    "earned": c.astrologer_share,
                    "free": c.free_amount > 0,
                    "balance": result.balance_after,
                    "minutes_left": left,
                }
            )
            if m.terms.low(left):
                events.add(m.id, "low_balance", minute=n, left=left, balance=result.balance_after)
    for m in meters:
        if m.running and m.plan is not None:
            if m.plan.stop is not None:
                m.stop = m.plan.stop
            else:
                m.wake = m.plan.wake


async def _stop_txn(conn: Conn, m: _Meter, stop: Stop, events: _Events) -> Stopped | None:
    """Stop a locked meter at `stop.at`. A minute charged at or after the stop (it must not
    happen) is refunded here and reported."""
    refunded: Refunded | None = None
    extra = overcharged(m.timing, m.charged_minutes, stop.at)
    if extra:
        refunded = await _refund_overcharge(conn, m, extra, stop, events)
    stopped_at = _at(stop.at)
    status = await conn.execute(
        STOP_METER, m.id, stopped_at, stop.reason, stop.party, m.charged_minutes,
        m.charged_amount, m.free_amount,
    )  # fmt: skip
    if status != "UPDATE 1":
        return None
    m.stopped = True
    events.add(
        m.id,
        "end",
        minute=m.charged_minutes or None,
        amount=m.charged_amount,
        free=m.free_amount,
        reason=stop.reason,
        details={
            "party": stop.party,
            "billed_minutes": m.charged_minutes,
            "by": PROCESS_ID,
            "at": stop.at,
        },
    )
    return Stopped(
        m.id,
        stop.reason,
        stop.party,
        stopped_at,
        m.charged_minutes,
        m.charged_amount,
        m.terms.user_id,
        m.terms.astrologer_id,
        refunded=refunded,
    )


async def _refund_overcharge(
    conn: Conn, m: _Meter, minutes: list[int], stop: Stop, events: _Events
) -> Refunded:
    rows = await conn.fetch(CHARGED_AFTER, m.id, minutes[0] - 1)
    amount = sum(r["amount"] for r in rows)
    free = sum(r["free_amount"] for r in rows)
    log.error(
        "minutes charged at or after the stop: refunded",
        extra={"id": str(m.id), "minutes": minutes, "amount": amount, "stop_at": stop.at},
    )
    reason = f"minutes {minutes[0]}-{minutes[-1]} began at or after the session's end"
    refund_id = None
    if amount > 0:
        try:
            refund = await refund_consultation(
                conn, consultation_id=m.id, amount=amount, reason=reason, actor_id=None,
                key=f"overcharge:{m.id}",
            )  # fmt: skip
            refund_id = str(refund.id)
        except RefundExceedsCharged:  # refunded by hand already
            log.error("overcharge already refunded", extra={"id": str(m.id)})
    events.add(
        m.id,
        "refund",
        amount=amount,
        reason=reason,
        details={"overcharge": minutes, "refund_id": refund_id, "by": PROCESS_ID},
    )
    m.charged_minutes = minutes[0] - 1
    m.charged_amount -= amount
    m.free_amount -= free
    return Refunded(minutes, amount)


async def _write_locked(
    conn: Conn, meters: Sequence[_Meter], events: _Events, report: BatchReport
) -> None:
    """Persist what the batch decided, in the same transaction."""
    changed = [m for m in meters if m.changed and m.stop is None]
    if changed:
        await conn.execute(
            UPDATE_CHARGED,
            [m.id for m in changed],
            [m.charged_minutes for m in changed],
            [m.charged_amount for m in changed],
            [m.free_amount for m in changed],
        )
    for m in meters:
        if m.stop is not None and not m.stopped:
            stopped = await _stop_txn(conn, m, m.stop, events)
            if stopped is not None:
                report.stopped.append(stopped)
                if stopped.refunded is not None:
                    report.overcharged += len(stopped.refunded.minutes)
    await events.insert(conn)


# KEYS: due set, gone set. ARGV: grace, then (consultation id, wake, user member, astrologer
# member) per meter. Reschedules running meters at their wake time, but never after a disconnect
# deadline registered while the batch ran (LEAVE_LUA lowered the score; a plain ZADD would undo
# that).
RESCHEDULE_LUA = """
local grace = tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
    local w = tonumber(ARGV[i + 1])
    for j = 2, 3 do
        local g = redis.call('ZSCORE', KEYS[2], ARGV[i + j])
        if g and tonumber(g) + grace < w then w = tonumber(g) + grace end
    end
    redis.call('ZADD', KEYS[1], w, ARGV[i])
end
return 0
"""


async def _publish(
    services: Services,
    meters: Sequence[_Meter],
    asked: Sequence[uuid.UUID],
    retry: Sequence[uuid.UUID] = (),
    retry_at: float | None = None,
) -> None:
    """After the commit: reschedule running meters, drop finished ones, retry skipped ones soon,
    emit the ticks (the user's copy with their money, the astrologer's with their earnings)."""
    found = {m.id for m in meters}
    running = [m for m in meters if m.running and m.wake is not None]
    finished = [str(m.id) for m in meters if not m.running]
    finished += [str(i) for i in asked if i not in found and i not in retry]
    redis = services.redis
    if running:
        args: list[Any] = [services.settings.disconnect_grace_seconds]
        for m in running:
            args += [
                str(m.id),
                m.wake,
                keys.member(m.id, m.terms.user_id),
                keys.member(m.id, m.terms.astrologer_id),
            ]
        await redis.register_script(RESCHEDULE_LUA)(keys=[keys.DUE, keys.GONE], args=args)
    if finished or retry:
        async with redis.pipeline(transaction=False) as pipe:
            if finished:
                pipe.zrem(keys.DUE, *finished)
            if retry and retry_at is not None:
                # XX: only meters still running; LT: the holder's own reschedule may be sooner.
                pipe.zadd(keys.DUE, {str(i): retry_at for i in retry}, xx=True, lt=True)
            await pipe.execute()
    items: list[tuple[str, Any, str]] = []
    for m in meters:
        user_room = events.Room.participant(m.id, m.terms.user_id)
        astro_room = events.Room.participant(m.id, m.terms.astrologer_id)
        for tick in m.ticks:
            items.append(("session:tick", user_tick(tick), user_room))
            items.append(("session:tick", astrologer_tick(tick), astro_room))
            left = tick["minutes_left"]
            if m.terms.low(left):
                cid = tick["consultation_id"]
                warning = events.SessionLowBalance(consultation_id=cid, minutes_left=left)
                items.append(("session:low_balance", warning.payload(), user_room))
                told = events.SessionLowBalance(consultation_id=cid, minute=tick["minute"])
                items.append(("session:low_balance", told.payload(), astro_room))
    if not items:
        return
    emitter = services.emitter
    if isinstance(emitter, BatchEmitter):
        # One Redis message for the whole batch (realtime.server.BatchingRedisManager).
        await emitter.emit_many(items)
    else:
        for event, data, room in items:  # in order: a consultation's tick before its warning
            await emitter.emit(event, data, room)


def user_tick(tick: dict[str, Any]) -> dict[str, Any]:
    """`session:tick` as the user sees it (core.events.SessionTick, the user's copy): their
    money, never the astrologer's. Built as a plain dict: this is the hot path (one per charged
    minute); tests/meter/test_rules.py checks both copies against the contract."""
    return {
        "consultation_id": tick["consultation_id"],
        "minute": tick["minute"],
        "charged": tick["charged"],
        "amount": tick["amount"],
        "free": tick["free"],
        "balance": tick["balance"],
        "minutes_left": tick["minutes_left"],
    }


def astrologer_tick(tick: dict[str, Any]) -> dict[str, Any]:
    """`session:tick` as the astrologer sees it: the minute and what they earned for it, never
    the user's balance or minutes left (API.md, Session rules made explicit)."""
    return {
        "consultation_id": tick["consultation_id"],
        "minute": tick["minute"],
        "earned": tick["earned"],
    }


async def charge_meters(
    services: Services,
    consultation_ids: Sequence[uuid.UUID],
    *,
    now: float | None = None,
    skip_locked: bool = False,
    clock: RedisClock | None = None,
) -> BatchReport:
    """Charge every chargeable minute of these meters (normally one each) in one transaction and
    stop the ones that must stop; then reschedule and emit. `now` is a Redis-clock time (the
    claim's); None reads the Redis clock. The caller runs `after_stop` for `report.stopped`.
    Safe for any ids, any number of times, from any process: the row locks and the ledger keys
    make each minute once."""
    clock = clock or RedisClock(services.redis)
    if now is None:
        now = await clock.now()
    report = BatchReport()
    events = _Events()
    ids = sorted(set(consultation_ids))
    async with services.db.acquire() as conn, conn.transaction():
        await custom_plans(conn)  # issue 15: batched statements, planned for their ids
        rows = await conn.fetch(LOCK_METERS_SKIP if skip_locked else LOCK_METERS, ids)
        meters = [_Meter.from_row(r) for r in rows]
        running = [m for m in meters if m.running]
        # Read AFTER `now` was fixed (the claim): a stop or disconnect not seen here was
        # registered later, at a Redis time >= now (live/clock.py).
        states = await clock.states(
            [(m.id, m.terms.user_id, m.terms.astrologer_id) for m in running]
        )
        _plan_all(services, meters, states, now)
        await _charge_locked(conn, meters, events, report)
        await _write_locked(conn, meters, events, report)
    retry: list[uuid.UUID] = []
    locked = {m.id for m in meters}
    if skip_locked and len(locked) < len(ids):
        rest = [i for i in ids if i not in locked]
        retry = [r["consultation_id"] for r in await services.db.fetch(METERS_EXIST, rest)]
    await _publish(services, meters, ids, retry, now + RETRY_SECONDS)
    metrics.domain().meter_charged(report.lags)  # issue 15: after the commit
    return report


# --- Stopping -------------------------------------------------------------------------------


async def stop_meter(
    services: Services,
    consultation_id: uuid.UUID,
    reason: StopReason,
    party: PartyName,
    *,
    at: float,
) -> Stopped | None:
    """Stop a running meter at `at` (a Redis-clock time: a registered end). In the same locked
    transaction the minutes that started before `at` and are not charged yet are charged first,
    so nothing that started before the end is lost and nothing after it is billed; an earlier
    stop that the planner knows (a disconnect deadline, the maximum) wins. None when it was not
    running (already stopped, never started)."""
    clock = RedisClock(services.redis)
    report = BatchReport()
    events = _Events()
    async with services.db.acquire() as conn, conn.transaction():
        rows = await conn.fetch(LOCK_METERS, [consultation_id])
        meters = [_Meter.from_row(r) for r in rows]
        if not meters or not meters[0].running:
            return None
        m = meters[0]
        states = await clock.states([(m.id, m.terms.user_id, m.terms.astrologer_id)])
        state = states.get(m.id)
        if state is not None:
            state = SessionState(stop=(at, reason, party), parties=state.parties)
        _plan_all(services, meters, {m.id: state} if state else {}, at)
        await _charge_locked(conn, meters, events, report)
        if m.stop is None or m.stop.at > at:
            m.stop = Stop(reason, party, at)
        await _write_locked(conn, meters, events, report)
    await _publish(services, meters, [consultation_id])
    metrics.domain().meter_charged(report.lags)  # issue 15: after the commit
    return report.stopped[0] if report.stopped else None


async def after_stop(services: Services, stopped: Stopped) -> None:
    """What follows a stop, outside its transaction: drop the Redis state, tell both sides (each
    its own figures), queue the finalization job and run it now (the job is the safety net)."""
    cid = stopped.consultation_id
    metrics.domain().meter_stopped(stopped.reason)  # issue 15: once per stop (its commit)
    members = [
        keys.member(cid, stopped.user_id),
        keys.member(cid, stopped.astrologer_id),
    ]
    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.DUE, str(cid))
        pipe.zrem(keys.SEEN, *members)
        pipe.zrem(keys.GONE, *members)
        pipe.delete(keys.state(cid))
        await pipe.execute()
    ended = events.SessionEnded(
        consultation_id=str(cid),
        reason=stopped.reason,
        billed_minutes=stopped.billed_minutes,
        total_charged=stopped.total_charged,
    )
    await events.send(services.emitter, ended, events.Room.participant(cid, stopped.user_id))
    earned = await services.db.fetchval(EARNED, f"charge:{cid}:%", stopped.billed_minutes, cid)
    told = events.SessionEnded(
        consultation_id=str(cid),
        reason=stopped.reason,
        billed_minutes=stopped.billed_minutes,
        earned=int(earned or 0),
    )
    await events.send(services.emitter, told, events.Room.participant(cid, stopped.astrologer_id))
    await enqueue_finalize(services, cid)
    try:
        await finalize(services, cid)
    except Exception:  # the queued job (and the sweep) finalize it later
        log.exception("finalizing in-process failed", extra={"id": str(cid)})


# What the astrologer earned for the minutes billed (started before the stop).
EARNED = """
SELECT coalesce(sum(e.amount), 0)::bigint
  FROM transfers t JOIN entries e ON e.transfer_id = t.id
  JOIN accounts a ON a.id = e.account_id AND a.kind = 'astrologer_earnings'
 WHERE t.consultation_id = $3 AND t.idempotency_key LIKE $1
   AND split_part(t.idempotency_key, ':', 3)::int <= $2
"""


async def enqueue_finalize(services: Services, consultation_id: uuid.UUID) -> None:
    try:
        await services.arq.enqueue_job(
            "finalize_consultation", str(consultation_id), _job_id=f"finalize:{consultation_id}"
        )
    except Exception:  # the sweep re-queues unfinalized sessions; never fail an end on Redis
        log.exception("could not queue finalize_consultation", extra={"id": str(consultation_id)})


# --- Presence in PostgreSQL (the bound after a Redis loss) -----------------------------------


async def write_presence(
    services: Services,
    rows: Sequence[tuple[uuid.UUID, uuid.UUID, float, float | None]],
) -> None:
    """(consultation, participant, present at, gone at) rows into `session_presence`."""
    if not rows:
        return
    await services.db.execute(
        WRITE_PRESENCE,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [_at(r[2]) for r in rows],
        [None if r[3] is None else _at(r[3]) for r in rows],
    )


# --- Recovery -------------------------------------------------------------------------------


async def sweep(services: Services) -> dict[str, int]:
    """Rebuild the Redis state of running sessions from PostgreSQL and re-queue unfinished
    finalizations. Existing timers and presence are kept (NX). Missing ones: the next minute's
    due time (charged + 1, in the past when minutes were missed: looked at once), and presence
    from `session_presence` -- unconfirmed until the participant's process beats again, so a
    session is never billed beyond a participant's last presence + grace."""
    clock = RedisClock(services.redis)
    now = await clock.now()
    rows = await services.db.fetch(RUNNING_METERS)
    presence = {
        (r["consultation_id"], r["user_id"]): (r["present_at"], r["gone_at"])
        for r in await services.db.fetch(PRESENCE_OF_RUNNING)
    }
    redis = services.redis
    chunk = 2000
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for r in part:
                pipe.exists(keys.state(r["consultation_id"]))
            exists = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            due: dict[str, float] = {}
            for r, present in zip(part, exists, strict=True):
                cid = r["consultation_id"]
                due[str(cid)] = (
                    r["started_at"].timestamp() + r["charged_minutes"] * r["minute_seconds"]
                )
                if present:
                    continue
                fields: dict[str, str] = {
                    "user": str(r["user_id"]),
                    "astrologer": str(r["astrologer_id"]),
                }
                for uid in (r["user_id"], r["astrologer_id"]):
                    seen_at, gone_at = presence.get((cid, uid), (None, None))
                    seen = seen_at if seen_at is not None else r["started_at"].timestamp()
                    fields[f"seen:{uid}"] = str(seen)
                    fields[f"rebuilt:{uid}"] = "1"
                    if gone_at is not None:
                        pipe.zadd(keys.GONE, {keys.member(cid, uid): gone_at}, nx=True)
                    else:
                        # Life = now: the process holding the socket has until now + stale to
                        # confirm the presence by a heartbeat.
                        pipe.zadd(keys.SEEN, {keys.member(cid, uid): now}, nx=True)
                pipe.hset(keys.state(cid), mapping=fields)
                pipe.expire(keys.state(cid), keys.STATE_TTL_SECONDS)
            if due:
                pipe.zadd(keys.DUE, due, nx=True)
            await pipe.execute()
    await redis.set(keys.ALIVE, str(now))
    unfinalized = await services.db.fetch(UNFINALIZED_METERS)
    for r in unfinalized:
        await enqueue_finalize(services, r["consultation_id"])
    if rows or unfinalized:
        log.info("meter sweep", extra={"running": len(rows), "unfinalized": len(unfinalized)})
    return {"running": len(rows), "unfinalized": len(unfinalized)}


async def finalize_pending(services: Services) -> int:
    """Finalize in this process the stopped sessions nobody finalized (the job is the other
    path); used by the web loop's periodic sweep."""
    done = 0
    for r in await services.db.fetch(UNFINALIZED_METERS):
        if await finalize(services, r["consultation_id"]):
            done += 1
    return done


# KEYS: seen set, due set. ARGV: stale seconds, limit. Participants whose process stopped beating
# make their meter due now (XX: running ones only; LT: never later), so that the planner stops it.
STALE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
                         'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for i = 1, #stale do
    local cid = string.sub(stale[i], 1, 36)
    n = n + redis.call('ZADD', KEYS[2], 'XX', 'LT', 'CH', now, cid)
end
return n
"""


async def wake_stale(services: Services) -> int:
    """Make due the meters of participants whose process stopped beating (a dead process)."""
    _, stale = _settings_times(services)
    script = services.redis.register_script(STALE_LUA)
    n = await script(keys=[keys.SEEN, keys.DUE], args=[stale, STALE_SCAN_LIMIT])
    return int(n)


# --- The loop -------------------------------------------------------------------------------


class MeterLoop:
    """The per-process loop that charges due minutes. Start one in every web process; they share
    the work through the claim script. `wall` is this process's clock, used only to pace the
    loop (all decisions use the Redis clock); tests inject a skewed one."""

    def __init__(self, services: Services, wall: Callable[[], float] = time.monotonic) -> None:
        self.services = services
        self.clock = RedisClock(services.redis)
        self.wall = wall
        self.inflight: set[asyncio.Task[Any]] = set()
        self.background: set[asyncio.Task[Any]] = set()
        self.lags: list[float] = []
        self.charged = 0
        self.keep_lags = False
        self._sweeping: asyncio.Task[Any] | None = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _charge(self, ids: list[uuid.UUID], now: float) -> None:
        try:
            report = await charge_meters(
                self.services, ids, now=now, skip_locked=True, clock=self.clock
            )
        except Exception:
            # Looked at again soon (not a whole lease later); the ledger keys make it safe.
            log.exception("meter batch failed", extra={"meters": len(ids)})
            with contextlib.suppress(Exception):
                await self.services.redis.zadd(
                    keys.DUE, {str(i): now + 1.0 for i in ids}, xx=True, lt=True
                )
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
        try:
            got = await self.services.redis.set(
                keys.SWEEP_LOCK, PROCESS_ID, nx=True, ex=keys.SWEEP_LOCK_TTL_SECONDS
            )
            if got:
                await sweep(self.services)
                await finalize_pending(self.services)
        except Exception:
            log.exception("meter sweep failed")

    def _sweep_in_background(self) -> None:
        """Sweeps run beside the claim loop, never inside it: a slow sweep delays no charge."""
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.ensure_future(self._periodic())
            self.background.add(self._sweeping)
            self._sweeping.add_done_callback(self.background.discard)

    async def run(self) -> None:
        settings = self.services.settings
        try:
            await sweep(self.services)
        except Exception:
            log.exception("meter sweep at start failed")
        last_sweep = last_scan = self.wall()
        while True:
            try:
                if len(self.inflight) >= settings.meter_concurrency:
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                now, alive, ids = await self.clock.claim(
                    settings.meter_batch_size, settings.meter_lease_seconds
                )
                if not alive:
                    log.warning("meters missing from Redis: rebuilding from PostgreSQL")
                    await sweep(self.services)
                if ids:
                    task = asyncio.ensure_future(self._charge(ids, now))
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
                mono = self.wall()
                if mono - last_scan >= STALE_SCAN_SECONDS:
                    last_scan = mono
                    await wake_stale(self.services)
                if mono - last_sweep >= settings.meter_sweep_seconds:
                    last_sweep = mono
                    self._sweep_in_background()
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
async def running_loop(
    services: Services, wall: Callable[[], float] = time.monotonic
) -> AsyncIterator[MeterLoop]:
    """Run a `MeterLoop` for as long as the context lasts (a web process's lifetime)."""
    loop = MeterLoop(services, wall)
    task = asyncio.create_task(loop.run(), name="meter-loop")
    try:
        yield loop
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await loop.close()
