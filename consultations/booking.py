"""Scheduled consultations: weekly availability, free slots of a date, booking with a wallet hold.

Availability is weekly hours in the astrologer's own time zone; a date's slots are cut from them
(SLOT_MINUTES long, wall-clock, so a daylight-saving change keeps "10:00" at 10:00) and answered
in UTC. A booking is a `scheduled` consultation whose `booked_slot` range the exclusion
constraint `consultations_no_double_booking` keeps from overlapping any other open booking of
the astrologer: two users racing for a slot leave one booking, the other gets 409 slot_taken.

The booking holds the slot's price in the user's wallet (billing/holds.py). The hold is released
when the session starts (the meter then charges per minute), when the astrologer rejects or misses
it, or when the user cancels at least CANCEL_FULL_REFUND_HOURS before; a later cancellation keeps
CANCEL_LATE_FEE_PERCENT of it, split between astrologer and platform like a charge.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from redis.exceptions import RedisError

from billing import holds, rules
from billing.ledger import InsufficientFunds, Leg, account_id
from consultations import keys, lifecycle, promos
from core.errors import Conflict, ValidationFailed
from core.services import Services
from core.settings import Settings
from db.pool import Conn, Executor

log = logging.getLogger(__name__)

# A hold outlives its slot by this much, so that a booking whose session runs a little late is
# still covered; if everything else failed, the ledger's expiry sweep frees the money after it.
HOLD_GRACE = timedelta(hours=1)
LATE_FEE_KIND = "cancellation_fee"


@dataclass(frozen=True)
class Window:
    weekday: int  # 0 = Monday
    start_minute: int
    end_minute: int

    @staticmethod
    def hhmm(minute: int) -> str:
        return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass(frozen=True)
class Availability:
    timezone: str
    windows: list[Window]


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime


class ProfileRequired(Conflict):
    code, message = "profile_required", "create your astrologer profile first"


GET_TIMEZONE = "SELECT timezone FROM astrologer_profiles WHERE user_id = $1"
GET_APPROVED_TIMEZONE = """
SELECT timezone FROM astrologer_profiles WHERE user_id = $1 AND verification = 'approved'
"""
SET_TIMEZONE = """
UPDATE astrologer_profiles SET timezone = $2, updated_at = now() WHERE user_id = $1
"""
DELETE_WINDOWS = "DELETE FROM astrologer_availability WHERE astrologer_id = $1"
INSERT_WINDOWS = """
INSERT INTO astrologer_availability (astrologer_id, weekday, start_minute, end_minute)
SELECT $1, w, s, e FROM unnest($2::smallint[], $3::int[], $4::int[]) AS t(w, s, e)
"""
GET_WINDOWS = """
SELECT weekday, start_minute, end_minute FROM astrologer_availability
 WHERE astrologer_id = $1 ORDER BY weekday, start_minute
"""
# A booking awaiting its shortfall payment keeps its slot too (issue 17).
BOOKED_BETWEEN = """
SELECT lower(booked_slot) AS start, upper(booked_slot) AS end FROM consultations
 WHERE astrologer_id = $1 AND booked_slot && tstzrange($2, $3)
   AND status IN ('awaiting_payment', 'scheduled', 'requested', 'accepted', 'active')
"""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationFailed({"timezone": "not a known IANA time zone"}) from exc


async def set_availability(
    conn: Conn, astrologer_id: uuid.UUID, timezone: str, windows: list[Window]
) -> Availability:
    """Replace the astrologer's weekly hours (422 when two windows of a day overlap)."""
    zone(timezone)
    ordered = sorted(windows, key=lambda w: (w.weekday, w.start_minute))
    for before, after in itertools.pairwise(ordered):
        if before.weekday == after.weekday and after.start_minute < before.end_minute:
            raise ValidationFailed({"slots": "two windows of one weekday overlap"})
    async with conn.transaction():
        if await conn.execute(SET_TIMEZONE, astrologer_id, timezone) == "UPDATE 0":
            raise ProfileRequired()
        await conn.execute(DELETE_WINDOWS, astrologer_id)
        try:
            async with conn.transaction():
                await conn.execute(
                    INSERT_WINDOWS,
                    astrologer_id,
                    [w.weekday for w in windows],
                    [w.start_minute for w in windows],
                    [w.end_minute for w in windows],
                )
        except (asyncpg.ExclusionViolationError, asyncpg.UniqueViolationError) as exc:
            raise ValidationFailed({"slots": "two windows of one weekday overlap"}) from exc
    return await get_availability(conn, astrologer_id)


async def get_availability(conn: Executor, astrologer_id: uuid.UUID) -> Availability:
    tz = await conn.fetchval(GET_TIMEZONE, astrologer_id)
    rows = await conn.fetch(GET_WINDOWS, astrologer_id)
    return Availability(
        tz or "Asia/Kolkata",
        [Window(r["weekday"], r["start_minute"], r["end_minute"]) for r in rows],
    )


def cut_slots(day: date, tz: ZoneInfo, windows: list[Window], slot_minutes: int) -> list[Slot]:
    """Every slot of `day` (a date in the astrologer's zone), in UTC, in order."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
    slots: list[Slot] = []
    for w in sorted(windows, key=lambda w: w.start_minute):
        if w.weekday != day.weekday():
            continue
        minute = w.start_minute
        while minute + slot_minutes <= w.end_minute:
            start = midnight + timedelta(minutes=minute)  # wall-clock arithmetic in `tz`
            end = midnight + timedelta(minutes=minute + slot_minutes)
            slots.append(Slot(start.astimezone(UTC), end.astimezone(UTC)))
            minute += slot_minutes
    return slots


async def free_slots(
    conn: Executor, settings: Settings, astrologer_id: uuid.UUID, day: date, now: datetime
) -> list[Slot]:
    """The slots of `day` that are in the future and not booked (404 for an unlisted astrologer)."""
    from core.errors import NotFound

    tz_name = await conn.fetchval(GET_APPROVED_TIMEZONE, astrologer_id)
    if tz_name is None:
        raise NotFound("no such astrologer")
    availability = await get_availability(conn, astrologer_id)
    slots = cut_slots(day, zone(tz_name), availability.windows, settings.slot_minutes)
    slots = [s for s in slots if s.start > now]
    if not slots:
        return []
    booked = await conn.fetch(BOOKED_BETWEEN, astrologer_id, slots[0].start, slots[-1].end)
    return [s for s in slots if not any(b["start"] < s.end and s.start < b["end"] for b in booked)]


def hold_amount(settings: Settings, terms: promos.Terms) -> int:
    """What a booking holds: the slot's minutes at the user's prices (billing/rules.py: free
    minutes and promo credit deducted exactly, as the meter will charge them)."""
    money = terms.money(settings.astrologer_share_percent, settings.currency)
    return rules.hold_amount(money, settings.slot_minutes)


async def book(
    services: Services,
    *,
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    type_: str,
    scheduled_at: datetime,
    promo_code: str | None = None,
    pay_shortfall: str | None = None,
) -> lifecycle.Consultation:
    """Book the slot starting at `scheduled_at`: a `scheduled` consultation and a wallet hold.
    422 when it is not one of the astrologer's slots or is past; 409 slot_taken; 422
    invalid_promo; 402 insufficient_balance (with `details.shortfall`) when the wallet cannot
    hold the slot's price, unless `pay_shortfall` names a gateway: then the booking waits in
    `awaiting_payment` for a recharge of the shortfall (consultations/shortfall.py)."""
    settings = services.settings
    if scheduled_at.tzinfo is None:
        raise ValidationFailed({"scheduled_at": "must carry a time zone (RFC 3339)"})
    start = scheduled_at.astimezone(UTC)
    profile = await lifecycle.load_profile(services.db, astrologer_id)
    list_rate = lifecycle.rate_for(profile, type_)
    if user_id == astrologer_id:
        raise ValidationFailed({"astrologer_id": "you cannot consult yourself"})
    if start <= datetime.now(UTC):
        raise ValidationFailed({"scheduled_at": "must be in the future"})
    tz = zone(profile["timezone"])
    availability = await get_availability(services.db, astrologer_id)
    day = start.astimezone(tz).date()
    slot = next(
        (s for s in cut_slots(day, tz, availability.windows, settings.slot_minutes)
         if s.start == start),
        None,
    )  # fmt: skip
    if slot is None:
        raise ValidationFailed({"scheduled_at": "not one of the astrologer's slots"})
    consultation_id = uuid.uuid4()
    try:
        async with services.db.acquire() as conn, conn.transaction():
            terms = await promos.terms_txn(
                conn, settings, user_id=user_id, list_rate=list_rate, promo_code=promo_code
            )
            c = await lifecycle.create_booking_txn(
                conn,
                settings,
                consultation_id=consultation_id,
                user_id=user_id,
                astrologer_id=astrologer_id,
                type_=type_,
                terms=terms,
                share_percent=lifecycle.share_for(profile, settings),
                start=slot.start,
                end=slot.end,
            )
            amount = hold_amount(settings, terms)
            if amount > 0:
                try:
                    hold = await holds.place_hold(
                        conn,
                        key=f"booking:{c.id}",
                        user_id=user_id,
                        amount=amount,
                        currency=settings.currency,
                        reason="booking",
                        expires_at=slot.end + HOLD_GRACE,
                        consultation_id=c.id,
                    )
                except InsufficientFunds as exc:
                    # Issue 17: say how much is missing; the shortfall checkout pays exactly that.
                    available = int(exc.details.get("available", 0))
                    short = InsufficientFunds(
                        "the wallet does not cover this booking",
                        details={"required": amount, "available": available,
                                 "shortfall": amount - available},
                    )  # fmt: skip
                    if pay_shortfall is None:
                        raise short from exc
                    shortfall_of = short.details["shortfall"]
                else:
                    shortfall_of = 0
                    await lifecycle.set_hold_txn(conn, c.id, hold.id)
                    c = lifecycle.Consultation(**{**c.__dict__, "hold_id": hold.id})
                if shortfall_of:
                    # Leave this transaction (the booking is redone with its recharge): the gateway
                    # call must not run inside a database transaction.
                    raise _Shortfall(shortfall_of)
    except _Shortfall as short:
        assert pay_shortfall is not None
        from consultations import shortfall

        return await shortfall.checkout(
            services,
            user_id=user_id,
            astrologer_id=astrologer_id,
            type_=type_,
            start=slot.start,
            end=slot.end,
            share_percent=lifecycle.share_for(profile, settings),
            list_rate=list_rate,
            promo_code=promo_code,
            gateway=pay_shortfall,
            shortfall=short.amount,
        )
    await after_booked(services, c)
    await lifecycle.publish(services, c)
    return c


class _Shortfall(Exception):
    """Inside `book`: the wallet is short by `amount` and the user asked to pay it."""

    def __init__(self, amount: int) -> None:
        super().__init__(amount)
        self.amount = amount


async def after_booked(services: Services, c: lifecycle.Consultation) -> None:
    """After a booking is (or becomes) `scheduled`: its start job, its reminders, and both sides
    told it is confirmed (issue 17)."""
    from consultations import reminders

    await _schedule_start(services, c)
    await reminders.schedule(services, c)
    await reminders.announce(services, c, "booking_confirmed")


async def _schedule_start(services: Services, c: lifecycle.Consultation) -> None:
    """The booking turns into a request at its time: an arq job then, and the sweep as backup."""
    assert c.scheduled_at is not None
    try:
        await services.arq.enqueue_job(
            lifecycle.START_BOOKING_JOB,
            str(c.id),
            _job_id=keys.start_booking_job(c.id),
            _defer_until=c.scheduled_at,
        )
    except (RedisError, OSError):
        log.warning("could not enqueue a booking start; the sweep will", exc_info=True)


async def release_hold_txn(conn: Conn, c: lifecycle.Consultation, reason: str) -> None:
    if c.hold_id is not None:
        await holds.release_hold(conn, c.hold_id, reason)


async def settle_hold_txn(
    conn: Conn, settings: Settings, c: lifecycle.Consultation, *, late_fee: bool
) -> None:
    """Close a booking's hold when the consultation closes without a session: release it, or for
    a late cancellation capture CANCEL_LATE_FEE_PERCENT of it (wallet → astrologer's earnings and
    platform revenue, split by the frozen share) and release the rest."""
    if c.hold_id is None:
        return
    hold = await holds.get_hold(conn, c.hold_id)
    if hold is None or hold.status != "open":
        return
    fee = rules.late_fee(hold.amount, settings.cancel_late_fee_percent) if late_fee else 0
    if fee <= 0:
        await holds.release_hold(conn, c.hold_id, f"consultation {c.status}")
        return
    astrologer_part, platform_part = rules.split(fee, c.share_percent)
    wallet = await account_id(conn, "user_wallet", c.user_id, c.currency)
    legs = [Leg(wallet, -fee)]
    if astrologer_part:
        earnings = await account_id(conn, "astrologer_earnings", c.astrologer_id, c.currency)
        legs.append(Leg(earnings, astrologer_part))
    if platform_part:
        revenue = await account_id(conn, "platform_revenue", None, c.currency)
        legs.append(Leg(revenue, platform_part))
    await holds.capture_hold(
        conn,
        c.hold_id,
        key=f"cancellation_fee:{c.id}",
        kind=LATE_FEE_KIND,
        legs=legs,
        actor_id=c.user_id,
        reason="late cancellation",
    )
