"""The worker's composition root: one `WorkerSettings` with every job and cron of the service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from arq import cron as arq_cron  # noqa: F401  # re-exported for job modules' cron lists
from arq.typing import WorkerCoroutine
from arq.worker import Function, func

from astrolive.resources import close_services, open_services
from realtime.server import write_only_emitter
from workers.context import JobContext

log = logging.getLogger(__name__)

# Money jobs must come back quickly after a killed worker: arq re-runs a job whose lock expired,
# and the lock lasts job_timeout + a little, so keep job timeouts well under a minute.
DEFAULT_JOB_TIMEOUT_SECONDS = 30

FUNCTIONS: list[Function] = []


def job(fn: Callable[..., Awaitable[Any]], **options: Any) -> Function:
    """Register a job. Jobs take a typed `JobContext`; arq types the context as a plain dict, so
    this is the one place the two are reconciled."""
    registered = func(cast(WorkerCoroutine, fn), name=fn.__name__, **options)
    FUNCTIONS.append(registered)
    return registered


CRON_JOBS: list[Any] = []


async def startup(ctx: JobContext) -> None:
    settings = ctx["settings"]
    assert settings.redis_url
    ctx["services"] = await open_services(settings, write_only_emitter(settings.redis_url))
    log.info("worker started", extra={"functions": [f.name for f in FUNCTIONS]})


async def shutdown(ctx: JobContext) -> None:
    services = ctx.get("services")
    if services is not None:
        await close_services(services)


async def noop(ctx: JobContext) -> str:
    """A job that does nothing: `astrolive worker --check` and tests use it to see a worker run."""
    return "ok"


job(noop)


class WorkerSettings:
    functions: ClassVar[list[Function]] = FUNCTIONS
    cron_jobs: ClassVar[list[Any]] = CRON_JOBS
    on_startup = startup
    on_shutdown = shutdown
    job_timeout = DEFAULT_JOB_TIMEOUT_SECONDS
    max_tries = 5
    keep_result = 3600
    health_check_interval = 10
    max_jobs = 50
