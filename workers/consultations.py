"""Consultation timers: the missed-request timeout, bookings turning into requests, waitlist offer
expiry, and the sweep that backs them all up.

Each timer is an arq delayed job with a deterministic `_job_id` (consultations.keys), enqueued
when the thing is created. arq's job ids dedupe only while queued, and a queue can be lost, so
the sweep (every SWEEP_EVERY_SECONDS) finds whatever is overdue in PostgreSQL and applies the same
conditional transition. Every job is safe to run twice or concurrently with the sweep: the
transitions are conditional UPDATEs, so only one of them changes the row.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from arq.worker import Retry

from consultations import lifecycle, presence, waitlist
from workers.context import JobContext, services_of

# A timer job that fires before its moment (the worker's clock ahead of PostgreSQL's) retries
# after what is left, plus this margin, instead of waiting for the sweep.
EARLY_MARGIN_SECONDS = 0.2


async def expire_request(ctx: JobContext, consultation_id: str) -> str:
    """The request's timeout is due: `requested → missed` unless answered meanwhile."""
    services = services_of(ctx)
    cid = uuid.UUID(consultation_id)
    left = await lifecycle.seconds_until_missed(services, cid)
    if left is None:
        return "answered"
    if left > 0:
        raise Retry(defer=left + EARLY_MARGIN_SECONDS)
    return "missed" if await lifecycle.miss(services, cid) is not None else "answered"


async def start_booking(ctx: JobContext, consultation_id: str) -> str:
    """A booking's time has come: `scheduled → requested` (not before its time, not twice)."""
    c = await lifecycle.start_booking(services_of(ctx), uuid.UUID(consultation_id))
    return "requested" if c is not None else "not due or not scheduled"


async def expire_waitlist_offer(ctx: JobContext, entry_id: str) -> bool:
    """A waitlist offer's time is up: expire it if unanswered and offer the next in line."""
    return await waitlist.expire_offer(services_of(ctx), uuid.UUID(entry_id))


async def consultations_sweep(ctx: JobContext) -> dict[str, int]:
    """Every few seconds: overdue requests missed, due bookings requested, due offers expired,
    lost astrologers offline (missed heartbeats) and stale `busy` flags repaired."""
    services = services_of(ctx)
    done = await lifecycle.sweep(services)
    done.update(await waitlist.sweep(services))
    done["presence_checked"] = await presence.sweep(services)
    return done


JOBS: list[Callable[..., Awaitable[Any]]] = [expire_request, start_booking, expire_waitlist_offer]
