"""The live session's lifecycle, from the first join to the end: the one owner of it.

    accepted ──(both joined)──► active ──(end, disconnect deadline, maximum, no money)──► completed
       ├──(JOIN_TIMEOUT_SECONDS)──► missed      (hold released, astrologer free)
       ├──(the astrologer ends or rejects)──► rejected
       └──(the user ends or cancels)──► cancelled

- Join: a participant's socket joins the consultation (Socket.IO `consultation:join`). Presence is
  a fact: a participant is present from their join until their last joined socket leaves, on
  whatever process (`participant_left`); heartbeats only back that up when a process dies.
- Start: the second participant's join starts the session: `accepted → active`, the meter row,
  minute 1 charged at once.
- Stop: an end is registered on the Redis clock first (that instant is the stop), then the meter
  stops there (live.meter); a disconnect deadline, the maximum or an unpaid minute stop it from
  the meter loop.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

from billing import rules
from billing.ledger import wallet_balance
from consultations import booking, lifecycle
from core import events
from core.errors import NotFound
from core.services import Services
from core.times import rfc3339
from live import keys
from live.clock import RedisClock
from live.finalize import finalize
from live.meter import (
    PROCESS_ID,
    after_stop,
    charge_meters,
    stop_meter,
    write_presence,
)
from live.planner import PartyName, StopReason

log = logging.getLogger(__name__)

# Participants refreshed per heartbeat script call: a few milliseconds of Redis time each.
BEAT_CHUNK = 1000

CONSULTATION_FOR_JOIN = """
SELECT id, status, user_id, astrologer_id FROM consultations WHERE id = $1
"""
CONSULTATION_TERMS = """
SELECT user_id, astrologer_id, rate, list_rate, share_percent,
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


# --- Join and presence ------------------------------------------------------------------------


def _process_ttl(services: Services) -> float:
    """How long a process is believed alive after its last heartbeat."""
    return services.settings.realtime_heartbeat_seconds * keys.HEARTBEAT_MISSES


def socket_of(sid: str) -> str:
    """The name of a joined socket across processes: "{process}|{sid}"."""
    return f"{PROCESS_ID}|{sid}"


async def participant_joined(
    services: Services, consultation_id: uuid.UUID, user_id: uuid.UUID, sid: str = "-"
) -> str:
    """A socket of a participant joined the consultation's room (Socket.IO `consultation:join`).

    Accepted consultation: remember the join; the second participant's join starts the session.
    Active one: a reconnect, present again. Returns what happened: `waiting`, `started`,
    `rejoined` or `ignored` (not a participant, or nothing to meter). `sid` names the socket;
    every call that is not `ignored` must be matched by one `participant_left` of that socket
    when it leaves (a process that dies is covered by its heartbeats stopping)."""
    row = await services.db.fetchrow(CONSULTATION_FOR_JOIN, consultation_id)
    if row is None or user_id not in (row["user_id"], row["astrologer_id"]):
        return "ignored"
    if row["status"] not in ("accepted", "active"):
        return "ignored"
    clock = RedisClock(services.redis)
    at = await clock.joined(consultation_id, user_id, socket_of(sid), _process_ttl(services))
    if row["status"] == "active":
        await write_presence(services, [(consultation_id, user_id, at, None)])
        return "rejoined"
    joined_key = keys.joined(consultation_id)
    async with services.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(joined_key, str(user_id))
        pipe.expire(joined_key, keys.JOINED_TTL_SECONDS)
        pipe.smembers(joined_key)
        _, _, members = await pipe.execute()
    names = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
    if {str(row["user_id"]), str(row["astrologer_id"])} <= names:
        return await start_session(services, consultation_id)
    return "waiting"


async def participant_left(
    services: Services, consultation_id: uuid.UUID, user_id: uuid.UUID, sid: str = "-"
) -> None:
    """A joined socket of a participant left (disconnect on any process, an explicit leave, a
    kick). Their last one on a live process: gone from now (Redis time); the session ends
    `disconnected` at that
    time + DISCONNECT_GRACE_SECONDS unless they join again before. Written to PostgreSQL too
    (the bound of a rebuild after a Redis loss)."""
    clock = RedisClock(services.redis)
    grace = services.settings.disconnect_grace_seconds
    gone = await clock.left(consultation_id, user_id, socket_of(sid), grace)
    if gone is not None:
        status = await services.db.fetchval(
            "SELECT status FROM consultations WHERE id = $1", consultation_id
        )
        if status == "active":
            await write_presence(services, [(consultation_id, user_id, gone, gone)])


async def participants_beat(
    services: Services,
    pairs: Sequence[tuple[uuid.UUID, uuid.UUID]],
    *,
    persist: bool = False,
) -> None:
    """Heartbeat of this process and of the (consultation, participant) pairs with a joined
    socket in it: the backup of presence for a process that dies. `persist`: also write the
    last presence to PostgreSQL (every PRESENCE_WRITE_EVERY_BEATS heartbeats)."""
    if not pairs:
        return
    clock = RedisClock(services.redis)
    for i in range(0, len(pairs), BEAT_CHUNK):
        await clock.beat(PROCESS_ID, pairs[i : i + BEAT_CHUNK], _process_ttl(services))
    if persist:
        now = await clock.now()
        rows = await services.db.fetch(
            "SELECT id FROM consultations WHERE id = ANY($1::uuid[]) AND status = 'active'",
            list({c for c, _ in pairs}),
        )
        active = {r["id"] for r in rows}
        await write_presence(services, [(c, u, now, None) for c, u in pairs if c in active])


# --- Start ------------------------------------------------------------------------------------


async def start_session(services: Services, consultation_id: uuid.UUID) -> str:
    """accepted -> active, the booking hold released, the meter row and its `start` event in one
    transaction; then the Redis state, `session:started` (each side its own figures), and minute
    1 charged at once. `ignored` when the consultation was no longer accepted (another process
    started it first, or it timed out)."""
    settings = services.settings
    clock = RedisClock(services.redis)
    now = await clock.now()
    started_at = datetime.fromtimestamp(now, UTC)
    async with services.db.acquire() as conn, conn.transaction():
        consultation = await lifecycle.mark_active(conn, consultation_id, started_at)
        if consultation is None:
            return "ignored"
        await booking.release_hold_txn(conn, consultation, "session started")
        terms = await conn.fetchrow(CONSULTATION_TERMS, consultation_id)
        assert terms is not None
        max_minutes = rules.session_cap(
            rules.Terms.from_record(terms),
            max_session_minutes=settings.max_session_minutes,
            free_session_max_minutes=settings.free_session_max_minutes,
        )
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
            INSERT_EVENT, consultation_id, "start", None, started_at, 0, 0, 0, balance, None,
            None,
            {
                "rate": terms["rate"],
                "list_rate": terms["list_rate"] or terms["rate"],
                "share_percent": terms["share_percent"],
                "free_minutes": terms["free_minutes"],
                "promo_credit": terms["promo_credit"],
                "max_minutes": max_minutes,
                "minute_seconds": minute_seconds,
                "by": PROCESS_ID,
            },
        )  # fmt: skip
    user_id, astrologer_id = terms["user_id"], terms["astrologer_id"]
    await clock.started(consultation_id, user_id, astrologer_id, now)
    await services.redis.delete(keys.joined(consultation_id))
    await write_presence(
        services,
        [(consultation_id, user_id, now, None), (consultation_id, astrologer_id, now, None)],
    )
    cid, at = str(consultation_id), rfc3339(started_at, milliseconds=True)
    to_user = events.SessionStarted(
        consultation_id=cid, started_at=at, max_minutes=max_minutes, rate=terms["rate"],
        balance=balance - held,
    )  # fmt: skip
    await events.send(services.emitter, to_user, events.Room.participant(consultation_id, user_id))
    to_astrologer = events.SessionStarted(
        consultation_id=cid, started_at=at, max_minutes=max_minutes, minute=0, earned=0
    )
    await events.send(
        services.emitter, to_astrologer, events.Room.participant(consultation_id, astrologer_id)
    )
    await services.redis.zadd(keys.DUE, {str(consultation_id): now})
    await lifecycle.publish(services, consultation)  # consultation:updated, presence busy
    report = await charge_meters(services, [consultation_id], clock=clock)
    for stopped in report.stopped:  # minute 1 could not be paid
        await after_stop(services, stopped)
    return "started"


# --- End --------------------------------------------------------------------------------------


async def end_session(
    services: Services, consultation_id: uuid.UUID, reason: StopReason, party: PartyName
) -> None:
    """Stop a live session now: the instant is registered on the Redis clock first (so no
    minute starting after it is charged, whatever runs meanwhile), then the meter stops there."""
    clock = RedisClock(services.redis)
    try:
        at, held_reason, held_party = await clock.register_stop(consultation_id, reason, party)
    except Exception:  # Redis down: our own clock; the stop refunds anything charged past it
        log.exception("could not register the stop on the Redis clock")
        at, held_reason, held_party = time.time(), reason, party
    stopped = await stop_meter(
        services,
        consultation_id,
        cast(StopReason, held_reason),  # register_stop stores what it was given
        cast(PartyName, held_party),
        at=at,
    )
    if stopped is not None:
        await after_stop(services, stopped)
    else:
        # Stopped by something else meanwhile: make sure it is finalized before answering.
        await finalize(services, consultation_id)


async def end_by_participant(
    services: Services, consultation_id: uuid.UUID, actor_id: uuid.UUID
) -> None:
    """A participant ends their consultation now (`POST .../end`, `consultation:end`).

    Active: the session stops now (`user_ended` / `astrologer_ended`). Accepted (nobody started
    it yet): the astrologer's end rejects it, the user's cancels it; any hold is released and the
    astrologer is free. Ending one that already ended is a no-op; another person's consultation
    is not found; any other state is `409 not_active`."""
    row = await services.db.fetchrow(CONSULTATION_FOR_JOIN, consultation_id)
    if row is None or actor_id not in (row["user_id"], row["astrologer_id"]):
        raise NotFound()
    party: PartyName = "user" if actor_id == row["user_id"] else "astrologer"
    if row["status"] in lifecycle.TERMINAL:
        return
    if row["status"] == "accepted":
        if party == "astrologer":
            await lifecycle.reject(
                services, consultation_id=consultation_id, astrologer_id=actor_id,
                reason="ended before the session started",
            )  # fmt: skip
        else:
            await lifecycle.cancel(
                services, consultation_id=consultation_id, user_id=actor_id,
                reason="ended before the session started",
            )  # fmt: skip
        await services.redis.delete(keys.joined(consultation_id), keys.state(consultation_id))
        return
    if row["status"] != "active":
        raise lifecycle.NotActive(row["status"])
    reason: StopReason = "user_ended" if party == "user" else "astrologer_ended"
    await end_session(services, consultation_id, reason, party)


async def expire_unstarted(services: Services, consultation_id: uuid.UUID) -> str:
    """JOIN_TIMEOUT_SECONDS after the acceptance: `accepted → missed` unless it started (hold
    released, astrologer free). `missed`, `started` or `not due` (too early: retry later)."""
    c = await lifecycle.miss_unstarted(services, consultation_id)
    if c is not None:
        await services.redis.delete(keys.joined(consultation_id), keys.state(consultation_id))
        return "missed"
    left = await lifecycle.seconds_until_unstarted(services, consultation_id)
    return "started" if left is None else "not due"
