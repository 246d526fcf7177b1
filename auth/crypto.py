"""The secrets of sign-in: OTP codes and their keyed hashes, sealed codes for the SMS job, refresh
tokens and their hashes.

Every key here is derived from the JWT signing secret with HMAC and a purpose label, so one secret
(`JWT_SECRET`, generated and kept in `.data` in development) covers all of them and no two purposes
share a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.settings import Settings

OTP_DIGITS = 6  # the length every SMS-OTP app uses; 10^6 codes against 5 tries per code
REFRESH_TOKEN_BYTES = 32  # 256 bits: unguessable, so a plain SHA-256 is enough to store it


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from the signing secret."""
    secret = settings.jwt_signing_secret().encode()
    return hmac.new(secret, b"astrolive:" + purpose.encode(), hashlib.sha256).digest()


def new_otp_code() -> str:
    """A uniformly random code from the OS CSPRNG."""
    return f"{secrets.randbelow(10**OTP_DIGITS):0{OTP_DIGITS}d}"


def otp_hash(settings: Settings, phone: str, code: str) -> str:
    """What Redis keeps instead of the code: HMAC(key, phone:code). Without the key, a Redis dump
    does not reveal codes (a bare hash of a 6-digit code would fall to a million guesses)."""
    key = derived_key(settings, "otp")
    return hmac.new(key, f"{phone}:{code}".encode(), hashlib.sha256).hexdigest()


def seal(settings: Settings, text: str) -> str:
    """AES-GCM encrypt `text` for a job argument: arq keeps job arguments (and results) in Redis,
    where an OTP code must never sit in clear."""
    nonce = secrets.token_bytes(12)
    box = AESGCM(derived_key(settings, "job-seal")).encrypt(nonce, text.encode(), None)
    return base64.urlsafe_b64encode(nonce + box).decode()


def unseal(settings: Settings, sealed: str) -> str | None:
    """The text `seal` made, or None when it was tampered with or sealed under another secret."""
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return AESGCM(derived_key(settings, "job-seal")).decrypt(raw[:12], raw[12:], None).decode()
    except (InvalidTag, ValueError):
        return None


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def refresh_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
