"""Bookings paid by shortfall: the slot kept while a recharge of exactly what is missing is paid.

    POST /v1/consultations {scheduled_at, pay_shortfall: {gateway}}
      -> awaiting_payment (slot kept until payment_due_at, a recharge of the shortfall created)
      -> scheduled   when that recharge settles in time: the hold is placed in the settle
                     transaction itself (billing/recharges.py calls `recharge_settled_txn`)
      -> expired     when it does not: a durable delayed job at payment_due_at plus the sweep;
                     the slot is free again, and money that arrives later stays in the wallet.

Exactly once: the booking is created holding the recharge's row lock, and the settle path holds
the same lock while it credits the wallet and calls `recharge_settled_txn`; so whichever commits
second sees the other's work (a recharge settled before its booking row existed is confirmed by
`checkout` itself). Confirmation and expiry are conditional UPDATEs of `awaiting_payment`, so a
webhook, a client verify, the test gateway, the expiry job and the sweep racing each other leave
one outcome.

The recharge is for the shortfall exactly (GST on top, as every recharge), but never below
RECHARGE_MIN_AMOUNT: a smaller shortfall is rounded up to it (the rest stays in the wallet).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from redis.exceptions import RedisError

from billing import holds, recharges
from billing.ledger import InsufficientFunds, wallet_balance
from billing.recharges import Recharge
from consultations import booking, lifecycle, promos, reminders
from core.services import Services
from db.pool import Conn, Executor

log = logging.getLogger(__name__)

EXPIRE_PAYMENT_JOB = "expire_booking_payment"
SWEEP_BATCH = 200

MARK_AWAITING = """
UPDATE consultations
   SET status = 'awaiting_payment',
       -- never past the booking's own start: a slot about to begin is not kept any longer
       payment_due_at = least(now() + make_interval(secs => $2), scheduled_at),
       shortfall_recharge_id = $3, hold_amount = $4, updated_at = now()
 WHERE id = $1 AND status = 'scheduled'
"""
LOCK_RECHARGE = "SELECT status FROM recharges WHERE id = $1 FOR UPDATE"
BOOKING_OF_RECHARGE = "SELECT id FROM consultations WHERE shortfall_recharge_id = $1"
# Confirmed only while the slot is still kept for it (by the database clock).
CONFIRM = """
UPDATE consultations SET status = 'scheduled', reminders_from = now(), updated_at = now()
 WHERE id = $1 AND status = 'awaiting_payment' AND payment_due_at >= now()
RETURNING hold_amount, upper(booked_slot) AS slot_end
"""
EXPIRE = """
UPDATE consultations
   SET status = 'expired', ended_at = now(), close_reason = $2, updated_at = now()
 WHERE id = $1 AND status = 'awaiting_payment' AND ($3 OR payment_due_at < now())
RETURNING id
"""
PAYMENT_OF = """
SELECT payment_due_at, shortfall_recharge_id FROM consultations WHERE id = $1
"""
DUE = """
SELECT id FROM consultations
 WHERE status = 'awaiting_payment' AND payment_due_at < now()
 ORDER BY payment_due_at LIMIT $1
"""


@dataclass
class Effects:
    """What a settle transaction did here, for after its commit."""

    notifications: list[uuid.UUID] = field(default_factory=list)
    confirmed: list[lifecycle.Consultation] = field(default_factory=list)
    expired: list[lifecycle.Consultation] = field(default_factory=list)


async def checkout(
    services: Services,
    *,
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    type_: str,
    start: datetime,
    end: datetime,
    share_percent: int,
    list_rate: int,
    promo_code: str | None,
    gateway: str,
    shortfall: int,
) -> lifecycle.Consultation:
    """Create the shortfall's recharge (the gateway call, outside any transaction), then the
    booking in `awaiting_payment` holding the recharge's row lock. 409 slot_taken when the slot
    went meanwhile (the unpaid recharge simply stays pending)."""
    settings = services.settings
    amount = max(shortfall, settings.recharge_min_amount)
    recharge = await recharges.create_recharge(
        services, user_id=user_id, gateway=gateway, amount=amount
    )
    effects = Effects()
    async with services.db.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_RECHARGE, recharge.id)
        terms = await promos.terms_txn(
            conn, settings, user_id=user_id, list_rate=list_rate, promo_code=promo_code
        )
        c = await lifecycle.create_booking_txn(
            conn,
            settings,
            consultation_id=uuid.uuid4(),
            user_id=user_id,
            astrologer_id=astrologer_id,
            type_=type_,
            terms=terms,
            share_percent=share_percent,
            start=start,
            end=end,
        )
        await conn.execute(
            MARK_AWAITING, c.id, settings.booking_payment_seconds, recharge.id,
            booking.hold_amount(settings, terms),
        )  # fmt: skip
        if await conn.fetchval(LOCK_RECHARGE, recharge.id) == "succeeded":
            # Settled before this booking existed (a fast test gateway): confirm it now.
            await _confirm_txn(conn, c.id, effects)
        found = await lifecycle.get(conn, c.id)
        assert found is not None
    await _schedule_expiry(services, found)
    await after_commit(services, effects)
    if not effects.confirmed:
        await lifecycle.publish(services, found)
    return found


async def payment_of(
    conn: Executor, consultation_id: uuid.UUID
) -> tuple[datetime | None, Recharge | None]:
    """(payment_due_at, the shortfall recharge) of a booking, for its API answer."""
    row = await conn.fetchrow(PAYMENT_OF, consultation_id)
    if row is None or row["shortfall_recharge_id"] is None:
        return None, None
    return row["payment_due_at"], await recharges.get_recharge(conn, row["shortfall_recharge_id"])


async def recharge_settled_txn(conn: Conn, recharge: Recharge) -> Effects:
    """Called by the settle path (billing/recharges.py) inside its transaction, with the
    recharge's row locked, after it applied the gateway's verdict: the inbox is told of a
    success or failure (`recharge_succeeded` / `recharge_failed`, once per recharge by key), and
    a booking waiting for this recharge is confirmed (or expired, when it came too late)."""
    from notify import record_txn

    effects = Effects()
    if recharge.status == "succeeded":
        balance, _held = await wallet_balance(conn, recharge.user_id, recharge.currency)
        note = await record_txn(
            conn,
            recharge.user_id,
            "recharge_succeeded",
            {"amount": recharge.amount + recharge.bonus, "balance": balance,
             "currency": recharge.currency, "recharge_id": str(recharge.id)},
            key=f"recharge_succeeded:{recharge.id}",
        )  # fmt: skip
    elif recharge.status == "failed":
        note = await record_txn(
            conn,
            recharge.user_id,
            "recharge_failed",
            {"amount": recharge.total, "currency": recharge.currency,
             "recharge_id": str(recharge.id)},
            key=f"recharge_failed:{recharge.id}",
        )  # fmt: skip
    else:
        return effects
    if note is not None:
        effects.notifications.append(note)
    booking_id = await conn.fetchval(BOOKING_OF_RECHARGE, recharge.id)
    if booking_id is not None and recharge.status == "succeeded":
        await _confirm_txn(conn, booking_id, effects)
    return effects


async def _confirm_txn(conn: Conn, consultation_id: uuid.UUID, effects: Effects) -> None:
    """`awaiting_payment → scheduled` with its hold, once; too late → `expired` at once."""
    row = await conn.fetchrow(CONFIRM, consultation_id)
    if row is None:
        await _expire_txn(conn, consultation_id, effects, reason="the payment came too late")
        return
    amount = int(row["hold_amount"] or 0)
    c = await lifecycle.get(conn, consultation_id)
    assert c is not None
    if amount > 0:
        try:
            hold = await holds.place_hold(
                conn,
                key=f"booking:{c.id}",
                user_id=c.user_id,
                amount=amount,
                currency=c.currency,
                reason="booking",
                expires_at=row["slot_end"] + booking.HOLD_GRACE,
                consultation_id=c.id,
            )
        except InsufficientFunds:
            # The money was spent elsewhere meanwhile: the booking cannot be held.
            await conn.execute(
                "UPDATE consultations SET status = 'awaiting_payment' WHERE id = $1", c.id
            )
            await _expire_txn(
                conn, c.id, effects, reason="the wallet no longer covers the booking", now=True
            )
            return
        await lifecycle.set_hold_txn(conn, c.id, hold.id)
        c = await lifecycle.get(conn, consultation_id)
        assert c is not None
    effects.confirmed.append(c)


async def _expire_txn(
    conn: Conn,
    consultation_id: uuid.UUID,
    effects: Effects,
    *,
    reason: str = "the shortfall was not paid in time",
    now: bool = False,
) -> None:
    from notify import record_txn

    if await conn.fetchval(EXPIRE, consultation_id, reason, now) is None:
        return
    await promos.release_txn(conn, consultation_id)
    c = await lifecycle.get(conn, consultation_id)
    assert c is not None
    effects.expired.append(c)
    note = await record_txn(
        conn,
        c.user_id,
        "booking_expired",
        {"other_name": c.astrologer_name or "your astrologer", "type": c.type,
         "when": reminders.when_text(c), "consultation_id": str(c.id)},
        key=f"booking_expired:{c.id}",
    )  # fmt: skip
    if note is not None:
        effects.notifications.append(note)


async def expire(services: Services, consultation_id: uuid.UUID) -> bool:
    """Expire a booking whose payment is overdue (the delayed job and the sweep). False when it
    was paid, or is not due yet."""
    effects = Effects()
    async with services.db.acquire() as conn, conn.transaction():
        await _expire_txn(conn, consultation_id, effects)
    await after_commit(services, effects)
    return bool(effects.expired)


async def sweep(services: Services) -> int:
    """Expire every overdue `awaiting_payment` booking (the delayed jobs' backup)."""
    done = 0
    for row in await services.db.fetch(DUE, SWEEP_BATCH):
        done += await expire(services, row["id"])
    return done


async def after_commit(services: Services, effects: Effects) -> None:
    """After the transaction that produced `effects`: deliver its notifications, publish the
    bookings' new status, and schedule a confirmed booking's start and reminders."""
    from notify import enqueue_delivery

    try:
        for note in effects.notifications:
            await enqueue_delivery(services, note)
        for c in effects.confirmed:
            await booking.after_booked(services, c)
            await lifecycle.publish(services, c)
        for c in effects.expired:
            await lifecycle.publish(services, c)
    except (RedisError, OSError):
        # Committed already; the sweeps (notifications, booking starts) finish the job.
        log.warning("after-settle effects incomplete", exc_info=True)


async def _schedule_expiry(services: Services, c: lifecycle.Consultation) -> None:
    """The durable timer: a delayed job at payment_due_at; the sweep backs it up."""
    due, _ = await payment_of(services.db, c.id)
    if due is None or c.status != "awaiting_payment":
        return
    try:
        await services.arq.enqueue_job(
            EXPIRE_PAYMENT_JOB, str(c.id), _job_id=f"booking-payment:{c.id}", _defer_until=due
        )
    except (RedisError, OSError):
        log.warning("could not enqueue the payment expiry; the sweep will", exc_info=True)
