"""The worker's composition root: one `WorkerSettings` with every job and cron of the service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from arq import cron as arq_cron  # also re-exported for job modules' cron lists
from arq.typing import WorkerCoroutine
from arq.worker import Function, func

from astrolive.resources import close_services, open_services
from realtime.server import write_only_emitter
from workers.context import JobContext
from workers.ledger import expire_holds_job, reconcile_ledger_job, rollup_system_balances_job
from workers.metrics import WorkerMetrics, instrument, start_server

log = logging.getLogger(__name__)

# Money jobs must come back quickly after a killed worker: arq re-runs a job whose lock expired,
# and the lock lasts job_timeout + a little, so keep job timeouts well under a minute.
DEFAULT_JOB_TIMEOUT_SECONDS = 30

FUNCTIONS: list[Function] = []


def job(fn: Callable[..., Awaitable[Any]], **options: Any) -> Function:
    """Register a job. Jobs take a typed `JobContext`; arq types the context as a plain dict, so
    this is the one place the two are reconciled."""
    measured = instrument(fn.__name__, fn, _metrics_of)
    registered = func(cast(WorkerCoroutine, measured), name=fn.__name__, **options)
    FUNCTIONS.append(registered)
    return registered


CRON_JOBS: list[Any] = []


def _metrics_of(ctx: Any) -> WorkerMetrics | None:
    metrics: WorkerMetrics | None = ctx.get("metrics")
    return metrics


def _instrument_crons() -> None:
    """Crons are measured like jobs. Done at startup, when every module has added its crons;
    arq's worker holds these same CronJob objects, so it runs the measured coroutine."""
    for cron_job in CRON_JOBS:
        if not getattr(cron_job.coroutine, "__astrolive_measured__", False):
            measured = instrument(cron_job.name, cron_job.coroutine, _metrics_of)
            measured.__astrolive_measured__ = True  # type: ignore[attr-defined]  # a marker on our own wrapper
            cron_job.coroutine = measured


async def startup(ctx: JobContext) -> None:
    settings = ctx["settings"]
    assert settings.redis_url
    ctx["services"] = await open_services(settings, write_only_emitter(settings.redis_url))
    ctx["metrics"] = WorkerMetrics()
    _instrument_crons()
    if settings.worker_metrics_port:
        try:
            ctx["metrics_server"] = await start_server(
                ctx["metrics"], settings.worker_metrics_host, settings.worker_metrics_port
            )
        except OSError as exc:  # a second worker on the same host: it works, unmeasured
            log.warning("worker metrics port unavailable", extra={"error": repr(exc)})
    log.info("worker started", extra={"functions": [f.name for f in FUNCTIONS]})


async def shutdown(ctx: JobContext) -> None:
    runner = ctx.pop("metrics_server", None)
    if runner is not None:
        await runner.cleanup()
    services = ctx.get("services")
    if services is not None:
        await close_services(services)


async def noop(ctx: JobContext) -> str:
    """A job that does nothing: `astrolive worker --check` and tests use it to see a worker run."""
    return "ok"


job(noop)

# Ledger: system balances rolled up and due holds expired every minute; the invariants checked
# every 10 minutes. Breaks log at error. arq locks EVERY job for (the largest job timeout + 10 s),
# so no job here may have a timeout over 50 s, or a killed worker's money jobs would come back
# later than a minute; `test_a_killed_workers_jobs_come_back_within_a_minute` holds that line.
# A ledger too large to check in 45 s should be reconciled by `astrolive reconcile` instead.
CRON_JOBS += [
    arq_cron(cast(WorkerCoroutine, rollup_system_balances_job), second=5),
    arq_cron(cast(WorkerCoroutine, expire_holds_job), second=35),
    arq_cron(
        cast(WorkerCoroutine, reconcile_ledger_job),
        minute=set(range(0, 60, 10)),
        second=50,
        timeout=45,
    ),
]

from workers.sms import send_otp_sms  # noqa: E402  # job modules register after `job` exists

job(send_otp_sms, timeout=20)  # an SMS call that takes longer has failed; the code lives 5 min

from workers.notifications import (  # noqa: E402  # job modules register after `job` exists
    DELIVERY_MAX_TRIES,
    deliver_notification,
    notify_followers_online,
    sweep_undelivered,
)

# Sends run concurrently, each bounded by NOTIFY_SEND_TIMEOUT_SECONDS (10 s): 30 s is plenty.
job(deliver_notification, timeout=30, max_tries=DELIVERY_MAX_TRIES)
job(notify_followers_online, timeout=30)
# Notifications whose enqueue was lost (a crash right after their commit), every minute.
CRON_JOBS.append(arq_cron(cast(WorkerCoroutine, sweep_undelivered), second=20, timeout=30))

from workers.sessions import finalize_consultation, sweep_meters  # noqa: E402  # registered below

# Live sessions: finalize a stopped session (a few short transactions), and rebuild the Redis
# meters from PostgreSQL every minute and once when the worker starts (run_at_startup).
job(finalize_consultation)
CRON_JOBS.append(
    arq_cron(cast(WorkerCoroutine, sweep_meters), second=40, timeout=45, run_at_startup=True)
)

from workers import payments  # noqa: E402  # job modules register after `job` exists

# Payments: each job makes one or two gateway calls (15 s HTTP timeout each) and one short
# transaction; the default 30 s timeout holds them, and a killed one is re-run within a minute.
for _payment_job in payments.JOBS:
    job(_payment_job)


from consultations.keys import SWEEP_EVERY_SECONDS  # noqa: E402  # job modules register after `job` exists
from workers import consultations as consultation_jobs  # noqa: E402  # likewise

# Consultation timers (missed request, booking start, waitlist offer expiry) and their sweep,
# which also takes lost astrologers offline; each pass is a few indexed queries.
for _consultation_job in consultation_jobs.JOBS:
    job(_consultation_job)
CRON_JOBS.append(
    arq_cron(
        cast(WorkerCoroutine, consultation_jobs.consultations_sweep),
        second=set(range(0, 60, SWEEP_EVERY_SECONDS)),
        timeout=30,
        run_at_startup=True,
    )
)


class WorkerSettings:
    functions: ClassVar[list[Function]] = FUNCTIONS
    cron_jobs: ClassVar[list[Any]] = CRON_JOBS
    on_startup = startup
    on_shutdown = shutdown
    job_timeout = DEFAULT_JOB_TIMEOUT_SECONDS
    max_tries = 5
    keep_result = 3600
    # arq writes a heartbeat key this often; `astrolive worker --check` exits 1 when it is stale.
    health_check_interval = 10
    # SIGTERM (a deploy): stop taking jobs and let running ones finish for this long before they
    # are cancelled (a cancelled job is re-run by the next worker). Under the usual 30 s grace.
    job_completion_wait = 20
    max_jobs = 50
