"""Booking timers (issue 17): the shortfall payment's expiry and the reminders, with their sweep.

Each is an arq delayed job with a deterministic job id, enqueued when the booking is made, moved
or confirmed; arq's ids dedupe only while queued and a queue can be lost, so `bookings_sweep`
(every minute) finds what is overdue in PostgreSQL and does the same. Both are safe to run twice
or together: the expiry is a conditional UPDATE, a reminder's sent-marker row is inserted once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from arq.worker import Retry

from consultations import reminders, shortfall
from workers.context import JobContext, services_of

# A reminder job that fires before its moment (the worker's clock ahead of PostgreSQL's) retries
# after what is left, plus this margin.
EARLY_MARGIN_SECONDS = 0.2


async def expire_booking_payment(ctx: JobContext, consultation_id: str) -> str:
    """The shortfall payment's time is up: `awaiting_payment → expired` unless it was paid."""
    expired = await shortfall.expire(services_of(ctx), uuid.UUID(consultation_id))
    return "expired" if expired else "paid, or not due"


async def send_booking_reminder(
    ctx: JobContext, consultation_id: str, kind: str, scheduled_at: str
) -> str:
    """A booking's reminder is due: sent once to both sides, unless the booking moved or closed."""
    services = services_of(ctx)
    cid, at = uuid.UUID(consultation_id), datetime.fromisoformat(scheduled_at)
    left = await reminders.seconds_until(services, cid, kind, at)
    if left > 0:
        raise Retry(defer=left + EARLY_MARGIN_SECONDS)
    sent = await reminders.send(services, cid, kind, at)
    return "sent" if sent else "already sent, moved or closed"


async def bookings_sweep(ctx: JobContext) -> dict[str, int]:
    """Every minute: overdue shortfall payments expired, due reminders sent."""
    services = services_of(ctx)
    return {
        "payments_expired": await shortfall.sweep(services),
        "reminders_sent": await reminders.sweep(services),
    }


JOBS: list[Callable[..., Awaitable[Any]]] = [expire_booking_payment, send_booking_reminder]
