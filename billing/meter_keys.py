"""Every Redis key of the minute meter, with its TTL and the reason for each number.

Redis only times the meters; PostgreSQL (`meters`, `meter_events`, the ledger) is the truth, and
`billing.meter.sweep` rebuilds all of these from it after Redis lost them.
"""

from __future__ import annotations

import uuid

# Sorted set of running meters: member = consultation id, score = epoch seconds when its next
# minute is due. A claimer re-scores what it took to now + lease, so a dead claimer's meters come
# back to everybody when the lease runs out. No TTL: it is the live timer itself.
DUE = "meter:due"

# Sorted set of the participants of running sessions: member = "{consultation}:{user}", score =
# epoch seconds when that participant was last seen (join or heartbeat). Older than the grace:
# the session ends with `disconnected`. No TTL: members are removed when their session stops.
SEEN = "meter:seen"

# Present while Redis still holds the meters the last sweep rebuilt. Its absence (FLUSHALL, a
# restart without persistence) makes the next meter loop iteration rebuild at once instead of
# waiting for the periodic sweep. No TTL: only a loss of Redis data removes it.
ALIVE = "meter:alive"

# Only one process runs the periodic sweep at a time. 30 s: far longer than a sweep of 20,000
# sessions takes (about a second), short enough that a crashed sweeper is replaced quickly.
SWEEP_LOCK = "meter:sweep-lock"
SWEEP_LOCK_TTL_SECONDS = 30

# Who has joined an accepted consultation, before its session starts (a set of user ids).
# 1 hour: an accepted consultation that nobody joins is expired by its own rules far sooner; the
# TTL only keeps forgotten sets from piling up.
JOINED_TTL_SECONDS = 3600


def joined(consultation_id: uuid.UUID) -> str:
    return f"meter:joined:{consultation_id}"


def seen_member(consultation_id: uuid.UUID, user_id: uuid.UUID) -> str:
    return f"{consultation_id}:{user_id}"


def parse_seen_member(member: str) -> tuple[uuid.UUID, uuid.UUID]:
    consultation, _, user = member.partition(":")
    return uuid.UUID(consultation), uuid.UUID(user)
