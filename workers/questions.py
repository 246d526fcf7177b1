"""Question timers (issue 16): a delayed arq job per question, due at its deadline, and a sweep
every minute that expires whatever the jobs missed (a lost queue, a worker down at the time).
Both call `questions.service.expire`, a conditional transition under the question's row lock, so
any number of runs expire a question once and release its hold once."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from arq.worker import Retry

from questions import keys, service
from workers.context import JobContext, services_of


async def expire_question(ctx: JobContext, question_id: str) -> str:
    """A question's deadline: `open → expired` (hold released, user told) unless answered or
    cancelled meanwhile. Early (clocks apart): retried after what is left."""
    services = services_of(ctx)
    qid = uuid.UUID(question_id)
    left = await service.seconds_until_due(services, qid)
    if left is None:
        return "closed"
    if left > 0:
        raise Retry(defer=left + keys.EARLY_MARGIN_SECONDS)
    return "expired" if await service.expire(services, qid) is not None else "closed"


async def questions_sweep(ctx: JobContext) -> int:
    """Every minute: expire overdue open questions. Returns how many."""
    return await service.sweep(services_of(ctx))


JOBS: list[Callable[..., Awaitable[Any]]] = [expire_question]
