"""Issue 14: the inputs that used to be server errors are 4xx in the contract's shape, REST and
Socket.IO alike, and change nothing (core/inputs.py, api/framework.py, realtime/namespace.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.models import encode_cursor
from astrolive.app import create_app
from core.settings import Settings
from tests.conftest import make_settings
from tests.factories import auth, make_user, token_for
from tests.realtime.support import Peer, make_pair

Client = TestClient[Any, Any]
HUGE = "36893488147419103232"  # 2**65: no PostgreSQL bigint holds it


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = (await resp.json())["error"]
    assert set(body) <= {"code", "message", "details"}
    return body


@pytest.mark.parametrize(
    "query",
    [
        "q=%00",
        "q=a%00b",
        "q=%ED%A0%80",  # UTF-8 of a lone surrogate, not valid UTF-8
        f"max_rate={HUGE}",
        f"max_rate=-{HUGE}",
        "max_rate=99999999999",  # fits int64, not the rates' int4 columns
        "min_rating=NaN",
        "min_rating=inf",
        "limit=100000000",
        f"limit={HUGE}",
        "limit=abc",
        "cursor=" + encode_cursor(2**70),
        "cursor=" + "A" * 5000,
        "cursor=%00",
        "skill=" + "x" * 3000,
    ],
)
async def test_discovery_query_never_a_server_error(client: Client, query: str) -> None:
    resp = await client.get(f"/v1/astrologers?{query}")
    assert resp.status in (200, 422), await resp.text()
    if resp.status == 422:
        body = await _error(resp, 422)
        assert body["code"] == "validation_error"
        assert body["details"]["fields"]


@pytest.mark.parametrize(
    "payload",
    [
        '{"order_id": "\\ud800", "payment_id": "pay_1", "signature": "x"}',
        '{"order_id": "order_1", "payment_id": "\\udfff\\ud800", "signature": "x"}',
        '{"order_id": "order\\u0000", "payment_id": "pay_1", "signature": "x"}',
        '{"order_id": "\\ud83d\\ude00 non-BMP", "payment_id": "pay_1", "signature": "x"}',
        '{"order_id": 12345678901234567890123, "payment_id": "pay_1", "signature": "x"}',
        '{"order_id": ["a"], "payment_id": {"b": 1}, "signature": null}',
    ],
)
async def test_razorpay_verify_bad_strings(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, payload: str
) -> None:
    headers = {**await auth(db, settings, await make_user(db)), "Content-Type": "application/json"}
    resp = await client.post("/v1/payments/razorpay/verify", data=payload, headers=headers)
    assert 400 <= resp.status < 500, await resp.text()
    await _error(resp, resp.status)
    assert await db.fetchval("SELECT count(*) FROM recharges") == 0


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ("[" * 100_000 + "]" * 100_000, 400, "bad_request"),  # deeper than the parser's stack
        ('{"a": ' * 40 + "1" + "}" * 40, 422, "validation_error"),  # deeper than MAX_DEPTH
        ('{"amount": NaN, "gateway": "test"}', 400, "bad_request"),
        ('{"amount": Infinity, "gateway": "test"}', 400, "bad_request"),
        ('{"amount": ' + "9" * 5000 + ', "gateway": "test"}', 400, "bad_request"),
        ('{"amount": ' + HUGE + ', "gateway": "test"}', 422, "validation_error"),
        ('{"amount": "' + HUGE + '", "gateway": "test"}', 422, "validation_error"),
        ('{"amount": 1e400, "gateway": "test"}', 422, "validation_error"),
        ('{"amount": 5000, "gateway": "test\\u0000"}', 422, "validation_error"),
        ('{"\\ud800": 1}', 422, "validation_error"),
        ("[1, 2]", 422, "validation_error"),
        ('"text"', 422, "validation_error"),
        (b"\xff\xfe{", 400, "bad_request"),
    ],
)
async def test_malformed_bodies(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, raw: str | bytes, status: int,
    code: str,
) -> None:  # fmt: skip
    user = await make_user(db)
    headers = {**await auth(db, settings, user), "Content-Type": "application/json"}
    resp = await client.post("/v1/wallet/recharges", data=raw, headers=headers)
    body = await _error(resp, status)
    assert body["code"] == code
    assert await db.fetchval("SELECT count(*) FROM recharges") == 0


async def test_path_parameters_that_are_not_text_are_not_found(
    client: Client, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    headers = await auth(db, settings, await make_user(db))
    for path in ("/v1/consultations/%00", "/v1/devices/a%00b", "/v1/astrologers/%ED%A0%80"):
        method = client.delete if path.startswith("/v1/devices") else client.get
        resp = await method(path, headers=headers)
        assert resp.status == 404, (path, await resp.text())


async def test_long_query_gets_the_json_error_not_the_parser_text(client: Client) -> None:
    resp = await client.get("/v1/astrologers?q=" + "%C3%B4" * 2000)
    await _error(resp, 422)


# --- Socket.IO ----------------------------------------------------------------------------------


@pytest.fixture
async def rt(
    aiohttp_server: Any, database_url: str, redis_url: str, tmp_path: Path
) -> tuple[str, Settings]:
    settings = make_settings(database_url, redis_url, tmp_path / "data")
    server = await aiohttp_server(create_app(settings))
    return str(server.make_url("")).rstrip("/"), settings


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("chat:send", {"client_msg_id": "m1", "text": "\ud800"}),
        ("chat:send", {"client_msg_id": "m1", "text": "a\x00b"}),
        ("chat:send", {"client_msg_id": "\udfff", "text": "hello"}),
        ("chat:send", {"client_msg_id": "m1", "text": 12}),
        ("chat:read", {"up_to_seq": 2**70}),
        ("chat:history", {"after_seq": float("nan")}),
        ("chat:history", {"after_seq": -(2**70)}),
        (
            "chat:send",
            {
                "client_msg_id": "m1",
                "text": "x",
                "extra": _nested(40),
            },
        ),
        ("rtc:ice", {"candidate": {"candidate": "\x00", "sdpMLineIndex": 2**64}}),
        ("consultation:join", {"consultation_id": "\x00"}),
    ],
)
async def test_socket_events_refuse_bad_input(
    rt: tuple[str, Settings], db: asyncpg.Pool[Any], event: str, payload: dict[str, Any]
) -> None:  # fmt: skip
    url, settings = rt
    cid, _, user_token, _, _ = await make_pair(db, settings)
    peer = Peer()
    await peer.connect(url, user_token)
    try:
        joined = await peer.call("consultation:join", {"consultation_id": str(cid)})
        assert joined["ok"], joined
        body = {"consultation_id": str(cid), **payload}
        ack = await peer.call(event, body)
        assert ack["ok"] is False, ack
        assert ack["error"]["code"] in ("validation_error", "not_found"), ack
        # The connection is still good.
        ok = await peer.call("chat:history", {"consultation_id": str(cid), "after_seq": 0})
        assert ok["ok"], ok
    finally:
        await peer.close()
    assert await db.fetchval("SELECT count(*) FROM chat_messages") == 0


async def test_socket_payload_of_the_wrong_shape(
    rt: tuple[str, Settings], db: asyncpg.Pool[Any]
) -> None:
    url, settings = rt
    user = await make_user(db)
    peer = Peer()
    await peer.connect(url, await token_for(db, settings, user))
    try:
        for payload in ([1, 2], "text", 5, json.loads('{"a": 1e400}')):
            ack = await peer.call("consultation:join", payload)
            assert ack["ok"] is False
            assert ack["error"]["code"] == "validation_error"
    finally:
        await peer.close()
