"""Helpers of the sign-in tests: run queued jobs with a real arq worker, read the SMS outbox (the
console provider's log lines), sign in through the API."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from arq.worker import Worker

from astrolive.worker import FUNCTIONS
from core.services import Services

TEST_PHONE = "+919000000001"  # AUTH_TEST_PHONES in tests/conftest.py: fixed code 123456
TEST_CODE = "123456"


async def run_jobs(services: Services) -> None:
    """Run every queued job once with a real arq worker in burst mode."""
    worker = Worker(
        functions=FUNCTIONS,
        redis_pool=services.arq,
        burst=True,
        handle_signals=False,
        poll_delay=0.01,
        ctx={"services": services, "settings": services.settings},
        max_tries=1,
    )
    # Not `worker.close()`: it would close the services' shared arq pool.
    await worker.main()
    await asyncio.gather(*worker.tasks.values())


def sms_codes(caplog: pytest.LogCaptureFixture, phone: str) -> list[str]:
    """The codes the console SMS provider 'sent' to `phone`, oldest first."""
    pattern = re.compile(rf"^OTP for {re.escape(phone)}: (\d{{6}})$")
    found = []
    for record in caplog.records:
        match = pattern.match(record.getMessage())
        if match:
            found.append(match.group(1))
    return found


async def request_code(
    client: TestClient[Any, Any],
    services: Services,
    caplog: pytest.LogCaptureFixture,
    phone: str,
    **body: Any,
) -> str:
    """Ask for a code over HTTP, let the worker send it, and read it from the SMS log."""
    caplog.set_level(logging.INFO, logger="notify.sms")
    resp = await client.post("/v1/auth/otp", json={"phone": phone, **body})
    assert resp.status == 202, await resp.text()
    await run_jobs(services)
    codes = sms_codes(caplog, phone)
    assert codes, "no SMS was sent"
    return codes[-1]


async def sign_in(
    client: TestClient[Any, Any], phone: str = TEST_PHONE, code: str = TEST_CODE, **body: Any
) -> dict[str, Any]:
    """Sign in a test phone (fixed code); returns the verify answer."""
    resp = await client.post("/v1/auth/otp", json={"phone": phone, **body})
    assert resp.status == 202, await resp.text()
    resp = await client.post("/v1/auth/verify", json={"phone": phone, "code": code})
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}
