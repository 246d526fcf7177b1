"""Middlewares every route goes through, outermost first: request id and access log, metrics,
security headers and CORS, body size cap, and the one place errors become the contract's shape."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from api import encoding
from core.errors import AppError, MethodNotAllowed, NotFound, PayloadTooLarge, ValidationFailed
from core.logging import request_id_var
from core.settings import Settings

log = logging.getLogger("astrolive.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Routes that read their (large) body as a stream with their own cap, not through max_body_bytes.
STREAMED_BODY_PATHS = ("/v1/files",)

METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
# The longest request line aiohttp's parser takes (its default is 8190 bytes). Past it the parser
# answers a text/plain 400 before any middleware, outside the contract's error shape. A query of
# the longest string any route accepts (2048 characters, each up to 12 bytes percent-encoded
# UTF-8) fits in 32 KiB, so such a request reaches validation and gets its JSON 422.
MAX_REQUEST_LINE_BYTES = 32 * 1024


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


HTTP_METRICS: web.AppKey[HttpMetrics] = web.AppKey("http_metrics")


def error_response(err: AppError, request_id: str | None) -> web.Response:
    body = err.to_dict()
    if err.status >= 500 and request_id:
        body.setdefault("details", {})["request_id"] = request_id
    # The same encoder as every success body (api/encoding.py): compact UTF-8, no \u escapes.
    return encoding.json_response({"error": body}, status=err.status, headers=err.headers)


def client_ip(request: web.Request, trusted_proxies: list[str]) -> str:
    """The caller's address: the peer, or the right-most untrusted X-Forwarded-For hop when the
    peer is a trusted proxy."""
    peer = request.remote or "0.0.0.0"  # noqa: S104  # a placeholder address, never bound
    if not trusted_proxies:
        return peer
    nets = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in nets)

    if not trusted(peer):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            # Only an address counts (it keys per-IP limits); garbage means "the proxy itself".
            return hop if _is_ip(hop) else peer
    return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _route_label(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    if route is None or route.resource is None or isinstance(info.http_exception, Exception):
        return "unmatched"
    return route.resource.canonical


def build_middlewares(settings: Settings) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    allowed_origins = set(settings.cors_origins)

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - started
            metrics = request.app.get(HTTP_METRICS)
            route = _route_label(request)
            if metrics is not None and route != "/socket.io/":
                metrics.requests.labels(request.method, route, str(status)).inc()
                metrics.latency.labels(request.method, route).observe(elapsed)
            if not request.path.startswith(("/socket.io", "/healthz", "/metrics")):
                log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    @web.middleware
    async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        cors_ok = origin is not None and ("*" in allowed_origins or origin in allowed_origins)
        if (
            request.method == "OPTIONS"
            and cors_ok
            and "Access-Control-Request-Method" in request.headers
        ):
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
            response.headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if cors_ok and origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After"
            response.headers["Vary"] = "Origin"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
            "media-src 'self' blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        )
        if settings.is_production:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        # Local-store uploads (api/files.py) stream their body and enforce their signed size.
        if (
            length is not None
            and length > settings.max_body_bytes
            and not request.path.startswith(STREAMED_BODY_PATHS)
        ):
            return error_response(PayloadTooLarge(), request_id_var.get())
        try:
            return await handler(request)
        except AppError as err:
            log.info("request refused", extra={"code": err.code, "status": err.status})
            return error_response(err, request_id_var.get())
        except web.HTTPRequestEntityTooLarge:
            return error_response(PayloadTooLarge(), request_id_var.get())
        except web.HTTPNotFound:
            return error_response(NotFound("no such route"), request_id_var.get())
        except web.HTTPMethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.allowed_methods))
            return error_response(MethodNotAllowed(headers={"Allow": allow}), request_id_var.get())
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.lower().replace(" ", "_")
            other = AppError(exc.reason, code=code, status=exc.status)
            return error_response(other, request_id_var.get())
        except asyncpg.DataError:
            # The last line of defence of issue 14: a value PostgreSQL (or asyncpg's encoder)
            # refuses as data (SQLSTATE class 22: out of range, bad text, bad date) came from the
            # input. The caller gets a 4xx; the traceback is logged so the route's validation can
            # be tightened.
            log.exception("input refused by the database")
            refused = ValidationFailed({"body": "a value is out of range or not valid"})
            return error_response(refused, request_id_var.get())
        except Exception:
            log.exception("unhandled error")
            internal = AppError("internal error", code="internal", status=500)
            return error_response(internal, request_id_var.get())

    return [request_context, headers, errors]
