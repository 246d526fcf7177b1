"""Booking notifications, reminders and rescheduling.

Both sides are told when a booking is confirmed, rescheduled or cancelled (`announce`), and
reminded before it (BOOKING_REMINDER_OFFSETS, default 24 hours and 15 minutes).

Reminders are durable and exactly once: each is an arq delayed job (`send_booking_reminder`,
job id naming the booking, the kind and the booked time) backed by a sweep; whoever inserts the
sent-marker row `booking_reminders (consultation_id, kind, scheduled_at)` sends, in the same
transaction as the inbox rows. A moved booking has a new scheduled_at: its old jobs find the time
changed and do nothing, its new reminders are new rows. A reminder whose moment came before the
booking was made or moved (`reminders_from`) is never sent.

Rescheduling moves a `scheduled` booking of the user to another free slot of the same astrologer,
only before the cancellation cut-off (CANCEL_FULL_REFUND_HOURS before its time); the exclusion
constraint refuses a taken slot, and the hold's expiry moves with it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from redis.exceptions import RedisError

from billing import holds
from consultations import keys, lifecycle
from core.errors import Conflict, NotFound, ValidationFailed
from core.services import Services
from core.settings import Settings
from core.times import rfc3339

log = logging.getLogger(__name__)

SEND_REMINDER_JOB = "send_booking_reminder"
SWEEP_BATCH = 200
SHOWN_ZONE = ZoneInfo("Asia/Kolkata")  # the market's time; the app shows the user's own


class RescheduleTooLate(Conflict):
    code, message = "reschedule_too_late", "a booking is moved at the latest before the cut-off"


@dataclass(frozen=True)
class Offset:
    kind: str  # "24h", "15m": the sent-marker's kind and the job id's part
    seconds: float

    @property
    def lead(self) -> str:
        hours, rest = divmod(int(self.seconds), 3600)
        return f"{hours} h" if hours and not rest else f"{int(self.seconds) // 60} min"


def offsets(settings: Settings) -> list[Offset]:
    """BOOKING_REMINDER_OFFSETS (`24h:86400,15m:900`) as offsets, largest first."""
    found = []
    for item in settings.booking_reminder_offsets:
        kind, _, secs = item.partition(":")
        found.append(Offset(kind.strip(), float(secs)))
    return sorted(found, key=lambda o: -o.seconds)


def when_text(c: lifecycle.Consultation) -> str:
    assert c.scheduled_at is not None
    return c.scheduled_at.astimezone(SHOWN_ZONE).strftime("%d %b %Y, %H:%M IST")


def reminder_job_id(consultation_id: uuid.UUID, kind: str, scheduled_at: datetime) -> str:
    return f"booking-reminder:{consultation_id}:{kind}:{int(scheduled_at.timestamp())}"


# -- announcements ----------------------------------------------------------------------------


async def announce(services: Services, c: lifecycle.Consultation, event: str) -> None:
    """Tell both sides of a booking about `event` (booking_confirmed, booking_rescheduled,
    booking_cancelled), once per event and booked time."""
    from notify import notify

    if c.scheduled_at is None:
        return
    stamp = int(c.scheduled_at.timestamp())
    try:
        for who, other in (
            (c.user_id, c.astrologer_name or "your astrologer"),
            (c.astrologer_id, c.user_name or "a user"),
        ):
            await notify(
                services,
                who,
                event,
                {"other_name": other, "type": c.type, "when": when_text(c),
                 "consultation_id": str(c.id)},
                key=f"{event}:{c.id}:{stamp}",
            )  # fmt: skip
    except (ValueError, RedisError, OSError, asyncpg.PostgresError):
        log.exception("booking notification failed", extra={"consultation_id": str(c.id)})


# -- reminders --------------------------------------------------------------------------------


async def schedule(services: Services, c: lifecycle.Consultation) -> None:
    """Enqueue the reminders of a scheduled booking (those whose moment is still ahead)."""
    if c.scheduled_at is None or c.status != "scheduled":
        return
    now = datetime.now(UTC)
    for offset in offsets(services.settings):
        due = c.scheduled_at - timedelta(seconds=offset.seconds)
        if due <= now:
            continue
        try:
            await services.arq.enqueue_job(
                SEND_REMINDER_JOB,
                str(c.id),
                offset.kind,
                c.scheduled_at.isoformat(),
                _job_id=reminder_job_id(c.id, offset.kind, c.scheduled_at),
                _defer_until=due,
            )
        except (RedisError, OSError):
            log.warning("could not enqueue a reminder; the sweep will", exc_info=True)


MARK_SENT = """
INSERT INTO booking_reminders (consultation_id, kind, scheduled_at)
SELECT c.id, $2, c.scheduled_at FROM consultations c
 WHERE c.id = $1 AND c.status = 'scheduled' AND c.scheduled_at = $3
   AND c.scheduled_at > now()
   AND c.scheduled_at - make_interval(secs => $4) <= now()
   AND c.scheduled_at - make_interval(secs => $4) >= c.reminders_from
ON CONFLICT DO NOTHING
RETURNING consultation_id
"""
DUE_REMINDERS = """
SELECT c.id, c.scheduled_at, k.kind, k.secs FROM consultations c
 CROSS JOIN unnest($1::text[], $2::float8[]) AS k(kind, secs)
 WHERE c.status = 'scheduled' AND c.scheduled_at > now()
   AND c.scheduled_at - make_interval(secs => k.secs) <= now()
   AND c.scheduled_at - make_interval(secs => k.secs) >= c.reminders_from
   AND NOT EXISTS (SELECT 1 FROM booking_reminders r
                    WHERE r.consultation_id = c.id AND r.kind = k.kind
                      AND r.scheduled_at = c.scheduled_at)
 ORDER BY c.scheduled_at
 LIMIT $3
"""


async def send(
    services: Services, consultation_id: uuid.UUID, kind: str, scheduled_at: datetime
) -> bool:
    """Send the `kind` reminder of the booking at `scheduled_at`, exactly once: False when it was
    sent already, the booking moved or closed, or its moment has not come."""
    from notify import enqueue_delivery, record_txn

    offset = next((o for o in offsets(services.settings) if o.kind == kind), None)
    if offset is None:
        return False
    notes: list[uuid.UUID] = []
    async with services.db.acquire() as conn, conn.transaction():
        marked = await conn.fetchval(MARK_SENT, consultation_id, kind, scheduled_at, offset.seconds)
        if marked is None:
            return False
        c = await lifecycle.get(conn, consultation_id)
        assert c is not None
        stamp = int(scheduled_at.timestamp())
        for who, other in (
            (c.user_id, c.astrologer_name or "your astrologer"),
            (c.astrologer_id, c.user_name or "a user"),
        ):
            note = await record_txn(
                conn,
                who,
                "booking_reminder",
                {"other_name": other, "type": c.type, "when": when_text(c),
                 "lead": offset.lead, "consultation_id": str(c.id)},
                key=f"booking_reminder:{c.id}:{kind}:{stamp}",
            )  # fmt: skip
            if note is not None:
                notes.append(note)
    for note in notes:
        await enqueue_delivery(services, note)
    return True


async def seconds_until(
    services: Services, consultation_id: uuid.UUID, kind: str, scheduled_at: datetime
) -> float:
    """Seconds before the reminder is due (by the database clock); <= 0 when due."""
    offset = next((o for o in offsets(services.settings) if o.kind == kind), None)
    if offset is None:
        return 0.0
    left = await services.db.fetchval(
        "SELECT extract(epoch FROM $1::timestamptz - make_interval(secs => $2) - now())::float8",
        scheduled_at,
        offset.seconds,
    )
    return float(left)


async def sweep(services: Services) -> int:
    """Send every due reminder whose job was lost (the jobs' backup)."""
    found = offsets(services.settings)
    rows = await services.db.fetch(
        DUE_REMINDERS, [o.kind for o in found], [o.seconds for o in found], SWEEP_BATCH
    )
    sent = 0
    for r in rows:
        sent += await send(services, r["id"], r["kind"], r["scheduled_at"])
    return sent


# -- rescheduling -----------------------------------------------------------------------------

MOVE = """
UPDATE consultations
   SET scheduled_at = $3, booked_slot = tstzrange($3, $4), reminders_from = now(),
       updated_at = now()
 WHERE id = $1 AND user_id = $2 AND status = 'scheduled' AND scheduled_at = $5
RETURNING id
"""


async def reschedule(
    services: Services, *, consultation_id: uuid.UUID, user_id: uuid.UUID, scheduled_at: datetime
) -> lifecycle.Consultation:
    """Move the user's `scheduled` booking to another free slot of the same astrologer. 404 when
    not theirs; 409 invalid_state (not scheduled), reschedule_too_late (past the cancellation
    cut-off), slot_taken; 422 when the new time is not a future slot of the astrologer."""
    from consultations import booking

    settings = services.settings
    c = await lifecycle.get(services.db, consultation_id)
    if c is None or c.user_id != user_id:
        raise NotFound("no such consultation")
    if c.status != "scheduled" or c.scheduled_at is None:
        raise lifecycle.InvalidState(c.status, f"the consultation is {c.status}")
    now = datetime.now(UTC)
    cutoff = c.scheduled_at - timedelta(hours=settings.cancel_full_refund_hours)
    if now >= cutoff:
        raise RescheduleTooLate(details={"cutoff": rfc3339(cutoff)})
    if scheduled_at.tzinfo is None:
        raise ValidationFailed({"scheduled_at": "must carry a time zone (RFC 3339)"})
    start = scheduled_at.astimezone(UTC)
    if start <= now:
        raise ValidationFailed({"scheduled_at": "must be in the future"})
    if start == c.scheduled_at:
        raise ValidationFailed({"scheduled_at": "the booking is already at this time"})
    profile = await lifecycle.load_profile(services.db, c.astrologer_id)
    tz = booking.zone(profile["timezone"])
    availability = await booking.get_availability(services.db, c.astrologer_id)
    slot = next(
        (s for s in booking.cut_slots(start.astimezone(tz).date(), tz, availability.windows,
                                      settings.slot_minutes) if s.start == start),
        None,
    )  # fmt: skip
    if slot is None:
        raise ValidationFailed({"scheduled_at": "not one of the astrologer's slots"})
    async with services.db.acquire() as conn, conn.transaction():
        try:
            async with conn.transaction():
                moved = await conn.fetchval(
                    MOVE, c.id, user_id, slot.start, slot.end, c.scheduled_at
                )
        except (asyncpg.ExclusionViolationError, asyncpg.UniqueViolationError) as exc:
            raise Conflict("this slot was just booked", code="slot_taken") from exc
        if moved is None:  # changed meanwhile (started, cancelled, moved by another call)
            fresh = await lifecycle.get(conn, c.id)
            raise lifecycle.InvalidState(fresh.status if fresh else "unknown")
        if c.hold_id is not None:
            await holds.move_hold_txn(conn, c.hold_id, slot.end + booking.HOLD_GRACE)
        c = await lifecycle.get(conn, c.id) or c
    await _schedule_start_at(services, c)
    await schedule(services, c)
    await announce(services, c, "booking_rescheduled")
    await lifecycle.publish(services, c)
    return c


async def _schedule_start_at(services: Services, c: lifecycle.Consultation) -> None:
    """The start job of the new time (the old one, still queued under its id, finds the booking
    not due at its moment and does nothing; the sweep backs both)."""
    assert c.scheduled_at is not None
    try:
        await services.arq.enqueue_job(
            lifecycle.START_BOOKING_JOB,
            str(c.id),
            _job_id=f"{keys.start_booking_job(c.id)}:{int(c.scheduled_at.timestamp())}",
            _defer_until=c.scheduled_at,
        )
    except (RedisError, OSError):
        log.warning("could not enqueue a booking start; the sweep will", exc_info=True)
