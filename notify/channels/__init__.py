"""Delivery channels behind one interface (`Channel`): push (FCM HTTP v1), e-mail (SES), SMS
(SNS through `notify.sms`), and `log` for development. Settings choose the provider of each."""

from __future__ import annotations

from typing import Any

import aiohttp

from core.settings import Settings
from notify.channels.base import (
    Channel,
    ChannelKind,
    Message,
    PermanentSendError,
    SendError,
    SendResult,
    TransientSendError,
)
from notify.channels.fcm import FcmPush, static_token
from notify.channels.log import LogChannel
from notify.channels.sms import SmsChannel, TextSender


def build_channels(
    settings: Settings,
    http: aiohttp.ClientSession,
    *,
    sms: TextSender | None = None,
    ses_client: Any = None,
) -> dict[ChannelKind, Channel]:
    """The channel of each kind that the settings name (PUSH_PROVIDER, EMAIL_PROVIDER, and the
    given SMS sender). Refuses an FCM or SES configuration that cannot work."""
    channels: dict[ChannelKind, Channel] = {}
    if settings.push_provider == "fcm":
        if not settings.fcm_project_id or not settings.fcm_access_token:
            raise ValueError("PUSH_PROVIDER=fcm needs FCM_PROJECT_ID and FCM_ACCESS_TOKEN")
        channels["push"] = FcmPush(
            http,
            project_id=settings.fcm_project_id,
            token=static_token(settings.fcm_access_token),
            endpoint=settings.fcm_endpoint,
            timeout_seconds=settings.notify_send_timeout_seconds,
        )
    elif settings.push_provider == "log":
        channels["push"] = LogChannel("push")
    else:
        raise ValueError(f"PUSH_PROVIDER={settings.push_provider!r}: use log or fcm")
    if settings.email_provider == "ses":
        from notify.channels.aws import SesEmail

        channels["email"] = SesEmail(ses_client or _ses_client(settings), settings.email_from)
    elif settings.email_provider == "log":
        channels["email"] = LogChannel("email")
    else:
        raise ValueError(f"EMAIL_PROVIDER={settings.email_provider!r}: use log or ses")
    channels["sms"] = SmsChannel(sms) if sms is not None else LogChannel("sms")
    return channels


def _ses_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    timeout = settings.notify_send_timeout_seconds
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    return boto3.client("sesv2", region_name=settings.aws_region, config=config)


__all__ = [
    "Channel",
    "ChannelKind",
    "FcmPush",
    "LogChannel",
    "Message",
    "PermanentSendError",
    "SendError",
    "SendResult",
    "SmsChannel",
    "TransientSendError",
    "build_channels",
]
