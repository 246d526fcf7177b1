"""The Redis clock of live sessions: due meters, stop requests and participants' presence.

Every time here is the Redis server's (`TIME`, read inside the scripts): one clock for every web
process, so skew between processes changes nothing. That single clock is what makes the stop win
over the charge in every interleaving:

- a batch fixes its `now` when it claims meters (inside the claim script) and only ever charges
  minutes due by that `now`;
- it reads stop requests and disconnects AFTER the claim, so any it does not see was registered
  later, at a Redis time >= `now` >= the start of every minute it charges;
- an end, a disconnect or a join is stamped by the script that registers it.

So a minute whose start is at or after a registered stop is never planned. (If Redis itself loses
its data mid-session the stamp can be lost; `live.meter` then refunds and reports any minute
charged past the stop it finally learns -- see `Refunded`.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from live import keys

# KEYS: due set, alive flag. ARGV: max count, lease seconds. Takes the due members (score <= TIME)
# by re-scoring them to TIME + lease (a dead claimer's meters come back after the lease), so two
# processes never claim one member at once. Returns TIME, whether Redis still has our data, ids.
CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local lease = now + tonumber(ARGV[2])
for i = 1, #due do
    redis.call('ZADD', KEYS[1], lease, due[i])
end
return {tostring(now), redis.call('EXISTS', KEYS[2]), due}
"""

# KEYS: state hash, due set. ARGV: consultation id, "reason|party". Registers a stop at TIME
# unless an earlier one is registered; returns the stop that holds ("t|reason|party"). The meter
# is made due at once so that a loop stops it even if the caller dies before stopping it itself.
STOP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local old = redis.call('HGET', KEYS[1], 'stop')
if old then
    return old
end
local value = tostring(now) .. '|' .. ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'stop', value)
    redis.call('ZADD', KEYS[2], 'LT', now, ARGV[1])
end
return value
"""

# KEYS: state hash, seen set, gone set, sockets set, process key. ARGV: member, user id, state
# ttl, socket ("process|sid"), process ttl ms. A socket of the participant joined the
# consultation's room: it is one of their joined sockets, its process is alive, the participant
# is present now and not gone. Before the session starts the hash only exists. Returns TIME.
JOIN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[3]))
redis.call('SET', KEYS[5], '1', 'PX', tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'seen:' .. ARGV[2], tostring(now))
redis.call('HDEL', KEYS[1], 'rebuilt:' .. ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if redis.call('HEXISTS', KEYS[1], 'user') == 1 then
    redis.call('ZADD', KEYS[2], now, ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
end
return tostring(now)
"""

# KEYS: state hash, gone set, joined set, due set, sockets set. ARGV: member, user id, grace,
# consultation id, socket, process key prefix. A joined socket of the participant left (a
# disconnect on any process, a leave, a kick). If none of their other joined sockets is on a
# live process (a dead process's sockets never leave by themselves), they are gone from TIME:
# the disconnect deadline is TIME + grace and the meter is made due then (ZADD LT: never later
# than it already is). Before the session starts such a participant no longer counts as joined.
# Returns TIME, or '' when the participant still has a joined socket.
LEAVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SREM', KEYS[5], ARGV[5])
for _, other in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    local proc = string.match(other, '^(.*)|')
    if proc and redis.call('EXISTS', ARGV[6] .. proc) == 1 then
        return ''
    end
    redis.call('SREM', KEYS[5], other)
end
if redis.call('HEXISTS', KEYS[1], 'user') == 1 then
    redis.call('ZADD', KEYS[2], 'NX', now, ARGV[1])
    redis.call('ZADD', KEYS[4], 'LT', now + tonumber(ARGV[3]), ARGV[4])
else
    redis.call('SREM', KEYS[3], ARGV[2])
end
return tostring(now)
"""

# KEYS: seen set, process key, then one state hash per participant. ARGV: process ttl ms, then
# member, user id, member, user id... Heartbeat of a process's joined sockets: the process is
# alive, and the participants are still present at TIME (only running sessions).
BEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[1]))
for i = 3, #KEYS do
    local m, u = ARGV[2 * i - 4], ARGV[2 * i - 3]
    if redis.call('HEXISTS', KEYS[i], 'user') == 1 then
        redis.call('HSET', KEYS[i], 'seen:' .. u, tostring(now))
        redis.call('HDEL', KEYS[i], 'rebuilt:' .. u)
        redis.call('ZADD', KEYS[1], now, m)
    end
end
return tostring(now)
"""

# KEYS: state hash, seen set, gone set, user's sockets, astrologer's sockets. ARGV: user id,
# astrologer id, both members, state ttl, start time. The session started: the hash learns its
# participants, both present at the start; anyone with no joined socket left is gone from then.
START_LUA = """
local now = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'astrologer', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
for i = 1, 2 do
    local u, m = ARGV[i], ARGV[i + 2]
    redis.call('HSET', KEYS[1], 'seen:' .. u, tostring(now))
    redis.call('ZADD', KEYS[2], now, m)
    if redis.call('SCARD', KEYS[3 + i]) == 0 then
        redis.call('ZADD', KEYS[3], 'NX', now, m)
    end
end
return tostring(now)
"""


@dataclass(frozen=True)
class Party:
    """What Redis knows of one participant of a running session."""

    seen: float | None  # last presence (join, heartbeat; after a rebuild: PostgreSQL's)
    life: float | None  # last sign of life of the process holding their socket
    gone: float | None  # when their last socket left
    rebuilt: bool  # presence only from PostgreSQL since a Redis loss, not confirmed yet


@dataclass(frozen=True)
class SessionState:
    """What Redis knows of one running session, read after a claim."""

    stop: tuple[float, str, str] | None  # registered stop: (time, reason, party)
    parties: dict[uuid.UUID, Party]


def _f(value: object) -> float | None:
    if value is None or value == b"" or value == "":
        return None
    return float(value.decode() if isinstance(value, bytes) else str(value))


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisClock:
    """The scripts of live sessions, loaded once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM_LUA)
        self._stop = redis.register_script(STOP_LUA)
        self._join = redis.register_script(JOIN_LUA)
        self._leave = redis.register_script(LEAVE_LUA)
        self._beat = redis.register_script(BEAT_LUA)
        self._start = redis.register_script(START_LUA)

    async def now(self) -> float:
        """Redis server time, epoch seconds."""
        secs, micros = await self.redis.time()
        return int(secs) + int(micros) / 1_000_000

    async def claim(self, count: int, lease: float) -> tuple[float, bool, list[uuid.UUID]]:
        """(Redis now, Redis still has the meters, the consultation ids claimed)."""
        now, alive, members = await self._claim(keys=[keys.DUE, keys.ALIVE], args=[count, lease])
        return float(_s(now)), bool(alive), [uuid.UUID(_s(m)) for m in members]

    async def register_stop(
        self, consultation_id: uuid.UUID, reason: str, party: str
    ) -> tuple[float, str, str]:
        """Register a stop now; the earliest registered one holds. (time, reason, party)."""
        value = await self._stop(
            keys=[keys.state(consultation_id), keys.DUE],
            args=[str(consultation_id), f"{reason}|{party}"],
        )
        at, held_reason, held_party = _s(value).split("|")
        return float(at), held_reason, held_party

    async def joined(
        self, consultation_id: uuid.UUID, user_id: uuid.UUID, socket: str, process_ttl: float
    ) -> float:
        """`socket` ("process|sid") of the participant joined; returns the Redis time."""
        value = await self._join(
            keys=[
                keys.state(consultation_id),
                keys.SEEN,
                keys.GONE,
                keys.sockets(consultation_id, user_id),
                keys.process(socket.partition("|")[0]),
            ],
            args=[
                keys.member(consultation_id, user_id),
                str(user_id),
                keys.STATE_TTL_SECONDS,
                socket,
                int(process_ttl * 1000),
            ],
        )
        return float(_s(value))

    async def left(
        self, consultation_id: uuid.UUID, user_id: uuid.UUID, socket: str, grace: float
    ) -> float | None:
        """A joined socket left; the time the participant is gone from, if it was their last
        one on a live process."""
        value = await self._leave(
            keys=[
                keys.state(consultation_id),
                keys.GONE,
                keys.joined(consultation_id),
                keys.DUE,
                keys.sockets(consultation_id, user_id),
            ],
            args=[
                keys.member(consultation_id, user_id),
                str(user_id),
                grace,
                str(consultation_id),
                socket,
                keys.PROCESS_PREFIX,
            ],
        )
        return _f(value)

    async def beat(
        self, process: str, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], process_ttl: float
    ) -> None:
        """Heartbeat of a process and of the (consultation, participant) pairs with a joined
        socket in it."""
        args: list[Any] = [int(process_ttl * 1000)]
        for cid, uid in pairs:
            args += [keys.member(cid, uid), str(uid)]
        await self._beat(
            keys=[keys.SEEN, keys.process(process), *[keys.state(c) for c, _ in pairs]],
            args=args,
        )

    async def started(
        self,
        consultation_id: uuid.UUID,
        user_id: uuid.UUID,
        astrologer_id: uuid.UUID,
        at: float,
    ) -> None:
        """The session started at `at` (Redis time): both participants present from then."""
        await self._start(
            keys=[
                keys.state(consultation_id),
                keys.SEEN,
                keys.GONE,
                keys.sockets(consultation_id, user_id),
                keys.sockets(consultation_id, astrologer_id),
            ],
            args=[
                str(user_id),
                str(astrologer_id),
                keys.member(consultation_id, user_id),
                keys.member(consultation_id, astrologer_id),
                keys.STATE_TTL_SECONDS,
                repr(at),
            ],
        )

    async def states(
        self, sessions: Sequence[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]
    ) -> dict[uuid.UUID, SessionState]:
        """Stop requests and presence of (consultation, user, astrologer) sessions."""
        if not sessions:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid, user, astro in sessions:
                fields = ["stop", f"seen:{user}", f"seen:{astro}"]
                pipe.hmget(keys.state(cid), [*fields, f"rebuilt:{user}", f"rebuilt:{astro}"])
            members = []
            for cid, user, astro in sessions:
                members += [keys.member(cid, user), keys.member(cid, astro)]
            pipe.zmscore(keys.SEEN, members)
            pipe.zmscore(keys.GONE, members)
            results = await pipe.execute()
        lives, gones = results[-2], results[-1]
        out: dict[uuid.UUID, SessionState] = {}
        for i, (cid, user, astro) in enumerate(sessions):
            stop_raw, seen_u, seen_a, reb_u, reb_a = results[i]
            stop = None
            if stop_raw is not None:
                at, reason, party = _s(stop_raw).split("|")
                stop = (float(at), reason, party)
            out[cid] = SessionState(
                stop=stop,
                parties={
                    user: Party(_f(seen_u), lives[2 * i], gones[2 * i], reb_u is not None),
                    astro: Party(_f(seen_a), lives[2 * i + 1], gones[2 * i + 1], reb_a is not None),
                },
            )
        return out
