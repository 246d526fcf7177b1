"""Every Redis key of sign-in, with its TTL and the reason for each number.

Redis holds only what can be rebuilt (DESIGN.md): pending OTP codes (as keyed hashes, never the
code itself), send counters, and caches of what PostgreSQL says about a login. Losing all of it
costs at most a fresh OTP request; revocation stays correct because the database is the truth.
"""

from __future__ import annotations

import uuid

# --- OTP ------------------------------------------------------------------------------------------
# A pending code: hash {h: HMAC(code), n: wrong attempts, id: nonce, role: role of a new account,
# exp: epoch seconds}. TTL = Settings.otp_ttl_seconds (5 minutes: long enough to read an SMS that
# arrives late, short enough that guessing 10^6 codes at 5 tries per code is hopeless).
OTP_PREFIX = "auth:otp:code:"
# Resend cooldown: TTL = Settings.otp_resend_seconds (30 s, the usual "resend in 0:30" timer).
OTP_COOLDOWN_PREFIX = "auth:otp:cooldown:"
# Hourly send counters, a fixed window that starts at the first send (TTL 3600 s, the "per hour"
# of the limits). Per phone stops SMS bombing of one victim; per IP stops SMS pumping through many
# numbers (premium-rate fraud).
OTP_PHONE_COUNT_PREFIX = "auth:otp:sent:phone:"
OTP_IP_COUNT_PREFIX = "auth:otp:sent:ip:"
OTP_WINDOW_SECONDS = 3600  # the "per hour" of OTP_MAX_PER_PHONE_HOUR / OTP_MAX_PER_IP_HOUR
# Wrong codes in the hour (issue 14), a fixed window from the first wrong code, TTL
# OTP_WINDOW_SECONDS. Per phone across codes: a new code does not reset it, so a fixed test-phone
# code cannot be walked through 5 guesses at a time. Per client IP on verify: one network cannot
# guess across many phones. A correct code clears the phone's counter.
OTP_WRONG_PHONE_PREFIX = "auth:otp:wrong:phone:"
OTP_WRONG_IP_PREFIX = "auth:otp:wrong:ip:"

# --- Login state cache (the authenticator's fast path) --------------------------------------------
# "ok" or "revoked" for an auth session (a login). Written "revoked" on logout, reuse detection
# and block, right after the database commit; "ok" is cached after a database check.
SESSION_STATE_PREFIX = "auth:session:"
# How long an "ok" is believed without asking PostgreSQL again. It only matters when a revocation
# could not reach Redis (Redis down at that moment): then a revoked login works for at most this.
SESSION_OK_TTL_SECONDS = 60
# A "revoked" mark needs to outlive only the access tokens of that login, which expire after
# Settings.access_token_ttl_seconds; this margin covers clock skew between processes.
SESSION_REVOKED_MARGIN_SECONDS = 60

# Same for tokens without a login (Cognito mode, or an access token issued without a session):
# "ok" / "blocked" per user.
USER_STATE_PREFIX = "auth:user:"
USER_OK_TTL_SECONDS = 60  # as SESSION_OK_TTL_SECONDS
# Cognito ID tokens live up to 24 h (the pool's maximum), so a block must be remembered that long.
USER_BLOCKED_TTL_SECONDS = 24 * 3600

# --- Cognito --------------------------------------------------------------------------------------
# The pool's JWKS document, shared by every process. Cognito rotates keys rarely and publishes the
# new key before using it, so an hour is safe; an unknown `kid` triggers an early refetch.
COGNITO_JWKS = "auth:cognito:jwks"
COGNITO_JWKS_TTL_SECONDS = 3600
# At most one refetch per this many seconds, so tokens with made-up `kid`s cannot make us hammer
# the JWKS endpoint.
COGNITO_JWKS_REFETCH_LOCK = "auth:cognito:jwks:refetch"
COGNITO_JWKS_REFETCH_SECONDS = 30
# Cognito `sub` -> "user_id role" of the local user; 60 s like the other "ok" caches, deleted when
# the user is blocked.
COGNITO_USER_PREFIX = "auth:cognito:user:"
COGNITO_USER_TTL_SECONDS = 60


def otp(phone: str) -> str:
    return OTP_PREFIX + phone


def otp_cooldown(phone: str) -> str:
    return OTP_COOLDOWN_PREFIX + phone


def otp_phone_count(phone: str) -> str:
    return OTP_PHONE_COUNT_PREFIX + phone


def otp_ip_count(ip: str) -> str:
    return OTP_IP_COUNT_PREFIX + ip


def otp_wrong_phone(phone: str) -> str:
    return OTP_WRONG_PHONE_PREFIX + phone


def otp_wrong_ip(ip: str) -> str:
    return OTP_WRONG_IP_PREFIX + ip


def session_state(session_id: uuid.UUID) -> str:
    return f"{SESSION_STATE_PREFIX}{session_id}"


def user_state(user_id: uuid.UUID) -> str:
    return f"{USER_STATE_PREFIX}{user_id}"


def cognito_user(sub: str) -> str:
    return COGNITO_USER_PREFIX + sub


# Issue 12 (helper A): revocations are published here after their commit, `{"sessions": [...]}`
# (logout, block) or `{"user": id}` (a block of a user whose tokens carry no login), so that
# every web process drops the sockets of that login or user at once (realtime/namespace.py).
# Pub/sub: nothing is stored; a process that misses a message still drops the socket at its
# next periodic check (SOCKET_AUTH_CHECK_SECONDS).
AUTH_REVOKED_CHANNEL = "auth:revoked"
