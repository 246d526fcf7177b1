"""Notification jobs: deliver one notification on its channels, fan "came online" out to an
astrologer's followers, and a sweep that enqueues what a crash left unenqueued.

Delivery is at most once per channel and target (see `notify.deliveries` for the claim and its
one window). Transient provider errors give the row back and retry the job with backoff; a
permanent one marks the row failed with its reason, and a dead push token drops the device. After
`DELIVERY_MAX_TRIES` tries the job fails (visible in `astrolive jobs failed`), leaving the rows
`queued` with the last error as their reason, ready for `astrolive jobs retry`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from core.services import Services
from notify import api as notify_api
from notify import deliveries, devices, follows, inbox
from notify.channels import (
    Channel,
    ChannelKind,
    Message,
    PermanentSendError,
    TransientSendError,
)
from notify.inbox import Notification
from workers.context import JobContext, services_of
from workers.retry import is_transient, retry_later

log = logging.getLogger(__name__)

# Tries of one delivery job, with backoff from NOTIFY_RETRY_BASE_SECONDS doubling up to
# NOTIFY_RETRY_MAX_SECONDS: by default about 2+4+...+256 s, some eight minutes of provider outage.
DELIVERY_MAX_TRIES = 9
# One job sends a notification's rows concurrently, but not to more targets at once than this.
SEND_CONCURRENCY = 8
# Followers told per page of the fan-out: one query and that many notifications per page.
FOLLOWERS_PAGE_SIZE = 500
# A delivery never tried this long after it was made lost its enqueue (a crash between the commit
# and the enqueue, or Redis down then): the sweep enqueues it. Comfortably above enqueue latency.
SWEEP_AFTER_SECONDS = 60.0
SWEEP_BATCH = 500
# A claim this long past its lease belongs to a job nobody will run again (arq re-runs a killed
# worker's job within its in-progress timeout, far shorter): the sweep enqueues it.
STALE_CLAIM_MARGIN_SECONDS = 600.0


class DeliveryGaveUp(Exception):
    """Transient errors outlasted every try; the rows wait, `queued`, for an operator retry."""


def channels_of(ctx: JobContext) -> dict[ChannelKind, Channel]:
    """The process's channels, built once by the composition root from its settings."""
    return services_of(ctx).channels


@dataclass
class _Outcome:
    transient: list[tuple[str, float | None]]
    busy: bool = False


def _message(n: Notification, target: str) -> Message:
    data = {k: str(v) for k, v in n.data.items() if v is not None}
    return Message(n.id, n.event, n.locale, n.title, n.body, target, data)


async def _deliver_one(
    services: Services,
    channel: Channel | None,
    row: deliveries.Delivery,
    n: Notification,
    outcome: _Outcome,
    metrics: Any,
) -> None:
    settings = services.settings
    pool = services.db
    fence = await deliveries.claim(pool, row.id, settings.notify_claim_lease_seconds)
    if fence is None:
        # Another worker holds a live claim (or it is done): come back after its lease.
        current = [d for d in await deliveries.list_for(pool, n.id) if d.id == row.id]
        if current and current[0].status in ("queued", "sending"):
            outcome.busy = True
        return
    if channel is None:
        await deliveries.mark_failed(pool, row.id, fence, f"no {row.channel} channel configured")
        return
    label = row.channel
    try:
        result = await asyncio.wait_for(
            channel.send(_message(n, row.target)), settings.notify_send_timeout_seconds
        )
    except PermanentSendError as exc:
        await deliveries.mark_failed(pool, row.id, fence, exc.reason)
        if exc.drop_target and row.channel == "push":
            await devices.drop_token(pool, row.target)
            log.info("push token dropped", extra={"notification_id": str(n.id)})
        if metrics is not None:
            outcome_label = "dropped_target" if exc.drop_target else "failed"
            metrics.deliveries.labels(label, outcome_label).inc()
        return
    except Exception as exc:
        if not (isinstance(exc, TransientSendError) or is_transient(exc)):
            # A bug or an unexpected answer: give the row back and fail the job loudly.
            await deliveries.release(pool, row.id, fence, f"error: {exc!r}")
            raise
        reason = exc.reason if isinstance(exc, TransientSendError) else f"timeout/network: {exc!r}"
        retry_after = exc.retry_after if isinstance(exc, TransientSendError) else None
        await deliveries.release(pool, row.id, fence, reason)
        outcome.transient.append((reason, retry_after))
        if metrics is not None:
            metrics.deliveries.labels(label, "retry").inc()
        return
    # Mark right after the provider answered: this gap is the only double-send window.
    await deliveries.mark_sent(pool, row.id, fence, result.provider_id)
    if metrics is not None:
        metrics.deliveries.labels(label, "sent").inc()


async def deliver_notification(ctx: JobContext, notification_id: str) -> dict[str, int]:
    """arq job: send a notification on each of its pending delivery rows. Safe to run twice."""
    services = services_of(ctx)
    settings = services.settings
    nid = uuid.UUID(notification_id)
    n = await inbox.get(services.db, nid)
    if n is None:
        return {}
    rows = [d for d in await deliveries.list_for(services.db, nid) if d.status != "sent"]
    rows = [d for d in rows if d.status != "failed"]
    channels = channels_of(ctx)
    outcome = _Outcome(transient=[])
    limit = asyncio.Semaphore(SEND_CONCURRENCY)
    metrics = ctx.get("metrics")

    async def one(row: deliveries.Delivery) -> None:
        async with limit:
            await _deliver_one(services, channels.get(row.channel), row, n, outcome, metrics)

    await asyncio.gather(*(one(r) for r in rows))
    if outcome.transient:
        job_try = ctx.get("job_try", 1)
        last = outcome.transient[-1][0]
        if job_try >= DELIVERY_MAX_TRIES:
            raise DeliveryGaveUp(f"gave up after {job_try} tries: {last}")
        at_least = max((ra for _, ra in outcome.transient if ra is not None), default=None)
        raise retry_later(
            ctx,
            base_seconds=settings.notify_retry_base_seconds,
            max_seconds=settings.notify_retry_max_seconds,
            at_least=at_least,
        )
    if outcome.busy:
        # Someone else's claim is still within its lease; look again once it has expired.
        raise retry_later(ctx, at_least=settings.notify_claim_lease_seconds)
    final = await deliveries.list_for(services.db, nid)
    counts: dict[str, int] = {}
    for d in final:
        counts[d.status] = counts.get(d.status, 0) + 1
    return counts


async def notify_followers_online(ctx: JobContext, astrologer_id: str, bucket: int) -> int:
    """arq job: tell every follower that the astrologer came online (one per window)."""
    services = services_of(ctx)
    aid = uuid.UUID(astrologer_id)
    name = await follows.display_name(services.db, aid)
    if name is None:
        return 0
    told = 0
    after: uuid.UUID | None = None
    while True:
        page = await follows.followers_page(services.db, aid, after, FOLLOWERS_PAGE_SIZE)
        if not page:
            return told
        for follower in page:
            await notify_api.notify(
                services,
                follower,
                "followed_astrologer_online",
                {"astrologer_name": name, "astrologer_id": astrologer_id},
                key=f"followed_astrologer_online:{astrologer_id}:{bucket}",
            )
            told += 1
        after = page[-1]


async def sweep_undelivered(ctx: JobContext) -> int:
    """arq cron: enqueue notifications whose deliveries no job will pick up by itself."""
    services = services_of(ctx)
    stale = services.settings.notify_claim_lease_seconds + STALE_CLAIM_MARGIN_SECONDS
    found = await deliveries.abandoned(services.db, SWEEP_AFTER_SECONDS, stale, SWEEP_BATCH)
    from notify import keys

    for nid in found:
        await services.arq.enqueue_job(
            notify_api.DELIVER_JOB, str(nid), _job_id=keys.sweep_job_id(nid)
        )
    if found:
        log.info("sweep enqueued notifications", extra={"count": len(found)})
    return len(found)
