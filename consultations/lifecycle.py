"""The consultation state machine: the only code that writes `consultations.status`.

    scheduled ─(its time)─► requested ─► accepted ─► active ─► completed
                  │             ├─► rejected   (the astrologer says no)
                  │             ├─► missed     (nobody answered within REQUEST_TIMEOUT_SECONDS)
                  └─────────────┴─► cancelled  (the user, before it is active)
    accepted ─► missed    (nobody started it within JOIN_TIMEOUT_SECONDS)
    accepted ─► rejected  (the astrologer ends it before it started)

Every transition is ONE conditional UPDATE (`... WHERE id = $1 AND status = 'requested'`), so
two racing transitions (two accepts, accept vs cancel, accept vs the timeout) leave one outcome:
the loser updates no row and gets a 409. "One accepted-or-active consultation per astrologer" is
the unique index `consultations_one_live_per_astrologer`; its violation is 409 astrologer_busy.

What happens beside a transition (promo given back, booking hold released or captured) runs in
the same transaction; what happens after it (Socket.IO events, presence `busy`, push, timers)
runs after the commit, in `publish`.

The live session (live/) drives `mark_active` and `complete`, which take the caller's connection
and do not publish: call `publish(services, consultation)` after committing. An accepted
consultation nobody starts becomes `missed` after JOIN_TIMEOUT_SECONDS (`miss_unstarted`, an arq
job scheduled at the acceptance, and the sweep).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from auth import birth_profiles
from billing import rules
from billing.ledger import wallet_balance
from consultations import keys, presence, promos
from core import events
from core.errors import AppError, Conflict, NotFound, PaymentRequired, ValidationFailed
from core.services import Services
from core.settings import Settings
from core.times import rfc3339
from db.pool import Conn, Executor
from notify import notify

log = logging.getLogger(__name__)

TYPES = ("chat", "voice", "video")
LIVE = ("accepted", "active")
OPEN = ("scheduled", "requested", "accepted", "active")
TERMINAL = ("completed", "rejected", "missed", "cancelled")

EXPIRE_REQUEST_JOB = "expire_request"
EXPIRE_UNSTARTED_JOB = "expire_unstarted"
START_BOOKING_JOB = "start_booking"


class AstrologerBusy(Conflict):
    code, message = "astrologer_busy", "the astrologer is in another consultation"


class AstrologerOffline(Conflict):
    code, message = "astrologer_offline", "the astrologer is offline"


class InvalidState(Conflict):
    code, message = "invalid_state", "the consultation is not in a state that allows this"

    def __init__(self, status: str, message: str | None = None) -> None:
        super().__init__(message, details={"status": status})


class NotActive(Conflict):
    code, message = "not_active", "this consultation is not in a live session"

    def __init__(self, status: str, message: str | None = None) -> None:
        super().__init__(message, details={"status": status})


class OpenRequestExists(Conflict):
    code, message = (
        "open_request_exists",
        "you already have an open consultation; finish or cancel it first",
    )


class RequestExpired(Conflict):
    code, message = "request_expired", "the request was not answered in time"


class InsufficientBalance(PaymentRequired):
    code, message = "insufficient_balance", "the wallet does not cover the minimum start"


@dataclass(frozen=True)
class Consultation:
    id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    type: str
    status: str
    end_reason: str | None
    rate: int
    list_rate: int | None
    currency: str
    share_percent: int
    free_minutes: int
    promo_credit: int
    max_minutes: int | None
    promo_id: uuid.UUID | None
    scheduled_at: datetime | None
    scheduled_end: datetime | None
    hold_id: uuid.UUID | None
    requested_at: datetime
    accepted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    billed_minutes: int
    total_charged: int
    closed_by: uuid.UUID | None
    close_reason: str | None
    created_at: datetime
    updated_at: datetime
    user_name: str | None
    astrologer_name: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Consultation:
        values = {f: row[f] for f in cls.__dataclass_fields__}
        values["currency"] = values["currency"].strip()
        return cls(**values)


def to_public(c: Consultation, *, request_timeout_seconds: float | None = None) -> dict[str, Any]:
    """The consultation as REST answers and Socket.IO events carry it (JSON-ready)."""
    expires_at = None
    if c.status == "requested" and request_timeout_seconds is not None:
        expires_at = rfc3339(c.requested_at + timedelta(seconds=request_timeout_seconds))
    return {
        "id": str(c.id),
        "user": {"id": str(c.user_id), "name": c.user_name},
        "astrologer": {"id": str(c.astrologer_id), "display_name": c.astrologer_name},
        "user_id": str(c.user_id),
        "astrologer_id": str(c.astrologer_id),
        "type": c.type,
        "status": c.status,
        "end_reason": c.end_reason,
        "rate": c.rate,
        "list_rate": c.list_rate if c.list_rate is not None else c.rate,
        "currency": c.currency,
        "free_minutes": c.free_minutes,
        "promo_credit": c.promo_credit,
        "promo_applied": c.promo_id is not None,
        "max_minutes": c.max_minutes,
        "scheduled_at": rfc3339(c.scheduled_at),
        "scheduled_end": rfc3339(c.scheduled_end),
        "requested_at": rfc3339(c.requested_at),
        "expires_at": expires_at,
        "accepted_at": rfc3339(c.accepted_at),
        "started_at": rfc3339(c.started_at),
        "ended_at": rfc3339(c.ended_at),
        "billed_minutes": c.billed_minutes,
        "total_charged": c.total_charged,
        "close_reason": c.close_reason,
        "created_at": rfc3339(c.created_at),
    }


# -- SQL --------------------------------------------------------------------------------------

_COLUMNS = """
c.id, c.user_id, c.astrologer_id, c.type, c.status, c.end_reason, c.rate, c.list_rate, c.currency,
c.share_percent, c.free_minutes, c.promo_credit, c.max_minutes, c.promo_id, c.scheduled_at,
upper(c.booked_slot) AS scheduled_end, c.hold_id, c.requested_at, c.accepted_at, c.started_at,
c.ended_at, c.billed_minutes, c.total_charged, c.closed_by, c.close_reason, c.created_at,
c.updated_at, u.name AS user_name, p.display_name AS astrologer_name
"""
_JOINS = """
JOIN users u ON u.id = c.user_id
LEFT JOIN astrologer_profiles p ON p.user_id = c.astrologer_id
"""


def _returning(update: str) -> str:
    """Wrap `UPDATE consultations ... RETURNING *` so it answers a full `Consultation` row."""
    return f"WITH c AS ({update}) SELECT {_COLUMNS} FROM c {_JOINS}"


GET = f"SELECT {_COLUMNS} FROM consultations c {_JOINS} WHERE c.id = $1"
GET_FOR_UPDATE = "SELECT status FROM consultations WHERE id = $1 FOR UPDATE"
PROFILE_FOR_REQUEST = """
SELECT p.display_name, p.rate_chat, p.rate_voice, p.rate_video, p.share_percent, p.timezone
  FROM astrologer_profiles p JOIN users u ON u.id = p.user_id
 WHERE p.user_id = $1 AND p.verification = 'approved' AND u.status = 'active'
"""
HAS_LIVE = """
SELECT EXISTS (SELECT 1 FROM consultations
                WHERE astrologer_id = $1 AND status IN ('accepted', 'active'))
"""
# A waitlist offer reserves the astrologer for the offered user until it expires.
OFFER_HOLDER = """
SELECT user_id FROM waitlist_entries
 WHERE astrologer_id = $1 AND status = 'offered' AND offer_expires_at > now()
"""
FULFIL_WAITLIST = """
UPDATE waitlist_entries SET status = 'fulfilled', consultation_id = $3, updated_at = now()
 WHERE astrologer_id = $1 AND user_id = $2 AND status IN ('waiting', 'offered')
"""
INSERT_REQUEST = _returning("""
INSERT INTO consultations (id, user_id, astrologer_id, type, status, rate, list_rate, currency,
                           share_percent, free_minutes, promo_credit, max_minutes, promo_id)
VALUES ($1, $2, $3, $4, 'requested', $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING *
""")
INSERT_BOOKING = _returning("""
INSERT INTO consultations (id, user_id, astrologer_id, type, status, rate, list_rate, currency,
                           share_percent, free_minutes, promo_credit, max_minutes, promo_id,
                           scheduled_at, booked_slot)
VALUES ($1, $2, $3, $4, 'scheduled', $5, $6, $7, $8, $9, $10, $11, $12, $13, tstzrange($13, $14))
RETURNING *
""")
SET_HOLD = "UPDATE consultations SET hold_id = $2 WHERE id = $1"
ACCEPT = _returning("""
UPDATE consultations SET status = 'accepted', accepted_at = now(), updated_at = now()
 WHERE id = $1 AND astrologer_id = $2 AND status = 'requested'
   AND requested_at > now() - make_interval(secs => $3)
RETURNING *
""")
# An accepted consultation that never started may be rejected too (the astrologer ends it): it
# would otherwise keep the astrologer busy until the join timeout.
REJECT = _returning("""
UPDATE consultations
   SET status = 'rejected', ended_at = now(), closed_by = $2, close_reason = $3, updated_at = now()
 WHERE id = $1 AND astrologer_id = $2 AND status IN ('requested', 'scheduled', 'accepted')
RETURNING *
""")
# One open instant consultation per user (requested, accepted or active, not a booking): one
# balance cannot cover several sessions at once. The unique index consultations_one_open_instant
# (0012) is the last word; this check gives the friendly error.
HAS_OPEN_INSTANT = """
SELECT EXISTS (SELECT 1 FROM consultations
                WHERE user_id = $1 AND scheduled_at IS NULL
                  AND status IN ('requested', 'accepted', 'active'))
"""
MISS_UNSTARTED = _returning("""
UPDATE consultations
   SET status = 'missed', ended_at = now(), close_reason = 'not started in time',
       updated_at = now()
 WHERE id = $1 AND status = 'accepted' AND accepted_at <= now() - make_interval(secs => $2)
RETURNING *
""")
OVERDUE_UNSTARTED = """
SELECT id FROM consultations
 WHERE status = 'accepted' AND accepted_at <= now() - make_interval(secs => $1)
 ORDER BY accepted_at LIMIT $2
"""
SECONDS_UNTIL_UNSTARTED = """
SELECT status, extract(epoch FROM accepted_at + make_interval(secs => $2) - now())::float8 AS left
  FROM consultations WHERE id = $1
"""
CANCEL = _returning("""
UPDATE consultations
   SET status = 'cancelled', ended_at = now(), closed_by = $2, close_reason = $3, updated_at = now()
 WHERE id = $1 AND user_id = $2 AND status IN ('scheduled', 'requested', 'accepted')
RETURNING *
""")
MISS = _returning("""
UPDATE consultations
   SET status = 'missed', ended_at = now(), close_reason = 'not answered in time',
       updated_at = now()
 WHERE id = $1 AND status = 'requested' AND requested_at <= now() - make_interval(secs => $2)
RETURNING *
""")
START_BOOKING = _returning("""
UPDATE consultations SET status = 'requested', requested_at = now(), updated_at = now()
 WHERE id = $1 AND status = 'scheduled' AND scheduled_at <= now()
RETURNING *
""")
MARK_ACTIVE = _returning("""
UPDATE consultations SET status = 'active', started_at = $2, updated_at = now()
 WHERE id = $1 AND status = 'accepted'
RETURNING *
""")
COMPLETE = _returning("""
UPDATE consultations
   SET status = 'completed', end_reason = $2, ended_at = $3, billed_minutes = $4,
       total_charged = $5, updated_at = now()
 WHERE id = $1 AND status = 'active'
RETURNING *
""")
COUNT_CONSULTATION = """
UPDATE astrologer_profiles SET consultations_count = consultations_count + 1 WHERE user_id = $1
"""
OVERDUE_REQUESTS = """
SELECT id FROM consultations
 WHERE status = 'requested' AND requested_at <= now() - make_interval(secs => $1)
 ORDER BY requested_at LIMIT $2
"""
DUE_BOOKINGS = """
SELECT id FROM consultations WHERE status = 'scheduled' AND scheduled_at <= now()
 ORDER BY scheduled_at LIMIT $1
"""
SECONDS_UNTIL_MISSED = """
SELECT status, extract(epoch FROM requested_at + make_interval(secs => $2) - now())::float8 AS left
  FROM consultations WHERE id = $1
"""
LIST_MINE = f"""
SELECT {_COLUMNS} FROM consultations c {_JOINS}
 WHERE (CASE WHEN $2 THEN c.astrologer_id ELSE c.user_id END) = $1
   AND ($3::text IS NULL OR c.status = $3)
   AND ($4::timestamptz IS NULL OR (c.created_at, c.id) < ($4, $5::uuid))
 ORDER BY c.created_at DESC, c.id DESC
 LIMIT $6
"""


# -- reads ------------------------------------------------------------------------------------


async def get(conn: Executor, consultation_id: uuid.UUID) -> Consultation | None:
    row = await conn.fetchrow(GET, consultation_id)
    return Consultation.from_row(row) if row else None


async def get_for(
    conn: Executor, consultation_id: uuid.UUID, viewer_id: uuid.UUID, *, admin: bool = False
) -> Consultation:
    """The consultation if `viewer_id` takes part in it (or is an admin); 404 otherwise."""
    c = await get(conn, consultation_id)
    if c is None or not (admin or viewer_id in (c.user_id, c.astrologer_id)):
        raise NotFound("no such consultation")
    return c


async def list_mine(
    conn: Executor,
    viewer_id: uuid.UUID,
    *,
    as_astrologer: bool,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Consultation]:
    """A participant's consultations, newest first (keyset on created_at, id)."""
    rows = await conn.fetch(
        LIST_MINE,
        viewer_id,
        as_astrologer,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [Consultation.from_row(r) for r in rows]


# -- after-commit effects ---------------------------------------------------------------------


async def publish(services: Services, c: Consultation, *, requested: bool = False) -> None:
    """Tell both participants (`consultation:updated`), and the astrologer about a new request
    (`consultation:requested` and a push); keep presence `busy` in step with PostgreSQL."""
    public = to_public(c, request_timeout_seconds=services.settings.request_timeout_seconds)
    updated = events.ConsultationUpdated(consultation=events.Consultation.model_validate(public))
    for room in (events.Room.user(c.user_id), events.Room.user(c.astrologer_id)):
        await events.send(services.emitter, updated, room)  # issue 15: typed events
    if requested:
        # Issue 16: the astrologer's copy carries the frozen birth profiles.
        consultation = await birth_profiles.with_profiles(
            services.db, services.settings, c.id, c.astrologer_id, public
        )
        request = events.ConsultationRequested(
            consultation=events.Consultation.model_validate(consultation)
        )
        await events.send(services.emitter, request, events.Room.user(c.astrologer_id))
    if c.status not in ("requested", "scheduled"):
        await presence.sync_busy(services, c.astrologer_id)
    await _notify(services, c, requested=requested)


async def _notify(services: Services, c: Consultation, *, requested: bool) -> None:
    try:
        if requested:
            await notify(
                services,
                c.astrologer_id,
                "consultation_requested",
                {"user_name": c.user_name or "A user", "type": c.type},
                key=f"consultation_requested:{c.id}:{c.requested_at.timestamp()}",
            )
        elif c.status in ("accepted", "rejected", "missed"):
            await notify(
                services,
                c.user_id,
                f"consultation_{c.status}",
                {"astrologer_name": c.astrologer_name or "The astrologer", "type": c.type},
                key=f"consultation_{c.status}:{c.id}",
            )
    except (ValueError, RedisError, OSError, asyncpg.PostgresError):
        # A notification must never undo or fail a transition that is already committed.
        log.exception("notification failed", extra={"consultation_id": str(c.id)})


async def _schedule(
    services: Services, job: str, c: Consultation, job_id: str, after: float
) -> None:
    """A durable timer: an arq job due `after` seconds from now. If Redis loses it, or nobody
    runs it, the sweep (every few seconds) applies the same transition instead."""
    try:
        await services.arq.enqueue_job(
            job, str(c.id), _job_id=job_id, _defer_by=timedelta(seconds=after)
        )
    except (RedisError, OSError):
        log.warning("could not enqueue %s; the sweep will do it", job, exc_info=True)


async def schedule_timeout(services: Services, c: Consultation) -> None:
    """The missed-timeout: due when the request expires (REQUEST_TIMEOUT_SECONDS)."""
    after = services.settings.request_timeout_seconds
    await _schedule(services, EXPIRE_REQUEST_JOB, c, keys.expire_request_job(c.id), after)


# -- transitions ------------------------------------------------------------------------------


def rate_for(profile: asyncpg.Record, type_: str) -> int:
    rate = profile[f"rate_{type_}"]
    if rate is None:
        raise ValidationFailed({"type": f"this astrologer does not offer {type_}"})
    return int(rate)


def share_for(profile: asyncpg.Record, settings: Settings) -> int:
    share = profile["share_percent"]
    return int(share) if share is not None else settings.astrologer_share_percent


def _cap(settings: Settings) -> int | None:
    return settings.max_session_minutes or None


def affordable_minutes(settings: Settings, available: int, terms: rules.Terms) -> int | None:
    """How long the spendable balance, the free minutes and the promo credit can pay for, capped
    by the session's cap (billing/rules.py: the same definition as the meter's)."""
    cap = rules.session_cap(
        terms,
        max_session_minutes=settings.max_session_minutes,
        free_session_max_minutes=settings.free_session_max_minutes,
    )
    return rules.minutes_left(terms, 0, available, cap)


def money_terms(c: Consultation) -> rules.Terms:
    """The frozen terms of a consultation as the money rules see them."""
    return rules.Terms(
        c.list_rate if c.list_rate is not None else c.rate, c.rate, c.share_percent,
        c.free_minutes, c.promo_credit, c.currency, c.max_minutes,
    )  # fmt: skip


async def load_profile(conn: Executor, astrologer_id: uuid.UUID) -> asyncpg.Record:
    profile: asyncpg.Record | None = await conn.fetchrow(PROFILE_FOR_REQUEST, astrologer_id)
    if profile is None:
        raise NotFound("no such astrologer")
    return profile


async def _available(conn: Conn, user_id: uuid.UUID, currency: str) -> int:
    balance, held = await wallet_balance(conn, user_id, currency)
    return balance - held


async def request(
    services: Services,
    *,
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    type_: str,
    promo_code: str | None = None,
    profiles: list[dict[str, Any]] | None = None,
) -> Consultation:
    """A user asks for an instant consultation (`requested`).

    409 astrologer_offline / astrologer_busy (presence, a live consultation, or a waitlist offer
    held for someone else); 422 invalid_promo; 402 insufficient_balance when the wallet does not
    cover MIN_START_MINUTES at the (discounted) rate, minus free minutes and promo credit.
    The rate, share, free minutes and promo are frozen on the row. The answer's `max_minutes` is
    what the wallet affords now (the stored one is only the MAX_SESSION_MINUTES cap)."""
    settings = services.settings
    if user_id == astrologer_id:
        raise ValidationFailed({"astrologer_id": "you cannot consult yourself"})
    profile = await load_profile(services.db, astrologer_id)
    list_rate = rate_for(profile, type_)
    status = await presence.get_status(services.redis, astrologer_id)
    if status == "offline":
        raise AstrologerOffline()
    if status == "busy":
        raise AstrologerBusy()
    consultation_id = uuid.uuid4()
    async with services.db.acquire() as conn, conn.transaction():
        if await conn.fetchval(HAS_OPEN_INSTANT, user_id):
            raise OpenRequestExists()
        if await conn.fetchval(HAS_LIVE, astrologer_id):
            raise AstrologerBusy()
        holder = await conn.fetchval(OFFER_HOLDER, astrologer_id)
        if holder is not None and holder != user_id:
            raise AstrologerBusy("the astrologer is reserved for the next user in their waitlist")
        terms = await promos.terms_txn(
            conn, settings, user_id=user_id, list_rate=list_rate, promo_code=promo_code
        )
        available = await _available(conn, user_id, settings.currency)
        money = terms.money(share_for(profile, settings), settings.currency, _cap(settings))
        if not rules.covers_start(money, available, settings.min_start_minutes):
            raise InsufficientBalance(
                details={
                    "available": available,
                    "required": rules.start_cost(money, settings.min_start_minutes),
                    "rate": terms.rate,
                    "min_start_minutes": settings.min_start_minutes,
                }
            )
        try:
            row = await conn.fetchrow(
                INSERT_REQUEST,
                consultation_id,
                user_id,
                astrologer_id,
                type_,
                terms.rate,
                terms.list_rate,
                settings.currency,
                share_for(profile, settings),
                terms.free_minutes,
                terms.promo_credit,
                _cap(settings),
                terms.promo_id,
            )
            await promos.record_txn(conn, terms, user_id=user_id, consultation_id=consultation_id)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "consultations_one_open_instant":
                raise OpenRequestExists() from exc
            raise Conflict(
                "a concurrent request took the free consultation; try again", code="retry"
            ) from exc
        assert row is not None
        # Issue 16: the frozen copy of the chosen birth profiles (auth/birth_profiles.freeze).
        await birth_profiles.attach_txn(conn, consultation_id, profiles or [])
        await conn.execute(FULFIL_WAITLIST, astrologer_id, user_id, consultation_id)
    c = Consultation.from_row(row)
    await schedule_timeout(services, c)
    await publish(services, c, requested=True)
    return dataclasses.replace(
        c,
        max_minutes=affordable_minutes(settings, available, money_terms(c)),
    )


async def create_booking_txn(
    conn: Conn,
    settings: Settings,
    *,
    consultation_id: uuid.UUID,
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    type_: str,
    terms: promos.Terms,
    share_percent: int,
    start: datetime,
    end: datetime,
) -> Consultation:
    """Insert a `scheduled` consultation for [start, end) inside the caller's transaction. The
    exclusion constraint refuses an overlapping booking of the astrologer: 409 slot_taken."""
    try:
        async with conn.transaction():  # a savepoint: the constraint error stays catchable
            row = await conn.fetchrow(
                INSERT_BOOKING,
                consultation_id,
                user_id,
                astrologer_id,
                type_,
                terms.rate,
                terms.list_rate,
                settings.currency,
                share_percent,
                terms.free_minutes,
                terms.promo_credit,
                _cap(settings),
                terms.promo_id,
                start,
                end,
            )
    except (asyncpg.ExclusionViolationError, asyncpg.UniqueViolationError) as exc:
        # The exclusion constraint, or its unique-index fallback (migration 0005).
        raise Conflict("this slot was just booked", code="slot_taken") from exc
    assert row is not None
    await promos.record_txn(conn, terms, user_id=user_id, consultation_id=consultation_id)
    return Consultation.from_row(row)


async def set_hold_txn(conn: Conn, consultation_id: uuid.UUID, hold_id: uuid.UUID) -> None:
    await conn.execute(SET_HOLD, consultation_id, hold_id)


async def _explain_failure(
    conn: Executor, consultation_id: uuid.UUID, party: uuid.UUID, role: str
) -> AppError:
    c = await get(conn, consultation_id)
    owner = None if c is None else (c.astrologer_id if role == "astrologer" else c.user_id)
    if c is None or owner != party:
        return NotFound("no such consultation")
    return InvalidState(c.status, f"the consultation is {c.status}")


async def accept(
    services: Services, *, consultation_id: uuid.UUID, astrologer_id: uuid.UUID
) -> Consultation:
    """The astrologer accepts a request: `requested → accepted`, only within the timeout. 409
    astrologer_busy when they already have a live consultation, request_expired when too late."""
    timeout = services.settings.request_timeout_seconds
    async with services.db.acquire() as conn:
        try:
            row = await conn.fetchrow(ACCEPT, consultation_id, astrologer_id, timeout)
        except asyncpg.UniqueViolationError as exc:
            raise AstrologerBusy("finish your current consultation first") from exc
        if row is None:
            err = await _explain_failure(conn, consultation_id, astrologer_id, "astrologer")
            if isinstance(err, InvalidState) and err.details["status"] == "requested":
                await miss(services, consultation_id)  # it is overdue: settle it now
                raise RequestExpired() from None
            raise err
    c = Consultation.from_row(row)
    await schedule_join_timeout(services, c)
    await publish(services, c)
    return c


async def schedule_join_timeout(services: Services, c: Consultation) -> None:
    """The join timeout: due JOIN_TIMEOUT_SECONDS after the acceptance, turning an accepted
    consultation nobody started into `missed`."""
    after = services.settings.join_timeout_seconds
    await _schedule(services, EXPIRE_UNSTARTED_JOB, c, keys.expire_unstarted_job(c.id), after)


async def _close_txn(conn: Conn, services: Services, c: Consultation, *, late_fee: bool) -> None:
    """Effects of closing a consultation that never started: give back the promo and the free
    claims; release the booking hold, or capture the late-cancellation fee from it."""
    from consultations import booking  # booking builds on lifecycle; imported late

    await promos.release_txn(conn, c.id)
    await booking.settle_hold_txn(conn, services.settings, c, late_fee=late_fee)


async def reject(
    services: Services,
    *,
    consultation_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    reason: str | None = None,
) -> Consultation:
    """The astrologer declines a request or a booking; any hold is released in full."""
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(REJECT, consultation_id, astrologer_id, reason)
        if row is None:
            raise await _explain_failure(conn, consultation_id, astrologer_id, "astrologer")
        c = Consultation.from_row(row)
        await _close_txn(conn, services, c, late_fee=False)
    await publish(services, c)
    return c


async def cancel(
    services: Services, *, consultation_id: uuid.UUID, user_id: uuid.UUID, reason: str | None = None
) -> Consultation:
    """The user cancels before the session is active. A booking's hold is released in full when
    cancelled at least CANCEL_FULL_REFUND_HOURS before its time; later, CANCEL_LATE_FEE_PERCENT of
    it is kept (paid to the astrologer and the platform like a charge), the rest released."""
    settings = services.settings
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(CANCEL, consultation_id, user_id, reason)
        if row is None:
            raise await _explain_failure(conn, consultation_id, user_id, "user")
        c = Consultation.from_row(row)
        late = (
            c.scheduled_at is not None
            and c.ended_at is not None
            and (c.scheduled_at - c.ended_at) < timedelta(hours=settings.cancel_full_refund_hours)
        )
        await _close_txn(conn, services, c, late_fee=late)
    await publish(services, c)
    return c


async def miss(services: Services, consultation_id: uuid.UUID) -> Consultation | None:
    """`requested → missed` once REQUEST_TIMEOUT_SECONDS have passed since the request (by the
    database clock). None when it is not due or no longer requested. Safe to call twice."""
    return await _time_out(
        services, MISS, consultation_id, services.settings.request_timeout_seconds
    )


async def _time_out(
    services: Services, query: str, consultation_id: uuid.UUID, after: float
) -> Consultation | None:
    """A timeout's conditional transition to `missed` (`query`, due `after` seconds), its hold
    released and promo given back in the same transaction; published after the commit."""
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(query, consultation_id, after)
        if row is None:
            return None
        c = Consultation.from_row(row)
        await _close_txn(conn, services, c, late_fee=False)
    await publish(services, c)
    return c


async def miss_unstarted(services: Services, consultation_id: uuid.UUID) -> Consultation | None:
    """`accepted → missed` once JOIN_TIMEOUT_SECONDS have passed since the acceptance (database
    clock) and the session never started: any hold released, the astrologer free again. None
    when not due or no longer accepted. Safe to call twice and to race the session's start (both
    are conditional on `accepted`)."""
    after = services.settings.join_timeout_seconds
    return await _time_out(services, MISS_UNSTARTED, consultation_id, after)


async def seconds_until_unstarted(services: Services, consultation_id: uuid.UUID) -> float | None:
    """Seconds left before an accepted consultation times out; None when no longer accepted."""
    after = services.settings.join_timeout_seconds
    return await _seconds_left(
        services, SECONDS_UNTIL_UNSTARTED, consultation_id, after, "accepted"
    )


async def _seconds_left(
    services: Services, query: str, consultation_id: uuid.UUID, after: float, status: str
) -> float | None:
    row = await services.db.fetchrow(query, consultation_id, after)
    if row is None or row["status"] != status:
        return None
    return float(row["left"])


async def seconds_until_missed(services: Services, consultation_id: uuid.UUID) -> float | None:
    """Seconds left before a request may be missed; None when it is no longer requested."""
    after = services.settings.request_timeout_seconds
    return await _seconds_left(services, SECONDS_UNTIL_MISSED, consultation_id, after, "requested")


async def start_booking(services: Services, consultation_id: uuid.UUID) -> Consultation | None:
    """A booking's time has come: `scheduled → requested` (the astrologer is asked as for an
    instant request, with the same timeout). None when not due or no longer scheduled."""
    async with services.db.acquire() as conn:
        row = await conn.fetchrow(START_BOOKING, consultation_id)
    if row is None:
        return None
    c = Consultation.from_row(row)
    await schedule_timeout(services, c)
    await publish(services, c, requested=True)
    return c


async def mark_active(
    conn: Conn, consultation_id: uuid.UUID, started_at: datetime
) -> Consultation | None:
    """For the live session (live.session): `accepted → active` when the session starts, in the
    caller's transaction (which also releases a booking's hold). None when the consultation was
    not `accepted`. Call `publish` after committing."""
    row = await conn.fetchrow(MARK_ACTIVE, consultation_id, started_at)
    return Consultation.from_row(row) if row else None


async def complete(
    conn: Conn,
    consultation_id: uuid.UUID,
    *,
    end_reason: str,
    ended_at: datetime,
    billed_minutes: int,
    total_charged: int,
) -> Consultation | None:
    """For the meter: `active → completed` with its end reason and totals; the astrologer's
    consultation count (discovery's `popular` sort) moves in the same transaction. None when the
    consultation was not `active`. Call `publish` after committing (it clears `busy`)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            COMPLETE, consultation_id, end_reason, ended_at, billed_minutes, total_charged
        )
        if row is None:
            return None
        c = Consultation.from_row(row)
        await conn.execute(COUNT_CONSULTATION, c.astrologer_id)
    return c


# -- sweeps -----------------------------------------------------------------------------------

SWEEP_BATCH = 200  # rows one sweep pass handles; the next pass (seconds later) takes the rest


async def sweep(services: Services) -> dict[str, int]:
    """Miss overdue requests and accepted consultations nobody started (JOIN_TIMEOUT_SECONDS),
    and turn due bookings into requests: the durable fallback of the
    delayed jobs (a dead process, a lost Redis). Each row goes through its conditional
    transition, so a sweep racing a job or an accept changes it once."""
    timeout = services.settings.request_timeout_seconds
    missed = started = unstarted = 0
    for row in await services.db.fetch(DUE_BOOKINGS, SWEEP_BATCH):
        if await start_booking(services, row["id"]) is not None:
            started += 1
    for row in await services.db.fetch(OVERDUE_REQUESTS, timeout, SWEEP_BATCH):
        if await miss(services, row["id"]) is not None:
            missed += 1
    for row in await services.db.fetch(
        OVERDUE_UNSTARTED, services.settings.join_timeout_seconds, SWEEP_BATCH
    ):
        if await miss_unstarted(services, row["id"]) is not None:
            unstarted += 1
    return {"missed": missed, "bookings_started": started, "not_started": unstarted}
