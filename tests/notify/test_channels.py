"""Each channel behind the one `Channel` interface, against real servers on loopback: SES and
SNS in moto's server, FCM in the imitation; and the provider choice by settings."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from moto.backends import get_backend
from moto.core.models import DEFAULT_ACCOUNT_ID

from core.settings import Settings
from db import embedded
from notify import templates
from notify.channels import (
    Channel,
    FcmPush,
    LogChannel,
    Message,
    PermanentSendError,
    SmsChannel,
    TransientSendError,
    build_channels,
)
from notify.channels.aws import SesEmail
from notify.channels.fcm import static_token
from notify.sms import SnsSms
from tests.conftest import make_settings
from tests.notify.support import FakeFcm
from tests.notify.test_templates import DEVANAGARI

SENDER = "no-reply@astrolive.example"


def _message(event: str, locale: str, data: dict[str, Any], target: str) -> Message:
    text = templates.render(event, locale, data)
    return Message(uuid.uuid4(), event, text.locale, text.title, text.body, target)


def _ses(moto_url: str) -> Any:
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=moto_url)
    client.create_email_identity(EmailIdentity=SENDER)
    return client


@pytest.mark.parametrize("locale", ["en", "hi"])
async def test_email_goes_through_ses_in_the_users_language(aws_env: str, locale: str) -> None:
    channel = SesEmail(_ses(aws_env), SENDER)
    to = f"asha+{uuid.uuid4().hex[:6]}@example.com"
    message = _message("recharge_succeeded", locale, {"amount": 50000, "balance": 62500}, to)
    result = await channel.send(message)
    assert result.provider_id
    sent = get_backend("ses")[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    [mail] = [m for m in sent if to in m.destinations["ToAddresses"]]
    assert (mail.subject, mail.body, mail.source) == (message.title, message.body, SENDER)
    assert bool(DEVANAGARI.search(mail.body)) == (locale == "hi")


async def test_ses_refusal_is_permanent(aws_env: str) -> None:
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=aws_env)
    channel = SesEmail(client, "unverified@nowhere.example")  # moto refuses unverified senders
    with pytest.raises(PermanentSendError, match="ses 400"):
        await channel.send(_message("astrologer_verified", "en", {}, "a@example.com"))


async def test_ses_unreachable_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    from botocore.config import Config

    closed = f"http://127.0.0.1:{embedded.free_port()}"
    client = boto3.client(
        "sesv2",
        region_name="us-east-1",
        endpoint_url=closed,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(TransientSendError, match="ses unreachable"):
        await SesEmail(client, SENDER).send(_message("astrologer_verified", "en", {}, "a@b.co"))


@pytest.mark.parametrize("locale", ["en", "hi"])
async def test_otp_sms_goes_through_sns_with_the_sign_in_provider(
    aws_env: str, locale: str
) -> None:
    """The SMS channel reuses `notify.sms` (the auth flow's SNS provider) with our template."""
    channel = SmsChannel(SnsSms("us-east-1", endpoint_url=aws_env))
    phone = "+9198" + str(uuid.uuid4().int)[:8]
    message = _message("otp", locale, {"code": "482913", "minutes": 5}, phone)
    result = await channel.send(message)
    sms = get_backend("sns")[DEFAULT_ACCOUNT_ID]["us-east-1"].sms_messages
    assert sms[str(result.provider_id)] == (phone, message.body)
    assert "482913" in message.body
    assert bool(DEVANAGARI.search(message.body)) == (locale == "hi")


async def test_sms_to_a_bad_number_is_permanent(aws_env: str) -> None:
    channel = SmsChannel(SnsSms("us-east-1", endpoint_url=aws_env))
    with pytest.raises(PermanentSendError, match="sns 400"):
        await channel.send(_message("otp", "en", {"code": "1", "minutes": 5}, "not-a-phone"))


async def test_fcm_unreachable_is_transient() -> None:
    async with aiohttp.ClientSession() as http:
        channel = FcmPush(
            http,
            project_id="p",
            token=static_token("t"),
            endpoint=f"http://127.0.0.1:{embedded.free_port()}",
            timeout_seconds=1,
        )
        with pytest.raises(TransientSendError, match="fcm unreachable"):
            await channel.send(_message("astrologer_verified", "en", {}, "tok"))


async def test_every_channel_satisfies_the_same_contract(
    aws_env: str, fcm: FakeFcm, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        channels: list[Channel] = [
            FcmPush(http, project_id="p", token=static_token("t"), endpoint=fcm.url),
            SesEmail(_ses(aws_env), SENDER),
            SmsChannel(SnsSms("us-east-1", endpoint_url=aws_env)),
            LogChannel("push"),
            LogChannel("email"),
            LogChannel("sms"),
        ]
        targets = {"push": "tok-1", "email": "x@example.com", "sms": "+919812345678"}
        for channel in channels:
            assert isinstance(channel, Channel)
            assert channel.kind in targets
            assert channel.name
            message = _message("refund_issued", "hi", {"amount": 100}, targets[channel.kind])
            result = await channel.send(message)
            assert result.provider_id


async def test_settings_choose_the_providers(
    database_url: str, redis_url: str, tmp_path: Path, aws_env: str
) -> None:
    def settings(**kw: Any) -> Settings:
        return make_settings(database_url, redis_url, tmp_path, **kw)

    async with aiohttp.ClientSession() as http:
        dev = build_channels(settings(), http)
        assert {k: c.name for k, c in dev.items()} == {"push": "log", "email": "log", "sms": "log"}
        prod = build_channels(
            settings(
                push_provider="fcm",
                fcm_project_id="p",
                fcm_access_token="t",
                email_provider="ses",
            ),
            http,
            sms=SnsSms("us-east-1"),
        )
        assert {k: c.name for k, c in prod.items()} == {"push": "fcm", "email": "ses", "sms": "sns"}
        with pytest.raises(ValueError, match="FCM_PROJECT_ID"):
            build_channels(settings(push_provider="fcm"), http)
        with pytest.raises(ValueError, match="PUSH_PROVIDER"):
            build_channels(settings(push_provider="apns"), http)
        with pytest.raises(ValueError, match="EMAIL_PROVIDER"):
            build_channels(settings(email_provider="smtp"), http)


async def test_fcm_endpoint_may_be_the_base_or_the_whole_send_url() -> None:
    async with aiohttp.ClientSession() as http:
        base = FcmPush(http, project_id="p1", token=static_token("t"), endpoint="https://x.test/")
        assert base.url == "https://x.test/v1/projects/p1/messages:send"
        full = "https://x.test/v1/projects/p2/messages:send"
        assert FcmPush(http, project_id="p1", token=static_token("t"), endpoint=full).url == full
        default = FcmPush(http, project_id="p1", token=static_token("t"))
        assert default.url == "https://fcm.googleapis.com/v1/projects/p1/messages:send"
