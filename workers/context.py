"""The typed context every job receives."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from arq.connections import ArqRedis

from core.services import Services
from core.settings import Settings


class JobContext(TypedDict, total=False):
    redis: ArqRedis  # set by arq
    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
    settings: Settings  # set by `astrolive worker`
    services: Services  # opened in on_startup


def services_of(ctx: JobContext) -> Services:
    return ctx["services"]
