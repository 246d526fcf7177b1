"""Retry policy of jobs. arq retries a job only when it raises `arq.Retry`; any other exception
fails it for good. This module decides which failures are worth another try (provider 5xx,
timeouts, dropped connections) and when: exponential backoff with jitter.

    @retrying(base_seconds=2, max_seconds=300)
    async def settle_payment(ctx: JobContext, payment_id: str) -> None: ...

or, inside a job that must do its own bookkeeping first, `raise retry_later(ctx, ...)`.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import aiohttp
import asyncpg
from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.context import JobContext

P = ParamSpec("P")
R = TypeVar("R")

# Failures of the infrastructure itself, always worth retrying: the next try may find the
# connection back. Errors that carry `transient = True` (e.g. a provider's 5xx) are too.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
    aiohttp.ClientConnectionError,
    aiohttp.ServerTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    RedisConnectionError,
    RedisTimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_EXCEPTIONS):
        return True
    return bool(getattr(exc, "transient", False))


def backoff_seconds(
    job_try: int,
    *,
    base_seconds: float = 2.0,
    max_seconds: float = 300.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait before try `job_try + 1`: base·2^(try-1), capped, with "equal jitter" (between
    half and all of it) so that jobs failing together do not come back together."""
    exp = min(max_seconds, base_seconds * 2.0 ** max(0, job_try - 1))
    return float(exp / 2 + rng() * exp / 2)


def retry_later(
    ctx: JobContext,
    *,
    base_seconds: float = 2.0,
    max_seconds: float = 300.0,
    at_least: float | None = None,
) -> Retry:
    """The `Retry` to raise now: backoff for this try, never sooner than `at_least` (a provider's
    Retry-After)."""
    job_try = int(ctx.get("job_try", 1))
    wait = backoff_seconds(job_try, base_seconds=base_seconds, max_seconds=max_seconds)
    if at_least is not None:
        wait = max(wait, at_least)
    return Retry(defer=wait)


def retrying(
    *, base_seconds: float = 2.0, max_seconds: float = 300.0
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Wrap a job so transient errors become `Retry(defer=backoff)`; others fail the job."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except Retry:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                ctx: Any = args[0] if args else {}
                raise retry_later(ctx, base_seconds=base_seconds, max_seconds=max_seconds) from exc

        return wrapper

    return decorate
