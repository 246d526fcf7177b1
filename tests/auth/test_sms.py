"""SMS providers (console, SNS against moto on loopback) and the `send_otp_sms` job."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import pytest

from auth import crypto
from auth.otp import SEND_OTP_JOB, request_otp
from core.services import Services
from notify import sms
from tests.auth.support import run_jobs, sms_codes
from tests.factories import next_phone
from workers.context import JobContext
from workers.sms import send_otp_sms


async def _moto_sms(moto_url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(moto_url + "/moto-api/data.json") as resp,
    ):
        data = await resp.json(content_type=None)
    messages: list[dict[str, Any]] = data["sns"]["SMS"]
    return messages


def test_job_name_matches_the_enqueued_name() -> None:
    assert send_otp_sms.__name__ == SEND_OTP_JOB


@pytest.mark.parametrize("kind", ["console", "sns"])
async def test_providers_share_one_contract(
    kind: str, moto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notify.sms")
    provider: sms.SmsProvider = (
        sms.ConsoleSms() if kind == "console" else sms.SnsSms("ap-south-1", endpoint_url=moto_url)
    )
    phone = next_phone()
    otp_id = await provider.send_otp(phone, "424242", ttl_seconds=300)
    text_id = await provider.send_text(phone, "Your session starts in 5 minutes")
    assert isinstance(otp_id, str)
    assert isinstance(text_id, str)
    assert otp_id != text_id
    if kind == "console":
        assert sms_codes(caplog, phone) == ["424242"]
        assert f"SMS to {phone}: Your session starts in 5 minutes" in caplog.messages
    else:
        sent = {m["message_id"]: m for m in await _moto_sms(moto_url)}
        assert sent[otp_id]["phone_number"] == phone
        assert "424242" in sent[otp_id]["message"]
        assert "5 min" in sent[otp_id]["message"]
        assert sent[text_id]["message"] == "Your session starts in 5 minutes"
        assert not [r for r in caplog.records if "424242" in r.getMessage()]  # SNS never logs it


async def test_sns_refusal_is_an_sms_error(moto_url: str) -> None:
    provider = sms.SnsSms("ap-south-1", endpoint_url=moto_url)
    with pytest.raises(sms.SmsError):
        await provider.send_text("not-a-number", "hello")


def test_provider_is_chosen_by_settings(settings: Any) -> None:
    assert isinstance(sms.sms_provider(settings), sms.ConsoleSms)
    assert isinstance(
        sms.sms_provider(settings.model_copy(update={"sms_provider": "sns"})), sms.SnsSms
    )
    with pytest.raises(ValueError, match="SMS_PROVIDER"):
        sms.sms_provider(settings.model_copy(update={"sms_provider": "pigeon"}))


async def test_otp_job_sends_through_sns_configured_by_environment(
    services: Services, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", moto_url)
    sms._sns_client.cache_clear()
    services.sms = sms.sms_provider(services.settings.model_copy(update={"sms_provider": "sns"}))
    phone = next_phone()
    try:
        await request_otp(services, phone, "user", "198.51.100.7")
        await run_jobs(services)
    finally:
        sms._sns_client.cache_clear()
    mine = [m for m in await _moto_sms(moto_url) if m["phone_number"] == phone]
    assert len(mine) == 1
    assert "astrolive code" in mine[0]["message"]


async def _ctx(services: Services) -> JobContext:
    return {"services": services, "settings": services.settings}


async def test_otp_job_skips_expired_and_replaced_codes(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notify.sms")
    phone = next_phone()
    sealed = crypto.seal(services.settings, "135790")
    ctx = await _ctx(services)
    assert await send_otp_sms(ctx, phone, sealed, "nonce", time.time() - 1) == "expired"
    # A nonce that is not the phone's current code (replaced, used or burnt): nothing sent.
    assert await send_otp_sms(ctx, phone, sealed, "nonce", time.time() + 60) == "superseded"
    assert sms_codes(caplog, phone) == []


async def test_otp_job_refuses_a_tampered_payload(services: Services, redis_url: str) -> None:
    phone = next_phone()
    await request_otp(services, phone, "user", "198.51.100.8")
    nonce = await services.redis.hget(f"auth:otp:code:{phone}", "id")  # type: ignore[misc]  # redis-py types hget as Awaitable | value
    ctx = await _ctx(services)
    tampered = crypto.seal(services.settings, "111111")[:-4] + "AAAA"
    assert await send_otp_sms(ctx, phone, tampered, nonce, time.time() + 60) == "unreadable"


def test_sealed_codes_round_trip_only_under_the_same_secret(settings: Any) -> None:
    sealed = crypto.seal(settings, "246810")
    assert "246810" not in sealed
    assert crypto.unseal(settings, sealed) == "246810"
    other = settings.model_copy(update={"jwt_secret": "another-secret-" + "q" * 32})
    assert crypto.unseal(other, sealed) is None
