"""The contract's HTTP basics on every route: errors, request ids, headers, health, OpenAPI."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from api.framework import Call, Router, install
from api.models import Input, Output
from core.errors import Conflict


async def test_unknown_route_is_contract_404(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "not_found"
    assert resp.headers["X-Request-ID"]


async def test_wrong_method_is_405_with_allow(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/healthz", json={})
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_request_id_is_echoed_or_made(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"] != "bad id with spaces"
    assert len(resp.headers["X-Request-ID"]) == 32


async def test_security_headers(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_readyz_ok_with_services_up(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_metrics_count_requests_by_route(client: TestClient[Any, Any]) -> None:
    await client.get("/healthz")
    await client.get("/v1/does-not-exist")
    text = await (await client.get("/metrics")).text()
    assert 'http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text


async def test_openapi_lists_routes(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert "/readyz" in doc["paths"]
    assert "ErrorResponse" in doc["components"]["schemas"]


# A small router of its own, so the framework's body handling is tested on a real app.
class EchoIn(Input):
    name: str
    count: int = 1


class EchoOut(Output):
    name: str
    count: int


probe = Router("probe")


@probe.post("/v1/probe/echo", access="public", body=EchoIn, response=EchoOut)
async def echo(call: Call) -> EchoOut:
    body = call.body(EchoIn)
    return EchoOut(name=body.name, count=body.count)


@probe.get("/v1/probe/boom", access="public")
async def boom(call: Call) -> None:
    raise RuntimeError("secret internals")


@probe.get("/v1/probe/conflict", access="public")
async def conflict(call: Call) -> None:
    raise Conflict("nope", code="astrologer_busy")


@probe.get("/v1/probe/admin", access="admin")
async def admin_only(call: Call) -> dict[str, str]:
    return {"ok": "yes"}


async def _probe_client(app: web.Application, aiohttp_client: Any) -> TestClient[Any, Any]:
    install(app, [probe])
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def test_bad_json_is_400(app: web.Application, aiohttp_client: Any) -> None:
    client = await _probe_client(app, aiohttp_client)
    resp = await client.post(
        "/v1/probe/echo", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_validation_is_422_with_fields(app: web.Application, aiohttp_client: Any) -> None:
    client = await _probe_client(app, aiohttp_client)
    resp = await client.post("/v1/probe/echo", json={"count": "many", "extra": 1})
    assert resp.status == 422
    fields = (await resp.json())["error"]["details"]["fields"]
    assert set(fields) == {"name", "count", "extra"}
    resp = await client.post("/v1/probe/echo", json=[1, 2])
    assert resp.status == 422


async def test_valid_body_round_trips(app: web.Application, aiohttp_client: Any) -> None:
    client = await _probe_client(app, aiohttp_client)
    resp = await client.post("/v1/probe/echo", json={"name": "x", "count": 3})
    assert resp.status == 200
    assert await resp.json() == {"name": "x", "count": 3}


async def test_oversize_body_is_413(app: web.Application, aiohttp_client: Any) -> None:
    client = await _probe_client(app, aiohttp_client)
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    resp = await client.post(
        "/v1/probe/echo", data=io.BytesIO(big), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read itself is capped
        for _ in range(3):
            yield b"x" * (1024 * 1024)

    resp = await client.post(
        "/v1/probe/echo", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_unexpected_error_is_500_without_traceback(
    app: web.Application, aiohttp_client: Any
) -> None:
    client = await _probe_client(app, aiohttp_client)
    resp = await client.get("/v1/probe/boom", headers={"X-Request-ID": "req-1"})
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == "internal"
    assert body["error"]["details"]["request_id"] == "req-1"
    assert "secret internals" not in await resp.text()
    assert "Traceback" not in await resp.text()


async def test_app_error_keeps_its_code(app: web.Application, aiohttp_client: Any) -> None:
    client = await _probe_client(app, aiohttp_client)
    resp = await client.get("/v1/probe/conflict")
    assert resp.status == 409
    assert (await resp.json())["error"] == {"code": "astrologer_busy", "message": "nope"}


async def test_role_checks(
    app: web.Application, aiohttp_client: Any, settings: Any, db: Any
) -> None:
    from tests.factories import auth, make_user

    client = await _probe_client(app, aiohttp_client)
    assert (await client.get("/v1/probe/admin")).status == 401
    bad = await client.get("/v1/probe/admin", headers={"Authorization": "Bearer forged.token.x"})
    assert bad.status == 401
    user = await make_user(db)
    as_user = await auth(db, settings, user)
    assert (await client.get("/v1/probe/admin", headers=as_user)).status == 403
    admin = await make_user(db, role="admin")
    as_admin = await auth(db, settings, admin)
    assert (await client.get("/v1/probe/admin", headers=as_admin)).status == 200


async def test_cors_for_configured_origin(
    aiohttp_client: Any, database_url: str, redis_url: str, tmp_path: Any
) -> None:
    from astrolive.app import create_app
    from tests.conftest import make_settings

    app = create_app(
        make_settings(database_url, redis_url, tmp_path, cors_origins="https://console.example")
    )
    client = await aiohttp_client(app)
    pre = await client.options(
        "/healthz",
        headers={"Origin": "https://console.example", "Access-Control-Request-Method": "GET"},
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://console.example"
    other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_route_without_access_refuses_to_start(settings: Any) -> None:
    import pytest

    from api.framework import assert_all_routes_declared
    from astrolive.app import create_app

    app = create_app(settings)

    async def sneaky(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/sneaky", sneaky)
    with pytest.raises(RuntimeError, match="does not declare its access"):
        assert_all_routes_declared(app)


async def test_malformed_cursors_are_422_on_every_list(
    client: TestClient[Any, Any], settings: Any, db: Any
) -> None:
    """A cursor that is not one of ours is a validation error, never a 500."""
    from api.models import encode_cursor
    from tests.factories import auth, make_user

    user = await make_user(db)
    headers = await auth(db, settings, user)
    bad = ["not-base64!", encode_cursor("x"), encode_cursor("x", "y"), encode_cursor(1, 2, 3)]
    for path in ("/v1/consultations", "/v1/wallet/transactions", "/v1/notifications"):
        for cursor in bad:
            resp = await client.get(path, params={"cursor": cursor}, headers=headers)
            assert resp.status == 422, (path, cursor, await resp.text())
            assert (await resp.json())["error"]["details"]["fields"] == {"cursor": "invalid cursor"}
