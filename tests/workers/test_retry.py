"""The retry policy: exponential backoff with jitter, and which errors are worth a retry."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from arq import Retry

from notify.channels import PermanentSendError, TransientSendError
from workers.context import JobContext
from workers.retry import backoff_seconds, is_transient, retry_later, retrying


def test_backoff_doubles_is_capped_and_jittered() -> None:
    lows = [
        backoff_seconds(t, base_seconds=2, max_seconds=60, rng=lambda: 0.0) for t in range(1, 9)
    ]
    highs = [
        backoff_seconds(t, base_seconds=2, max_seconds=60, rng=lambda: 1.0) for t in range(1, 9)
    ]
    assert highs == [2, 4, 8, 16, 32, 60, 60, 60]
    assert lows == [h / 2 for h in highs]
    waits = {backoff_seconds(3) for _ in range(50)}
    assert len(waits) > 10
    assert all(4 <= w <= 8 for w in waits)


def test_retry_later_honours_a_providers_retry_after() -> None:
    ctx: JobContext = {"job_try": 1}
    assert (retry_later(ctx, base_seconds=1, at_least=30).defer_score or 0) == 30_000
    assert (retry_later(ctx, base_seconds=1).defer_score or 0) <= 1000


def test_what_is_transient() -> None:
    assert is_transient(TimeoutError())
    assert is_transient(aiohttp.ClientConnectionError())
    assert is_transient(ConnectionResetError())
    assert is_transient(TransientSendError("fcm 503"))
    assert not is_transient(PermanentSendError("bad token"))
    assert not is_transient(ValueError("bug"))
    assert not is_transient(KeyError("bug"))


async def test_retrying_turns_transient_errors_into_retry_and_lets_others_fail() -> None:
    calls: list[str] = []

    @retrying(base_seconds=0.5, max_seconds=1)
    async def job(ctx: JobContext, what: str) -> str:
        calls.append(what)
        if what == "network":
            raise ConnectionRefusedError("refused")
        if what == "slow":
            await asyncio.wait_for(asyncio.sleep(1), 0.001)
        if what == "bug":
            raise ValueError("bug")
        return "ok"

    ctx: JobContext = {"job_try": 2}
    assert await job(ctx, "fine") == "ok"
    with pytest.raises(Retry) as caught:
        await job(ctx, "network")
    assert 500 <= (caught.value.defer_score or 0) <= 1000
    with pytest.raises(Retry):
        await job(ctx, "slow")
    with pytest.raises(ValueError, match="bug"):
        await job(ctx, "bug")
    assert job.__name__ == "job"
