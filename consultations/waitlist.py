"""The waitlist: users queue for a busy astrologer; when the astrologer is free again the next in
line is offered them for WAITLIST_OFFER_SECONDS, during which nobody else may request them.

The queue is PostgreSQL (`waitlist_entries`): one open place per user and queue, one offer per
astrologer (unique partial indexes), so two processes noticing "free" at once make one offer. The
offered user's balance is checked again when their turn comes; one who cannot pay is skipped.
An offer ends when the user requests (fulfilled, in the request's transaction), leaves, or lets
it expire (an arq job at the expiry, and the sweep as backup); the next in line is then offered.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from redis.exceptions import RedisError

from billing import rules
from billing.ledger import wallet_balance
from consultations import keys, lifecycle, presence
from core import events
from core.errors import Conflict
from core.services import Services
from core.times import rfc3339
from db.pool import Conn

log = logging.getLogger(__name__)

EXPIRE_OFFER_JOB = "expire_waitlist_offer"
OFFER_EVENT = events.WaitlistOffer.name
SKIPPED_EVENT = events.WaitlistSkipped.name


class AstrologerAvailable(Conflict):
    code, message = "astrologer_available", "the astrologer is free: request them directly"


@dataclass(frozen=True)
class Place:
    id: uuid.UUID
    astrologer_id: uuid.UUID
    type: str
    status: str
    position: int
    offer_expires_at: datetime | None


OPEN_QUEUE = """
SELECT EXISTS (SELECT 1 FROM waitlist_entries
                WHERE astrologer_id = $1 AND status IN ('waiting', 'offered'))
"""
JOIN = """
INSERT INTO waitlist_entries (astrologer_id, user_id, type) VALUES ($1, $2, $3)
ON CONFLICT (astrologer_id, user_id) WHERE status IN ('waiting', 'offered') DO NOTHING
"""
PLACE = """
SELECT e.id, e.astrologer_id, e.type, e.status, e.offer_expires_at,
       (SELECT count(*) FROM waitlist_entries o
         WHERE o.astrologer_id = e.astrologer_id AND o.status IN ('waiting', 'offered')
           AND (o.created_at, o.id) <= (e.created_at, e.id)) AS position
  FROM waitlist_entries e
 WHERE e.astrologer_id = $1 AND e.user_id = $2 AND e.status IN ('waiting', 'offered')
"""
LEAVE = """
UPDATE waitlist_entries SET status = 'left', updated_at = now()
 WHERE astrologer_id = $1 AND user_id = $2 AND status IN ('waiting', 'offered')
RETURNING status
"""
NEXT_WAITING = """
SELECT id, user_id, type FROM waitlist_entries
 WHERE astrologer_id = $1 AND status = 'waiting'
 ORDER BY created_at, id
 LIMIT 1
   FOR UPDATE SKIP LOCKED
"""
HAS_OFFER = """
SELECT EXISTS (SELECT 1 FROM waitlist_entries WHERE astrologer_id = $1 AND status = 'offered')
"""
OFFER = """
UPDATE waitlist_entries
   SET status = 'offered', offered_at = now(),
       offer_expires_at = now() + make_interval(secs => $2), updated_at = now()
 WHERE id = $1 AND status = 'waiting'
RETURNING offer_expires_at
"""
SKIP = """
UPDATE waitlist_entries SET status = 'skipped', updated_at = now()
 WHERE id = $1 AND status = 'waiting'
"""
EXPIRE_OFFER = """
UPDATE waitlist_entries SET status = 'expired', updated_at = now()
 WHERE id = $1 AND status = 'offered' AND offer_expires_at <= now()
RETURNING astrologer_id
"""
DUE_OFFERS = """
SELECT id FROM waitlist_entries WHERE status = 'offered' AND offer_expires_at <= now()
 ORDER BY offer_expires_at LIMIT $1
"""
# Queues whose astrologer may be free with nobody offered (a lost `online` event): the sweep
# checks their presence and offers.
STALLED_QUEUES = """
SELECT DISTINCT astrologer_id FROM waitlist_entries w
 WHERE status = 'waiting'
   AND NOT EXISTS (SELECT 1 FROM waitlist_entries o
                    WHERE o.astrologer_id = w.astrologer_id AND o.status = 'offered')
 LIMIT $1
"""


async def _covers(services: Services, conn: Conn, user_id: uuid.UUID, rate: int) -> bool:
    """Would the spendable balance start a consultation at `rate` (no promo: the request that
    follows the offer prices its own promo)?"""
    settings = services.settings
    balance, held = await wallet_balance(conn, user_id, settings.currency)
    terms = rules.Terms(rate, rate, settings.astrologer_share_percent, currency=settings.currency)
    return rules.covers_start(terms, balance - held, settings.min_start_minutes)


async def join(
    services: Services, *, user_id: uuid.UUID, astrologer_id: uuid.UUID, type_: str
) -> Place:
    """Join the astrologer's queue (or get the place already held). 409 astrologer_offline when
    they are offline, astrologer_available when they are free with nobody waiting (just request),
    402 when the wallet could not start a consultation at their rate."""
    profile = await lifecycle.load_profile(services.db, astrologer_id)
    rate = lifecycle.rate_for(profile, type_)
    status = await presence.get_status(services.redis, astrologer_id)
    async with services.db.acquire() as conn:
        existing = await conn.fetchrow(PLACE, astrologer_id, user_id)
        if existing is not None:
            return _place(existing)
        if status == "offline":
            raise lifecycle.AstrologerOffline()
        if status == "online" and not await conn.fetchval(OPEN_QUEUE, astrologer_id):
            raise AstrologerAvailable()
        if not await _covers(services, conn, user_id, rate):
            raise lifecycle.InsufficientBalance(
                details={"rate": rate, "min_start_minutes": services.settings.min_start_minutes}
            )
        await conn.execute(JOIN, astrologer_id, user_id, type_)
        row = await conn.fetchrow(PLACE, astrologer_id, user_id)
    assert row is not None
    return _place(row)


def _place(row: asyncpg.Record) -> Place:
    return Place(
        row["id"], row["astrologer_id"], row["type"], row["status"], int(row["position"]),
        row["offer_expires_at"],
    )  # fmt: skip


async def position(
    services: Services, *, user_id: uuid.UUID, astrologer_id: uuid.UUID
) -> Place | None:
    row = await services.db.fetchrow(PLACE, astrologer_id, user_id)
    return _place(row) if row else None


async def leave(services: Services, *, user_id: uuid.UUID, astrologer_id: uuid.UUID) -> bool:
    """Leave the queue; an offered user leaving passes the offer on. False when not queued."""
    row = await services.db.fetchrow(LEAVE, astrologer_id, user_id)
    if row is None:
        return False
    await offer_next(services, astrologer_id)
    return True


async def offer_next(services: Services, astrologer_id: uuid.UUID) -> uuid.UUID | None:
    """If the astrologer is free (online, no live consultation, no open offer), offer them to the
    next user in line whose wallet still covers the minimum start; skip those it does not.
    Returns the entry offered, or None. Safe to call from many places at once."""
    if await presence.get_status(services.redis, astrologer_id) != "online":
        return None
    profile = await services.db.fetchrow(lifecycle.PROFILE_FOR_REQUEST, astrologer_id)
    if profile is None:
        return None
    settings = services.settings
    while True:
        async with services.db.acquire() as conn, conn.transaction():
            if await conn.fetchval(lifecycle.HAS_LIVE, astrologer_id):
                return None
            if await conn.fetchval(HAS_OFFER, astrologer_id):
                return None
            entry = await conn.fetchrow(NEXT_WAITING, astrologer_id)
            if entry is None:
                return None
            rate = profile[f"rate_{entry['type']}"]
            if rate is None or not await _covers(services, conn, entry["user_id"], int(rate)):
                await conn.execute(SKIP, entry["id"])
                skipped = entry
                expires_at = None
            else:
                try:
                    async with conn.transaction():
                        expires_at = await conn.fetchval(
                            OFFER, entry["id"], settings.waitlist_offer_seconds
                        )
                except asyncpg.UniqueViolationError:
                    return None  # another process offered meanwhile
                skipped = None
        if skipped is not None:
            await events.send(
                services.emitter,
                events.WaitlistSkipped(
                    astrologer_id=str(astrologer_id), reason="insufficient_balance"
                ),
                events.Room.user(skipped["user_id"]),
            )
            continue
        assert expires_at is not None
        await _announce_offer(
            services, entry["id"], entry["user_id"], astrologer_id, entry["type"], expires_at
        )
        return uuid.UUID(str(entry["id"]))


async def _announce_offer(
    services: Services,
    entry_id: uuid.UUID,
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    type_: str,
    expires_at: datetime,
) -> None:
    await events.send(
        services.emitter,
        events.WaitlistOffer.model_validate(
            {
                "entry_id": str(entry_id),
                "astrologer_id": str(astrologer_id),
                "type": type_,
                "expires_at": rfc3339(expires_at),
            }
        ),
        events.Room.user(user_id),
    )
    try:
        await services.arq.enqueue_job(
            EXPIRE_OFFER_JOB,
            str(entry_id),
            _job_id=keys.expire_offer_job(entry_id),
            _defer_by=timedelta(seconds=services.settings.waitlist_offer_seconds),
        )
    except (RedisError, OSError):
        log.warning("could not enqueue an offer expiry; the sweep will", exc_info=True)


async def expire_offer(services: Services, entry_id: uuid.UUID) -> bool:
    """An unanswered offer expires (only once it is due); the next in line is offered."""
    astrologer_id = await services.db.fetchval(EXPIRE_OFFER, entry_id)
    if astrologer_id is None:
        return False
    await offer_next(services, astrologer_id)
    return True


SWEEP_BATCH = 200


async def sweep(services: Services) -> dict[str, int]:
    """Expire due offers and offer free astrologers whose `online` moment was lost."""
    expired = offered = 0
    for row in await services.db.fetch(DUE_OFFERS, SWEEP_BATCH):
        expired += await expire_offer(services, row["id"])
    for row in await services.db.fetch(STALLED_QUEUES, SWEEP_BATCH):
        offered += (await offer_next(services, row["astrologer_id"])) is not None
    return {"offers_expired": expired, "offers_made": offered}
