"""The arq job that sends sign-in codes, through the process's SMS provider (`Services.sms`,
`notify.sms`: console in development, Amazon SNS in production)."""

from __future__ import annotations

import logging
import time

from auth import crypto
from auth.otp import otp_still_pending
from workers.context import JobContext, services_of

log = logging.getLogger(__name__)


async def send_otp_sms(
    ctx: JobContext, phone: str, sealed_code: str, nonce: str, expires_at: float
) -> str:
    """arq job `auth.otp.SEND_OTP_JOB`: send one OTP code. Skips a code that has expired, was
    used, burnt or replaced by a newer one, so a late or repeated run (arq delivers at least
    once) never sends a dead code."""
    services = services_of(ctx)
    settings = services.settings
    remaining = int(expires_at - time.time())
    if remaining <= 0:
        log.info("otp expired before sending; skipped")
        return "expired"
    if not await otp_still_pending(services, phone, nonce):
        log.info("otp no longer pending; skipped")
        return "superseded"
    code = crypto.unseal(settings, sealed_code)
    if code is None:
        log.warning("otp job could not be unsealed (secret changed?); skipped")
        return "unreadable"
    return await services.sms.send_otp(phone, code, ttl_seconds=remaining)
