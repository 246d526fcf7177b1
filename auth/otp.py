"""Mobile OTP sign-in: issue a code (limits, cooldown, SMS through a job) and verify it.

- Codes come from the OS CSPRNG and are kept in Redis only as HMAC(key, phone:code), with the
  code's TTL (OTP_TTL_SECONDS, 5 min). The clear code exists only in this process's memory, sealed
  (AES-GCM) in the SMS job's arguments, and in the SMS itself; only the `console` SMS provider, for
  development, ever logs it.
- Limits, checked and counted in one Lua script so concurrent requests cannot slip past them: a
  resend cooldown per phone, at most OTP_MAX_PER_PHONE_HOUR codes per phone and
  OTP_MAX_PER_IP_HOUR per client IP (the peer, or X-Forwarded-For from TRUSTED_PROXIES). A refused
  request is 429 with Retry-After and does not count.
- OTP_MAX_ATTEMPTS (5) wrong codes burn the code: the next attempt is `otp_expired`.
- Guessing is bounded across codes (issue 14): OTP_MAX_WRONG_PER_PHONE_HOUR wrong codes per phone
  in an hour, whatever the number of codes asked for, and OTP_MAX_WRONG_PER_IP_HOUR per client IP
  (RATE_LIMIT_EXEMPT_IPS skip only the IP one). Past either, verify is 429 `rate_limited` before
  the code is even compared, so the right code does not sign in either until the hour is over.
- AUTH_TEST_PHONES have fixed codes: no SMS is sent and they skip the cooldown and hourly send
  limits (those exist to stop SMS pumping), but wrong codes count exactly as for every phone.
  A test phone still asks for a code first, like every phone.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from auth import crypto, keys
from auth.sessions import SignIn, open_login_txn
from core.errors import AppError, Forbidden, RateLimited, Unauthorized
from core.phones import normalise_phone
from core.ratelimit import ip_exempt
from core.services import Services
from core.settings import Settings
from core.tokens import Role
from db import identity

log = logging.getLogger(__name__)

SEND_OTP_JOB = "send_otp_sms"

# KEYS: code, cooldown, phone counter, ip counter.
# ARGV: hash, nonce, role, expires_at, ttl, cooldown s, max per phone, max per ip, window s,
# counted (0 for test phones).
_ISSUE = """
if ARGV[10] == '1' then
  local cd = redis.call('PTTL', KEYS[2])
  if cd > 0 then return {'cooldown', cd} end
  local n = tonumber(redis.call('GET', KEYS[3]) or '0')
  if n >= tonumber(ARGV[7]) then return {'phone', redis.call('PTTL', KEYS[3])} end
  local m = tonumber(redis.call('GET', KEYS[4]) or '0')
  if m >= tonumber(ARGV[8]) then return {'ip', redis.call('PTTL', KEYS[4])} end
  if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[2], '1', 'EX', ARGV[6]) end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[9]) end
  if redis.call('INCR', KEYS[4]) == 1 then redis.call('EXPIRE', KEYS[4], ARGV[9]) end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'id', ARGV[2], 'role', ARGV[3], 'exp', ARGV[4], 'n', 0)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {'ok', 0}
"""

# KEYS: code, wrong per phone, wrong per ip.
# ARGV: hash of the presented code, max attempts, max wrong per phone, max wrong per ip (0: the
# client is exempt from the per-IP limit), window s.
# The comparison is of HMAC outputs: timing tells nothing useful without the key.
_CHECK = """
local wp = tonumber(redis.call('GET', KEYS[2]) or '0')
if wp >= tonumber(ARGV[3]) then return {'phone', tostring(redis.call('PTTL', KEYS[2]))} end
local ip_max = tonumber(ARGV[4])
if ip_max > 0 then
  local wi = tonumber(redis.call('GET', KEYS[3]) or '0')
  if wi >= ip_max then return {'ip', tostring(redis.call('PTTL', KEYS[3]))} end
end
local rec = redis.call('HMGET', KEYS[1], 'h', 'role')
if not rec[1] then return {'expired', ''} end
if rec[1] == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'ok', rec[2]}
end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if ip_max > 0 and redis.call('INCR', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
return {'invalid', tostring(tonumber(ARGV[2]) - n)}
"""

_GUESS_MESSAGES = {
    "phone": "too many wrong codes for this phone number; try again later",
    "ip": "too many wrong codes from this network; try again later",
}

_LIMIT_MESSAGES = {
    "cooldown": "wait before asking for another code",
    "phone": "too many codes for this phone number; try again later",
    "ip": "too many codes requested from this network; try again later",
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class OtpIssued:
    phone: str
    expires_in: int
    resend_after: int


def test_code_for(settings: Settings, phone: str) -> str | None:
    """The fixed code of an AUTH_TEST_PHONES number (entries may use any notation), else None."""
    for raw, code in settings.auth_test_phones.items():
        try:
            if normalise_phone(raw, settings.default_phone_region) == phone:
                return code
        except AppError:
            log.warning("AUTH_TEST_PHONES has an invalid phone number; ignored")
    return None


def _ensure_local_mode(settings: Settings) -> None:
    if settings.auth_mode == "cognito":
        raise AppError(
            "sign-in goes through Amazon Cognito on this server",
            code="auth_mode_cognito",
            status=409,
        )


async def request_otp(services: Services, raw_phone: str, role: Role, client_ip: str) -> OtpIssued:
    """Issue a code for `raw_phone` and queue its SMS; 422 bad phone, 429 over a limit."""
    settings = services.settings
    _ensure_local_mode(settings)
    phone = normalise_phone(raw_phone, settings.default_phone_region)
    fixed = test_code_for(settings, phone)
    code = fixed or crypto.new_otp_code()
    nonce = secrets.token_hex(8)
    ttl = settings.otp_ttl_seconds
    expires_at = time.time() + ttl
    result: list[Any] = await services.redis.register_script(_ISSUE)(
        keys=[
            keys.otp(phone),
            keys.otp_cooldown(phone),
            keys.otp_phone_count(phone),
            keys.otp_ip_count(client_ip),
        ],
        args=[
            crypto.otp_hash(settings, phone, code),
            nonce,
            role,
            f"{expires_at:.3f}",
            ttl,
            settings.otp_resend_seconds,
            settings.otp_max_per_phone_hour,
            settings.otp_max_per_ip_hour,
            keys.OTP_WINDOW_SECONDS,
            "0" if fixed else "1",
        ],
    )
    outcome, pttl = str(result[0]), int(result[1])
    if outcome != "ok":
        seconds = math.ceil(pttl / 1000) if pttl > 0 else keys.OTP_WINDOW_SECONDS
        log.info("otp refused", extra={"limit": outcome})
        raise RateLimited(seconds, _LIMIT_MESSAGES[outcome])
    if fixed is None:
        # The request never waits for the SMS provider: a worker sends it. `_expires` drops the
        # job if no worker picked it up while the code was still valid.
        await services.arq.enqueue_job(
            SEND_OTP_JOB,
            phone,
            crypto.seal(settings, code),
            nonce,
            expires_at,
            _job_id=f"otp:{nonce}",
            _expires=ttl,
        )
    return OtpIssued(phone, ttl, 0 if fixed else settings.otp_resend_seconds)


async def otp_still_pending(services: Services, phone: str, nonce: str) -> bool:
    """True while the code with this nonce is the phone's current one and not yet used, burnt or
    expired: the SMS job sends nothing otherwise."""
    current = await services.redis.hget(keys.otp(phone), "id")  # type: ignore[misc]  # redis-py types hget as Awaitable | value
    return bool(current == nonce)


async def verify_otp(
    services: Services,
    raw_phone: str,
    code: str,
    *,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> SignIn:
    """Check the code; on success register the phone if new and open a login."""
    settings = services.settings
    _ensure_local_mode(settings)
    phone = normalise_phone(raw_phone, settings.default_phone_region)
    ip = client_ip or "unknown"
    ip_max = 0 if ip_exempt(settings, ip) else settings.otp_max_wrong_per_ip_hour
    result: list[Any] = await services.redis.register_script(_CHECK)(
        keys=[keys.otp(phone), keys.otp_wrong_phone(phone), keys.otp_wrong_ip(ip)],
        args=[
            crypto.otp_hash(settings, phone, code),
            settings.otp_max_attempts,
            settings.otp_max_wrong_per_phone_hour,
            ip_max,
            keys.OTP_WINDOW_SECONDS,
        ],
    )
    outcome, extra = _text(result[0]), _text(result[1])
    if outcome in _GUESS_MESSAGES:
        pttl = int(extra)
        log.info("otp verify refused", extra={"limit": outcome})
        seconds = math.ceil(pttl / 1000) if pttl > 0 else keys.OTP_WINDOW_SECONDS
        raise RateLimited(seconds, _GUESS_MESSAGES[outcome])
    if outcome == "expired":
        raise Unauthorized("the code expired or was used up; ask for a new one", code="otp_expired")
    if outcome == "invalid":
        left = int(extra)
        raise Unauthorized(
            "wrong code", code="invalid_otp", details={"attempts_left": max(0, left)}
        )
    role: Role = "astrologer" if extra == "astrologer" else "user"
    async with services.db.acquire() as conn, conn.transaction():
        user, created = await identity.upsert_user(conn, phone, role)
        if user.status != "active":
            raise Forbidden("this account is blocked", code="account_blocked")
        tokens = await open_login_txn(conn, settings, user, ip=client_ip, user_agent=user_agent)
    return SignIn(tokens, user, created)
