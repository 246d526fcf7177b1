"""How many pre-call echo peers (`rtc:echo`, realtime/echo.py) may run: each one is a server-side
WebRTC peer decoding and re-encoding media, the most expensive thing a client can ask of a web
process. At most RTC_ECHO_MAX_PER_PROCESS at once in a process (counted in memory: it is that
process's CPU) and RTC_ECHO_MAX_PER_USER per account across all processes (counted in Redis, so
many connections to many processes do not multiply it). Kept apart from echo.py so checking a slot
does not import aiortc.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from core.errors import RateLimited
from core.services import Services
from realtime import keys

log = logging.getLogger(__name__)

# Per user: the count of running echo peers, `rt:echo:user:{user_id}`. Its TTL outlives the longest
# echo (ECHO_MAX_SECONDS) with a margin, so a crashed process's slots free themselves.
USER_KEY_PREFIX = "rt:echo:user:"
USER_KEY_TTL_SECONDS = int(keys.ECHO_MAX_SECONDS) + 30

# KEYS: the user's counter. ARGV: the maximum, the TTL. 1 when a slot was taken, else 0.
_TAKE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Never below zero, even when the key expired meanwhile.
_GIVE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 1 then redis.call('DEL', KEYS[1]) else redis.call('DECR', KEYS[1]) end
return 0
"""


@dataclass
class EchoSlot:
    """One running echo peer's place; `release()` is safe to call more than once."""

    slots: EchoSlots
    services: Services
    key: str
    released: bool = field(default=False)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.slots.running -= 1
        try:
            await self.services.redis.register_script(_GIVE)(keys=[self.key])
        except RedisError:
            log.warning("echo slot not returned: redis unavailable (it expires by itself)")


class EchoSlots:
    """The echo peers of this process."""

    def __init__(self) -> None:
        self.running = 0

    async def acquire(self, services: Services, user_id: uuid.UUID) -> EchoSlot:
        """A slot for one echo peer of `user_id`, else 429 `rate_limited`."""
        settings = services.settings
        wait = int(keys.ECHO_MAX_SECONDS)
        if self.running >= settings.rtc_echo_max_per_process:
            raise RateLimited(wait, "the echo test is busy on this server; try again shortly")
        self.running += 1  # reserved before awaiting, so concurrent calls cannot overshoot
        key = f"{USER_KEY_PREFIX}{user_id}"
        try:
            taken = await services.redis.register_script(_TAKE)(
                keys=[key], args=[settings.rtc_echo_max_per_user, USER_KEY_TTL_SECONDS]
            )
        except BaseException:
            self.running -= 1
            raise
        if not int(taken):
            self.running -= 1
            raise RateLimited(wait, "an echo test of this account is already running")
        return EchoSlot(self, services, key)
