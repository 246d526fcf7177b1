"""Rate limits of costly REST routes, per user and per client IP, counted in Redis.

A route declares its limit next to its access (api/framework.py):

    @router.post("/v1/consultations", access="user", rate_limit=Limit("consultation", 10, 60))

Each limit is a fixed window per key (`per_user` calls per `window_seconds` for one account,
`per_ip` for one client address), checked and counted for every key in one Lua script, so
concurrent calls cannot slip past it and a refused call counts nowhere. Past a limit the call is
`429 rate_limited` with `Retry-After` (the seconds left in the window). RATE_LIMIT_EXEMPT_IPS skip
the per-IP count only (the test suite and load tests run from loopback); per-user limits always
apply. The figures are in the OpenAPI document as `x-rate-limit` on each route.

Redis failure policy: fail open. A limit exists to stop abuse, not to guard money (the ledger and
the database constraints do that), so an unreachable Redis lets the call through and logs a warning
rather than taking the API down with it.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import RateLimited
from core.settings import Settings

log = logging.getLogger(__name__)

# Keys: `rl:{limit name}:u:{user id}` and `rl:{limit name}:ip:{address}`, each an integer counter
# whose TTL is the rest of its window (set when the window's first call is counted).
KEY_PREFIX = "rl:"

# KEYS: the counters. ARGV: the limit of each key, in order, then the window in ms.
# Returns 0 when counted, else the ms until the first full counter's window ends.
_HIT = """
local window = tonumber(ARGV[#ARGV])
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  if n >= tonumber(ARGV[i]) then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then return ttl end
    return window
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, window) end
end
return 0
"""


@dataclass(frozen=True)
class Limit:
    """`per_user` calls per account and `per_ip` per client address in `window_seconds`;
    None: that side is not limited. `name` is the counter: routes sharing a name share it."""

    name: str
    per_user: int | None
    window_seconds: int
    per_ip: int | None = None

    def openapi(self) -> dict[str, Any]:
        """The `x-rate-limit` extension of the route's OpenAPI operation."""
        doc: dict[str, Any] = {"bucket": self.name, "window_seconds": self.window_seconds}
        if self.per_user is not None:
            doc["per_user"] = self.per_user
        if self.per_ip is not None:
            doc["per_ip"] = self.per_ip
        return doc

    def describe(self) -> str:
        parts = []
        if self.per_user is not None:
            parts.append(f"{self.per_user} per user")
        if self.per_ip is not None:
            parts.append(f"{self.per_ip} per client IP")
        return f"at most {' and '.join(parts)} per {self.window_seconds} s"


@lru_cache(maxsize=64)
def _networks(
    exempt: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in exempt)


def ip_exempt(settings: Settings, ip: str) -> bool:
    """True when `ip` is in RATE_LIMIT_EXEMPT_IPS (addresses or CIDR ranges)."""
    if not settings.rate_limit_exempt_ips:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in _networks(tuple(settings.rate_limit_exempt_ips)))


async def hit(
    redis: Redis,
    settings: Settings,
    limit: Limit,
    *,
    user_id: uuid.UUID | None,
    ip: str | None,
) -> None:
    """Count one call against `limit`; RateLimited (429) when a counter is full."""
    if not settings.rate_limits_enabled:
        return
    keys: list[str] = []
    maxima: list[int] = []
    if limit.per_user is not None and user_id is not None:
        keys.append(f"{KEY_PREFIX}{limit.name}:u:{user_id}")
        maxima.append(limit.per_user)
    if limit.per_ip is not None and ip and not ip_exempt(settings, ip):
        keys.append(f"{KEY_PREFIX}{limit.name}:ip:{ip}")
        maxima.append(limit.per_ip)
    if not keys:
        return
    try:
        wait_ms = int(
            await redis.register_script(_HIT)(
                keys=keys, args=[*maxima, limit.window_seconds * 1000]
            )
        )
    except (RedisError, OSError):
        log.warning("rate limit not checked: redis unavailable", extra={"limit": limit.name})
        return
    if wait_ms > 0:
        log.info("rate limited", extra={"limit": limit.name})
        raise RateLimited(math.ceil(wait_ms / 1000), f"too many requests; {limit.describe()}")


# --- The limits of the API's costly routes --------------------------------------------------------
# Per user: far above what one person does by hand, low enough that a script cannot flood
# astrologers, gateways or storage. Per IP: a few people behind one NAT (an office, a carrier's
# CGNAT) times the per-user figure. One-minute windows so an honest burst recovers quickly.

# POST /v1/consultations: a person asks a few astrologers in a row when the first ones are busy;
# each request rings an astrologer (socket event + push), so spam here harasses them.
CONSULTATION_REQUEST = Limit("consultation_request", per_user=10, window_seconds=60, per_ip=60)
# POST /v1/wallet/recharges, /v1/payments/razorpay/verify: each one calls the payment gateway.
RECHARGE = Limit("recharge", per_user=10, window_seconds=60, per_ip=60)
RECHARGE_VERIFY = Limit("recharge_verify", per_user=20, window_seconds=60, per_ip=120)
# Presigned uploads (avatar, documents, chat attachments): each one is storage we pay for.
UPLOAD = Limit("upload", per_user=20, window_seconds=60, per_ip=120)
# Reviews: one per completed consultation anyway; this stops scripted review bombing attempts.
REVIEW = Limit("review", per_user=10, window_seconds=60, per_ip=60)
# Complaints and support tickets are read by people; tickets' messages are a conversation.
TICKET = Limit("ticket", per_user=5, window_seconds=60, per_ip=30)
TICKET_MESSAGE = Limit("ticket_message", per_user=20, window_seconds=60, per_ip=120)
# Written questions: each one holds money and notifies an astrologer.
QUESTION = Limit("question", per_user=10, window_seconds=60, per_ip=60)
# Tips and payout requests move money.
TIP = Limit("tip", per_user=10, window_seconds=60, per_ip=60)
PAYOUT = Limit("payout", per_user=10, window_seconds=60, per_ip=60)
