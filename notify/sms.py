"""SMS: one small interface and two providers, built once by the composition root
(`Services.sms`); the arq job that sends sign-in codes is `workers.sms.send_otp_sms`.

    provider = sms_provider(settings)          # SMS_PROVIDER: console | sns
    await provider.send_otp("+919812345678", "123456", ttl_seconds=300)
    await provider.send_text("+919812345678", "Your session starts in 5 minutes")

- `console` (development): logs `OTP for <phone>: <code>`, the only place a code is ever logged,
  and `SMS to <phone>: <text>` for other messages. Refused in production (core.settings).
- `sns`: Amazon SNS `Publish` to a phone number (transactional SMS) through boto3, in a thread so
  the event loop never waits on AWS. boto3's standard configuration applies: AWS_REGION via
  Settings.aws_region, credentials from the environment/instance role, and AWS_ENDPOINT_URL_SNS
  (or AWS_ENDPOINT_URL) to point it elsewhere (tests use moto's server on loopback).

Both return the provider's message id. A provider raises `SmsError` when the message was refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any, Protocol

from core.settings import Settings

log = logging.getLogger(__name__)

OTP_TEMPLATE = "{code} is your astrolive code. It expires in {minutes} min. Never share it."
SNS_SENDER_ID = "ASTROLV"  # up to 11 alphanumeric characters, shown where carriers allow it


class SmsError(Exception):
    """The provider refused or failed to accept the message."""


class SmsProvider(Protocol):
    """What sends an SMS. Implementations must be safe to call concurrently."""

    name: str

    async def send_otp(self, phone: str, code: str, *, ttl_seconds: int) -> str:
        """Send a sign-in code to an E.164 number; returns the provider's message id."""
        ...

    async def send_text(self, phone: str, text: str) -> str:
        """Send any other short transactional message; returns the provider's message id."""
        ...


def otp_message(code: str, ttl_seconds: int) -> str:
    return OTP_TEMPLATE.format(code=code, minutes=max(1, ttl_seconds // 60))


class ConsoleSms:
    """Development: the log is the phone."""

    name = "console"

    async def send_otp(self, phone: str, code: str, *, ttl_seconds: int) -> str:
        log.info("OTP for %s: %s", phone, code)
        return f"console-{uuid.uuid4().hex}"

    async def send_text(self, phone: str, text: str) -> str:
        log.info("SMS to %s: %s", phone, text)
        return f"console-{uuid.uuid4().hex}"


@functools.lru_cache(maxsize=8)
def _sns_client(region: str, endpoint_url: str | None) -> Any:
    """One boto3 client per configuration: creating one costs tens of milliseconds, and boto3
    clients are thread-safe."""
    import boto3

    return boto3.client("sns", region_name=region, endpoint_url=endpoint_url)


class SnsSms:
    """Amazon SNS direct-to-phone SMS."""

    name = "sns"

    def __init__(self, region: str, *, endpoint_url: str | None = None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url

    def _publish(self, phone: str, text: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = _sns_client(self.region, self.endpoint_url).publish(
                PhoneNumber=phone,
                Message=text,
                MessageAttributes={
                    # Transactional: delivered with priority even to DND numbers, as OTPs must be.
                    "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
                    "AWS.SNS.SMS.SenderID": {"DataType": "String", "StringValue": SNS_SENDER_ID},
                },
            )
        except (BotoCoreError, ClientError) as exc:
            raise SmsError(f"SNS refused the message: {exc}") from exc
        return str(answer["MessageId"])

    async def send_otp(self, phone: str, code: str, *, ttl_seconds: int) -> str:
        return await asyncio.to_thread(self._publish, phone, otp_message(code, ttl_seconds))

    async def send_text(self, phone: str, text: str) -> str:
        return await asyncio.to_thread(self._publish, phone, text)


def sms_provider(settings: Settings) -> SmsProvider:
    """The provider SMS_PROVIDER names."""
    if settings.sms_provider == "console":
        return ConsoleSms()
    if settings.sms_provider == "sns":
        return SnsSms(settings.aws_region)
    raise ValueError(f"SMS_PROVIDER={settings.sms_provider!r}: use console or sns")
