"""Observability of the worker process: job counts by outcome, durations and running jobs, and
notification deliveries by channel, served as Prometheus text by the worker itself on
`WORKER_METRICS_HOST:WORKER_METRICS_PORT` (`/metrics`; 0 turns it off). Each worker process
serves its own numbers; Prometheus scrapes every worker and sums.

Every job registered with `astrolive.worker.job` is wrapped by `instrument`, so a new job is
measured without doing anything.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from arq import Retry
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "astrolive_jobs_total",
            "Jobs run, by function and outcome (success, retry, failure, cancelled).",
            ["function", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "astrolive_job_duration_seconds",
            "How long each job run took, by function.",
            ["function"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.running = Gauge(
            "astrolive_jobs_running",
            "Jobs running now, by function.",
            ["function"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "astrolive_notification_deliveries_total",
            "Notification sends, by channel and outcome (sent, retry, failed, dropped_target).",
            ["channel", "outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def instrument(
    name: str, fn: Callable[..., Awaitable[Any]], metrics_of: Callable[[Any], WorkerMetrics | None]
) -> Callable[..., Awaitable[Any]]:
    """`fn` counted and timed under `name` in the metrics that `metrics_of(ctx)` returns."""

    @functools.wraps(fn)
    async def measured(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        metrics = metrics_of(ctx)
        if metrics is None:
            return await fn(ctx, *args, **kwargs)
        outcome = "failure"
        started = time.perf_counter()
        metrics.running.labels(name).inc()
        try:
            result = await fn(ctx, *args, **kwargs)
            outcome = "success"
            return result
        except Retry:
            outcome = "retry"
            raise
        except BaseException as exc:
            outcome = "failure" if isinstance(exc, Exception) else "cancelled"
            raise
        finally:
            metrics.running.labels(name).dec()
            metrics.jobs.labels(name, outcome).inc()
            metrics.duration.labels(name).observe(time.perf_counter() - started)

    return measured


async def start_server(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner:
    """Serve `/metrics` on host:port (port 0: a free one)."""

    async def handle(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("worker metrics", extra={"addresses": [str(a) for a in runner.addresses]})
    return runner
