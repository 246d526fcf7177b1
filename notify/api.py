"""The entry points other packages call: `notify` (one person, one event) and `notify_followers`.

    await notify.notify(services, user_id, "consultation_missed",
                        {"astrologer_name": "Pandit Rao", "type": "chat"},
                        key=f"consultation_missed:{consultation_id}")

The inbox entry and its delivery rows are written in one transaction, then the delivery job is
enqueued. Both steps are idempotent on `key`, which must be derived from the cause: calling again
(a retried job, a duplicate webhook) makes no second notification and sends nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from core.services import Services
from db.pool import Conn
from notify import inbox, keys

log = logging.getLogger(__name__)

DELIVER_JOB = "deliver_notification"
FOLLOWERS_JOB = "notify_followers_online"
# Events that never go through the inbox: the OTP SMS is sent by the sign-in flow itself (its
# template is `notify.templates.otp_text`), and a code has no business in an inbox.
# email_verify (issue 16) is sent by e-mail only, to the address being verified.
NOT_INBOX_EVENTS = frozenset({"otp", "email_verify"})


async def notify(
    services: Services, user_id: uuid.UUID, event: str, data: dict[str, Any], *, key: str
) -> None:
    """Tell `user_id` about `event`: an inbox entry in their language, then push and e-mail.

    Raises `ValueError` for an unknown event, an inbox-less event (`otp`) or missing data; a
    user who does not exist is logged and skipped. A Redis failure while enqueueing is logged:
    the notification is recorded and the worker's sweep enqueues it within a couple of minutes.
    """
    async with services.db.acquire() as conn, conn.transaction():
        notification_id = await record_txn(conn, user_id, event, data, key=key)
    if notification_id is not None:
        await enqueue_delivery(services, notification_id)


async def record_txn(
    conn: Conn, user_id: uuid.UUID, event: str, data: Mapping[str, Any], *, key: str
) -> uuid.UUID | None:
    """`notify` inside the caller's transaction, without the enqueue (an outbox): the worker's
    sweep delivers it soon after the commit, or call `enqueue_delivery` after committing."""
    if event in NOT_INBOX_EVENTS:
        raise ValueError(f"{event} is not an inbox event")
    try:
        recorded = await inbox.record_txn(conn, user_id, event, data, key)
    except KeyError as exc:
        raise ValueError(f"unknown notification event {event!r}") from exc
    if recorded is None:
        log.warning("notification for a missing user", extra={"user_id": str(user_id), "key": key})
        return None
    return recorded[0]


async def enqueue_delivery(services: Services, notification_id: uuid.UUID) -> None:
    """Enqueue the delivery job once (its job id is the notification's)."""
    try:
        await services.arq.enqueue_job(
            DELIVER_JOB, str(notification_id), _job_id=keys.delivery_job_id(notification_id)
        )
    except (RedisError, OSError) as exc:
        log.warning(
            "could not enqueue a notification; the sweep will",
            extra={"notification_id": str(notification_id), "error": repr(exc)},
        )


async def notify_followers(services: Services, astrologer_id: uuid.UUID) -> bool:
    """The astrologer came online: tell their followers, at most once per debounce window.

    Cheap enough for the presence path: one Redis SET NX and one enqueue; the fan-out runs in the
    worker. True when followers will be told, False when debounced."""
    ttl = services.settings.follow_online_debounce_seconds
    if not await services.redis.set(keys.follow_online(astrologer_id), "1", nx=True, ex=ttl):
        return False
    # The idempotency key of each follower's notification names this window, so a lost Redis
    # key (a Redis restart) still gives one notification per follower per window.
    bucket = int(time.time() // ttl)
    await services.arq.enqueue_job(
        FOLLOWERS_JOB,
        str(astrologer_id),
        bucket,
        _job_id=keys.follow_online_job_id(astrologer_id, bucket),
    )
    return True
