"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import openapi
from api.framework import ROUTE_SPECS, SERVICES, Call, Router
from api.middleware import METRICS_REGISTRY
from api.models import Output

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
    return web.json_response(body.model_dump(), status=200 if ok else 503)


@router.get("/metrics", access="public")
async def metrics(call: Call) -> web.Response:
    """GET /metrics

    Prometheus text: request counts and latencies by route, plus the service's own metrics."""
    data = generate_latest(call.request.app[METRICS_REGISTRY])
    response = web.Response(body=data)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


@router.get("/v1/openapi.json", access="public")
async def openapi_document(call: Call) -> dict[str, Any]:
    """GET /v1/openapi.json

    This API as OpenAPI 3.1, generated from the code."""
    app = call.request.app
    return openapi.build(app[ROUTE_SPECS])


__all__ = ["SERVICES", "router"]
