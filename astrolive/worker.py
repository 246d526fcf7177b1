"""The worker's composition root: one `WorkerSettings` with every job and cron of the service.

The lists below are the whole background workload, read top to bottom: every job module is
imported at the top and registered here, once. A new job: write it in `workers/`, add one line to
`FUNCTIONS` (or `CRON_JOBS`) with its timeout and the reason for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from arq import cron as arq_cron
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Function, func

from astrolive.resources import close_services, open_services
from consultations.keys import SWEEP_EVERY_SECONDS
from realtime.server import write_only_emitter
from workers import bookings as booking_jobs  # issue 17
from workers import consultations as consultation_jobs
from workers import payments
from workers import questions as question_jobs  # issue 16
from workers.context import JobContext
from workers.ledger import expire_holds_job, reconcile_ledger_job, rollup_system_balances_job
from workers.metrics import WorkerMetrics, instrument, start_server
from workers.notifications import (
    DELIVERY_MAX_TRIES,
    deliver_notification,
    notify_followers_online,
    sweep_undelivered,
)
from workers.sessions import expire_unstarted, finalize_consultation, sweep_meters
from workers.sms import send_otp_sms

log = logging.getLogger(__name__)

# Money jobs must come back quickly after a killed worker: arq re-runs a job whose lock expired,
# and the lock lasts job_timeout + a little, so keep job timeouts well under a minute.
DEFAULT_JOB_TIMEOUT_SECONDS = 30


def _metrics_of(ctx: Any) -> WorkerMetrics | None:
    metrics: WorkerMetrics | None = ctx.get("metrics")
    return metrics


def job(fn: Callable[..., Awaitable[Any]], **options: Any) -> Function:
    """A job, counted and timed in the worker's metrics. Jobs take a typed `JobContext`; arq
    types the context as a plain dict, so this is the one place the two are reconciled."""
    measured = instrument(fn.__name__, fn, _metrics_of)
    return func(cast(WorkerCoroutine, measured), name=fn.__name__, **options)


def cron(fn: Callable[..., Awaitable[Any]], **options: Any) -> CronJob:
    """A cron job, measured like a job under arq's name for it (`cron:<function>`)."""
    measured = instrument(f"cron:{fn.__qualname__}", fn, _metrics_of)
    return arq_cron(cast(WorkerCoroutine, measured), **options)


async def noop(ctx: JobContext) -> str:
    """A job that does nothing: `astrolive worker --check` and tests use it to see a worker run."""
    return "ok"


FUNCTIONS: list[Function] = [
    job(noop),
    # An SMS call that takes longer has failed; the code lives 5 minutes.
    job(send_otp_sms, timeout=20),
    # Sends run concurrently, each bounded by NOTIFY_SEND_TIMEOUT_SECONDS (10 s): 30 s is plenty.
    job(deliver_notification, timeout=30, max_tries=DELIVERY_MAX_TRIES),
    job(notify_followers_online, timeout=30),
    # Live sessions: finalize a stopped session (a few short transactions).
    job(finalize_consultation),
    # Live sessions: the join timeout (issue 12), one conditional transition.
    job(expire_unstarted),
    # Payments: each job makes one or two gateway calls (15 s HTTP timeout each) and one short
    # transaction; the default 30 s timeout holds them, and a killed one is re-run within a minute.
    *(job(payment_job) for payment_job in payments.JOBS),
    # Consultation timers: missed request, booking start, waitlist offer expiry.
    *(job(consultation_job) for consultation_job in consultation_jobs.JOBS),
    # Questions (issue 16): the expiry at a question's deadline (one short transaction).
    *(job(question_job) for question_job in question_jobs.JOBS),
    # Bookings (issue 17): a shortfall payment's expiry, a reminder (one short transaction each).
    *(job(booking_job) for booking_job in booking_jobs.JOBS),
]

# arq locks EVERY job for (the largest job timeout + 10 s), so no job here may have a timeout over
# 50 s, or a killed worker's money jobs would come back later than a minute;
# `test_a_killed_workers_jobs_come_back_within_a_minute` holds that line.
CRON_JOBS: list[CronJob] = [
    # Ledger: system balances rolled up and due holds expired every minute.
    cron(rollup_system_balances_job, second=5),
    cron(expire_holds_job, second=35),
    # The ledger's invariants every 10 minutes; breaks log at error. A ledger too large to check
    # in 45 s should be reconciled by `astrolive reconcile` instead.
    cron(reconcile_ledger_job, minute=set(range(0, 60, 10)), second=50, timeout=45),
    # Payments stuck after their jobs' retries (issue 13): pending recharges, card refunds and
    # approved payouts, every minute; each item is one or two gateway calls (15 s timeout), at
    # most PAYMENT_SWEEP_BATCH per kind, and what does not fit waits for the next minute.
    cron(payments.sweep_payments, second=25, timeout=45),
    # Notifications whose enqueue was lost (a crash right after their commit), every minute.
    cron(sweep_undelivered, second=20, timeout=30),
    # Rebuild the Redis meters from PostgreSQL every minute and once when the worker starts.
    cron(sweep_meters, second=40, timeout=45, run_at_startup=True),
    # Consultation timers' sweep, which also takes lost astrologers offline; each pass is a few
    # indexed queries.
    cron(
        consultation_jobs.consultations_sweep,
        second=set(range(0, 60, SWEEP_EVERY_SECONDS)),
        timeout=30,
        run_at_startup=True,
    ),
    # Questions whose expiry job was lost, every minute (issue 16).
    cron(question_jobs.questions_sweep, second=25, timeout=30, run_at_startup=True),
    # Bookings whose expiry or reminder job was lost, every minute (issue 17).
    cron(booking_jobs.bookings_sweep, second=45, timeout=30, run_at_startup=True),
]


async def startup(ctx: JobContext) -> None:
    settings = ctx["settings"]
    assert settings.redis_url
    ctx["services"] = await open_services(settings, write_only_emitter(settings.redis_url))
    ctx["metrics"] = WorkerMetrics()
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


class WorkerSettings:
    functions: ClassVar[list[Function]] = FUNCTIONS
    cron_jobs: ClassVar[list[CronJob]] = CRON_JOBS
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
