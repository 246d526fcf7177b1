"""The typed context every job receives."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from aiohttp import web
from arq.connections import ArqRedis

from core.services import Services
from core.settings import Settings

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics


class JobContext(TypedDict, total=False):
    redis: ArqRedis  # set by arq
    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
    settings: Settings  # set by `astrolive worker`
    services: Services  # opened in on_startup
    metrics: WorkerMetrics  # made in on_startup; every job is counted and timed in it
    metrics_server: web.AppRunner  # serves `metrics` on WORKER_METRICS_PORT; closed on shutdown


def services_of(ctx: JobContext) -> Services:
    return ctx["services"]
