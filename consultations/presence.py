"""Astrologer presence: online, busy or offline, kept in Redis (see `consultations.keys`).

Three facts make the status, so a status can never be stale for longer than a TTL:
- *alive*: a key refreshed by every heartbeat of the astrologer's live socket, expiring
  `PRESENCE_TTL_SECONDS` after the last one (an explicit REST "online" counts as a heartbeat);
- *wants*: the astrologer's explicit choice, `online` or `offline` (connecting means `online`
  unless they said otherwise);
- *busy*: set and cleared only by the consultation state machine (and the meter), never by a client.

status = busy if busy, else online if alive and wants online, else offline.

Every change is published once as the Socket.IO `presence` event `{astrologer_id, status}` to the
room `presence:{astrologer_id}`, whose members are the sockets watching that astrologer
(`presence:watch`, realtime/watch.py) and the astrologer's own. Expiry by TTL publishes nothing
by itself: `sweep` (run every few seconds by the worker) notices and publishes `offline`.

The ids whose published status is online or busy are the set `presence:listed`, mirrored in
PostgreSQL (`astrologer_presence_listed`, 0010) so `online=true` discovery is one SQL query.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Literal

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from consultations import keys
from core import events, metrics
from core.errors import AppError, Forbidden
from core.services import Services
from db.pool import Executor

log = logging.getLogger(__name__)

Status = Literal["online", "busy", "offline"]

# A blocked astrologer is never online (issue 12): approved AND an active account.
IS_APPROVED = """
SELECT p.verification = 'approved' AND u.status = 'active'
  FROM astrologer_profiles p JOIN users u ON u.id = p.user_id
 WHERE p.user_id = $1
"""
LIVE_ASTROLOGERS = """
SELECT DISTINCT astrologer_id FROM consultations
 WHERE astrologer_id = ANY($1::uuid[]) AND status IN ('accepted', 'active')
"""
# The PostgreSQL mirror of `presence:listed` (0010), joined by `online=true` discovery. Written
# when a published status crosses online/busy <-> offline; made equal to the set by every sweep.
LISTED_ADD = """
INSERT INTO astrologer_presence_listed (astrologer_id) VALUES ($1) ON CONFLICT DO NOTHING
"""
LISTED_REMOVE = "DELETE FROM astrologer_presence_listed WHERE astrologer_id = $1"
# $1: the set's members. Rows younger than $2 seconds are left alone: they may come from a publish
# that ran after the set was read (the next sweep looks at them again).
LISTED_SYNC = """
WITH gone AS (
    DELETE FROM astrologer_presence_listed
     WHERE astrologer_id <> ALL($1::uuid[])
       AND listed_at < now() - make_interval(secs => $2)
)
INSERT INTO astrologer_presence_listed (astrologer_id)
SELECT id FROM users WHERE id = ANY($1::uuid[])
ON CONFLICT DO NOTHING
"""
# Longer than a publish takes between its Redis write and its PostgreSQL write (milliseconds).
LISTED_SYNC_GRACE_SECONDS = 2.0


class NotVerified(Forbidden):
    code, message = "not_verified", "only verified astrologers can go online"


def _ttl_ms(services: Services) -> int:
    return max(1, int(services.settings.presence_ttl_seconds * 1000))


def _compute(alive: object, wants: object, busy: object) -> Status:
    if busy is not None:
        return "busy"
    if alive is not None and wants == "online":
        return "online"
    return "offline"


async def get_statuses(redis: Redis, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Status]:
    """The current status of each astrologer id, in one round trip."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    names = [k for i in wanted for k in (keys.alive(i), keys.wants(i), keys.busy(i))]
    values = await redis.mget(names)
    return {
        aid: _compute(values[3 * n], values[3 * n + 1], values[3 * n + 2])
        for n, aid in enumerate(wanted)
    }


async def get_status(redis: Redis, astrologer_id: uuid.UUID) -> Status:
    return (await get_statuses(redis, [astrologer_id]))[astrologer_id]


async def listed_candidates(redis: Redis) -> list[uuid.UUID]:
    """Astrologers last published online or busy: a superset of those on now (one whose
    heartbeats just stopped stays here until the next sweep). One SMEMBERS. Discovery's
    `online=true` joins the PostgreSQL mirror of this set instead (`astrologer_presence_listed`),
    then drops the page's stale ones with `get_statuses`."""
    members = await redis.smembers(keys.PRESENCE_LISTED)  # type: ignore[misc]  # redis-py types smembers as Awaitable | set
    return [uuid.UUID(m) for m in members]


async def listed_ids(redis: Redis) -> list[uuid.UUID]:
    """Astrologers that are online or busy now, exactly (checks every candidate's keys)."""
    statuses = await get_statuses(redis, await listed_candidates(redis))
    return [aid for aid, status in statuses.items() if status != "offline"]


async def publish(services: Services, astrologer_id: uuid.UUID) -> str:
    """Recompute the status; emit the `presence` event if it differs from the last one published.
    Returns the status. When the astrologer has just become `online` (free), the next user of
    their waitlist is offered them."""
    redis = services.redis
    status = await get_status(redis, astrologer_id)
    previous = await redis.set(keys.last(astrologer_id), status, get=True)
    if status == "offline":
        await redis.srem(keys.PRESENCE_LISTED, str(astrologer_id))  # type: ignore[misc]  # redis-py's sync/async union
    else:
        await redis.sadd(keys.PRESENCE_LISTED, str(astrologer_id))  # type: ignore[misc]  # redis-py's sync/async union
    if (previous or "offline") != status and "offline" in (previous or "offline", status):
        await _mirror_listed(services, astrologer_id, listed=status != "offline")
    if (previous or "offline") != status:
        await events.send(
            services.emitter,
            events.Presence(astrologer_id=str(astrologer_id), status=status),
            events.Room.presence(astrologer_id),
        )
        metrics.domain().presence_sent()
        if status == "online":
            await _came_free(
                services, astrologer_id, was_offline=(previous or "offline") == "offline"
            )
    return status


async def _mirror_listed(services: Services, astrologer_id: uuid.UUID, *, listed: bool) -> None:
    """Keep `astrologer_presence_listed` in step with the set. Best effort: presence works without
    PostgreSQL, and the sweep (`sync_listed`) repairs a lost write."""
    try:
        await services.db.execute(LISTED_ADD if listed else LISTED_REMOVE, astrologer_id)
    except (asyncpg.PostgresError, OSError):
        log.warning("presence mirror write failed", extra={"astrologer_id": str(astrologer_id)})


async def sync_listed(services: Services) -> None:
    """Make `astrologer_presence_listed` equal to the `presence:listed` set (run by the sweep)."""
    members = await services.redis.smembers(keys.PRESENCE_LISTED)  # type: ignore[misc]  # redis-py's sync/async union
    await services.db.execute(
        LISTED_SYNC, [uuid.UUID(m) for m in members], LISTED_SYNC_GRACE_SECONDS
    )


async def _came_free(services: Services, astrologer_id: uuid.UUID, *, was_offline: bool) -> None:
    """The astrologer can take a consultation now: offer them to the next in their waitlist, and
    tell followers when they have just come online (debounced by notify). Best effort: the
    waitlist sweep repairs a lost offer."""
    from consultations import waitlist  # waitlist reads presence; imported late
    from notify import notify_followers

    try:
        await waitlist.offer_next(services, astrologer_id)
        if was_offline:
            await notify_followers(services, astrologer_id)
    except (AppError, RedisError, OSError, asyncpg.PostgresError):
        log.exception("after-online steps failed", extra={"astrologer_id": str(astrologer_id)})


async def _is_approved(db: Executor, astrologer_id: uuid.UUID) -> bool:
    return bool(await db.fetchval(IS_APPROVED, astrologer_id))


async def connected(services: Services, astrologer_id: uuid.UUID) -> str:
    """The astrologer's live socket connected: alive, and online unless they chose offline.
    Unapproved profiles stay offline."""
    if not await _is_approved(services.db, astrologer_id):
        return "offline"
    redis = services.redis
    await redis.set(keys.alive(astrologer_id), "1", px=_ttl_ms(services))
    await redis.set(keys.wants(astrologer_id), "online", nx=True)
    return await publish(services, astrologer_id)


async def heartbeat(services: Services, astrologer_id: uuid.UUID) -> str:
    """A heartbeat from the live socket: stay alive for another PRESENCE_TTL_SECONDS."""
    redis = services.redis
    await redis.set(keys.alive(astrologer_id), "1", px=_ttl_ms(services))
    if await redis.get(keys.wants(astrologer_id)) is None:
        # Redis lost the choice (restart without persistence): re-derive it as on connect.
        return await connected(services, astrologer_id)
    return await publish(services, astrologer_id)


async def disconnected(services: Services, astrologer_id: uuid.UUID) -> str:
    """The live socket closed: offline now (busy stays busy until the session ends)."""
    await services.redis.delete(keys.alive(astrologer_id))
    return await publish(services, astrologer_id)


async def set_status(services: Services, astrologer_id: uuid.UUID, status: str) -> str:
    """The astrologer's explicit `online` / `offline` (REST). Going online needs an approved
    profile (403 not_verified) and counts as a heartbeat. Returns the resulting status, which is
    `busy` during a consultation."""
    if status not in ("online", "offline"):
        raise ValueError(f"status must be online or offline, not {status!r}")
    redis = services.redis
    if status == "online":
        if not await _is_approved(services.db, astrologer_id):
            raise NotVerified()
        await redis.set(keys.alive(astrologer_id), "1", px=_ttl_ms(services))
    await redis.set(keys.wants(astrologer_id), status)
    return await publish(services, astrologer_id)


async def set_busy(services: Services, astrologer_id: uuid.UUID, busy: bool) -> str:
    """Only the state machine and the meter call this: busy while a consultation is accepted or
    active. Prefer `sync_busy`, which derives the flag from PostgreSQL and so cannot be left
    wrong by two racing transitions."""
    if busy:
        await services.redis.set(keys.busy(astrologer_id), "1", ex=keys.PRESENCE_BUSY_TTL_SECONDS)
    else:
        await services.redis.delete(keys.busy(astrologer_id))
    return await publish(services, astrologer_id)


async def sync_busy(services: Services, astrologer_id: uuid.UUID) -> str:
    """Set `busy` from the truth: does the astrologer have an accepted or active consultation?"""
    live = await services.db.fetch(LIVE_ASTROLOGERS, [astrologer_id])
    return await set_busy(services, astrologer_id, bool(live))


async def sweep(services: Services) -> int:
    """Publish what changed without an event: expired heartbeats (offline) and `busy` flags that
    no longer match PostgreSQL. Returns how many astrologers were looked at."""
    redis = services.redis
    members = [uuid.UUID(m) for m in await redis.smembers(keys.PRESENCE_LISTED)]  # type: ignore[misc]  # redis-py's sync/async union
    if not members:
        await sync_listed(services)
        return 0
    statuses = await get_statuses(redis, members)
    busy_ids = [aid for aid, status in statuses.items() if status == "busy"]
    if busy_ids:
        live = {r["astrologer_id"] for r in await services.db.fetch(LIVE_ASTROLOGERS, busy_ids)}
        for aid in busy_ids:
            if aid not in live:
                log.warning("clearing a stale busy flag", extra={"astrologer_id": str(aid)})
                await redis.delete(keys.busy(aid))
    for aid in members:
        await publish(services, aid)
    await sync_listed(services)
    return len(members)
