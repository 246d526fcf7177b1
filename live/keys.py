"""Every Redis key of live sessions, with its TTL and the reason for each number.

Redis only times the sessions and keeps who is present; PostgreSQL (`meters`, `meter_events`,
`session_presence`, the ledger) is the truth, and `live.meter.sweep` rebuilds all of these from
it after Redis lost them.

All times stored here are Redis server times (`TIME`), never a web process's clock: the one
clock that every process reads is what makes "the stop wins over the charge" hold whatever the
skew between processes (live/clock.py).
"""

from __future__ import annotations

import uuid

# Sorted set of running meters: member = consultation id, score = when its next minute is due (or
# when the planner wants to look at it again). A claimer re-scores what it took to now + lease,
# so a dead claimer's meters come back to everybody when the lease runs out. No TTL: it is the
# live timer itself.
DUE = "meter:due"

# Sorted set of the participants of running sessions: member = "{consultation}:{user}", score =
# the last sign of life of the process that holds their socket (heartbeat, join, or the rebuild
# after a Redis loss). Older than HEARTBEAT x LIVE_SOCKET_MISSES: that process died, the
# participant is gone since their last presence. No TTL: members go when their session stops.
SEEN = "meter:seen"

# Sorted set of participants whose last socket left the consultation: member as SEEN, score = when
# (Redis time). gone + DISCONNECT_GRACE_SECONDS is their session's disconnect deadline. A rejoin
# removes the member. No TTL: members go when their session stops.
GONE = "meter:gone"

# Present while Redis still holds the meters the last sweep rebuilt. Its absence (FLUSHALL, a
# restart without persistence) makes the next meter loop iteration rebuild at once instead of
# waiting for the periodic sweep. No TTL: only a loss of Redis data removes it.
ALIVE = "meter:alive"

# Only one process runs the periodic sweep at a time. 30 s: far longer than a sweep of 20,000
# sessions takes (about a second), short enough that a crashed sweeper is replaced quickly.
SWEEP_LOCK = "meter:sweep-lock"
SWEEP_LOCK_TTL_SECONDS = 30

# Who has joined an accepted consultation, before its session starts (a set of user ids).
# 1 hour: an accepted consultation that nobody starts is `missed` after JOIN_TIMEOUT_SECONDS; the
# TTL only keeps forgotten sets from piling up.
JOINED_TTL_SECONDS = 3600

# A heartbeat-less participant is gone after this many missed heartbeats (the process holding
# their socket died without telling anyone). Three: one late heartbeat is not a death.
HEARTBEAT_MISSES = 3

# Every how many heartbeats a process writes its participants' last presence to PostgreSQL
# (`session_presence`), which bounds a rebuild after a Redis loss. Three heartbeats (30 s at the
# default 10 s): coarse on purpose, it is only a bound; disconnects are written at once.
PRESENCE_WRITE_EVERY_BEATS = 3

# The whole Redis state of one running session: a hash with `user`, `astrologer` (ids), `stop`
# (the earliest stop registered by an end: "time|reason|party"), `seen:{user}` (last presence:
# join, heartbeat), `rebuilt:{user}` (presence only from PostgreSQL since a Redis loss, until the
# participant's process beats). Deleted when the session stops; 1 day TTL only against leaks.
STATE_TTL_SECONDS = 86_400

# A process that holds joined sockets: `meter:proc:{host:pid}` exists while it beats (TTL
# HEARTBEAT x HEARTBEAT_MISSES). A socket of a dead process never leaves by itself; this key is how
# a leave elsewhere knows not to count it.
PROCESS_PREFIX = "meter:proc:"


def process(process_id: str) -> str:
    return f"{PROCESS_PREFIX}{process_id}"


def sockets(consultation_id: uuid.UUID | str, user_id: uuid.UUID | str) -> str:
    """The participant's joined sockets, all processes: a set of "{process}|{sid}" (TTL as the
    state's)."""
    return f"meter:socks:{consultation_id}:{user_id}"


def state(consultation_id: uuid.UUID | str) -> str:
    return f"meter:s:{consultation_id}"


def joined(consultation_id: uuid.UUID | str) -> str:
    return f"meter:joined:{consultation_id}"


def member(consultation_id: uuid.UUID | str, user_id: uuid.UUID | str) -> str:
    return f"{consultation_id}:{user_id}"


def parse_member(value: str) -> tuple[uuid.UUID, uuid.UUID]:
    consultation, _, user = value.partition(":")
    return uuid.UUID(consultation), uuid.UUID(user)
