"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from aiohttp import web
from arq.constants import default_queue_name
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import asyncapi, encoding, openapi
from api.framework import ROUTE_SPECS, SERVICES, Call, Router
from api.middleware import METRICS_REGISTRY
from api.models import Output
from core import metrics as core_metrics
from core.errors import NotFound, Unauthorized
from core.services import Services
from live import keys as meter_keys

log = logging.getLogger(__name__)
router = Router("operations")
READY_TIMEOUT_SECONDS = 2.0  # a check slower than this counts as down: the balancer moves on


class Health(Output):
    status: str


class Readiness(Output):
    status: str
    checks: dict[str, str]


@router.get("/healthz", access="public", response=Health)
async def healthz(call: Call) -> Health:
    """GET /healthz

    The process is up and serving."""
    return Health(status="ok")


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means not ready; the reason goes in the answer
        log.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
        return name, "down"
    return name, "ok"


@router.get("/readyz", access="public", response=Readiness, errors={503: "a dependency is down"})
async def readyz(call: Call) -> web.Response:
    """GET /readyz

    200 when PostgreSQL and Redis answer, 503 otherwise."""
    services = call.services
    results = dict(
        await asyncio.gather(
            _check("postgres", services.db.fetchval("SELECT 1")),
            _check("redis", services.redis.ping()),
        )
    )
    ok = all(v == "ok" for v in results.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=results)
    return encoding.json_response(body, status=200 if ok else 503)


async def _cluster_gauges(services: Services, domain: core_metrics.DomainMetrics) -> None:
    """Cluster-wide states kept in Redis: live sessions (the meter's due set) and queued jobs."""
    try:
        async with services.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(meter_keys.DUE)
            pipe.zcard(default_queue_name)
            active, queued = await pipe.execute()
    except Exception:  # Redis down: the scrape still answers, these gauges keep their values
        log.warning("cluster metrics unavailable", exc_info=True)
        return
    domain.active_sessions.set(active)
    domain.jobs_queued.set(queued)


def _metrics_allowed(call: Call) -> None:
    """Issue 14: with METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` (compared in
    constant time) or 401; unset, /metrics is open in development and absent (404) in
    production, so a forgotten token never publishes the figures."""
    settings = call.services.settings
    token = settings.metrics_token
    if token is None:
        if settings.is_production:
            raise NotFound()
        return
    header = call.request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(errors="replace"), token.encode()
    ):
        raise Unauthorized("/metrics needs the METRICS_TOKEN bearer", code="invalid_token")


@router.get(
    "/metrics",
    access="public",
    own_auth=True,
    errors={401: "METRICS_TOKEN is set and the bearer is not it", 404: "production, no token"},
)
async def metrics(call: Call) -> web.Response:
    """GET /metrics

    Prometheus text: request counts and latencies by route, then the domain series of
    core/metrics.py (sockets, rooms, chat, presence, the meter, queued jobs). Needs
    `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set; without it /metrics is
    open in development and answers 404 in production."""
    _metrics_allowed(call)
    domain = core_metrics.domain()
    await _cluster_gauges(call.services, domain)
    await domain.refresh()
    data = generate_latest(call.request.app[METRICS_REGISTRY]) + generate_latest(domain.registry)
    response = web.Response(body=data)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


@router.get("/v1/openapi.json", access="public")
async def openapi_document(call: Call) -> dict[str, Any]:
    """GET /v1/openapi.json

    This API as OpenAPI 3.1, generated from the code."""
    app = call.request.app
    return openapi.build(app[ROUTE_SPECS])


@router.get("/v1/asyncapi.json", access="public")
async def asyncapi_document(call: Call) -> dict[str, Any]:
    """GET /v1/asyncapi.json

    The Socket.IO events the server sends (chat, sessions, presence, signalling), as AsyncAPI
    3.0, generated from their models (core/events.py)."""
    return asyncapi.build()


__all__ = ["SERVICES", "router"]
