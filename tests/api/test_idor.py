"""Issue 14: the IDOR matrix, generated from the live route table and Socket.IO event table.

For every REST route with an id in its path, a person who may call the route but does not own the
resource (a fresh account of each allowed role but admin) presents the victim's id with a valid
body: the answer is 404 and no table changes (a snapshot of every table's contents is compared
before and after). Admin-only routes are the role check: any other role gets 403, nothing changes.
For every Socket.IO event whose payload names a consultation, a stranger's event with the victim's
consultation id is refused and changes nothing.

A route or event added tomorrow is in the matrix the day it is added: its id must map to one of the
victim's resources (`RESOURCES`), its body must be one the generator can build (or be listed in
`BODIES`), else this test fails and says what to add. A route that cannot be covered is listed in
`UNCOVERED` with the reason; an unlisted uncovered route fails the test.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ValidationError

from api.framework import ROUTE_SPECS, Call, Router, RouteSpec, install
from astrolive.app import create_app
from core.settings import Settings
from realtime.server import SIO
from tests.conftest import make_settings
from tests.factories import auth, fund, make_astrologer, make_user, token_for
from tests.realtime.support import Peer, make_consultation

Client = TestClient[Any, Any]

# Routes with an id that name no private resource of another person, and why.
UNCOVERED: dict[tuple[str, str], str] = {
    ("GET", "/v1/astrologers/{id}"): "public listing: an approved astrologer's public profile",
    ("GET", "/v1/astrologers/{id}/reviews"): "public listing: published reviews",
    ("GET", "/v1/astrologers/{id}/slots"): "public listing: free slots for booking",
    ("POST", "/v1/astrologers/{id}/follow"): "acts on the caller's own follow of a public profile",
    ("DELETE", "/v1/astrologers/{id}/follow"): "the caller's own follow of a public profile",
    ("POST", "/v1/astrologers/{id}/waitlist"): "the caller's own place in a public queue",
    ("GET", "/v1/astrologers/{id}/waitlist"): "the caller's own place in a public queue",
    ("DELETE", "/v1/astrologers/{id}/waitlist"): "the caller's own place in a public queue",
}

# Path prefix → which of the victim's resources its `{id}` (or `{token}`) names.
RESOURCES: list[tuple[str, str]] = [
    ("/v1/consultations/{id}", "consultation"),
    ("/v1/wallet/recharges/{id}", "recharge"),
    ("/v1/support/tickets/{id}", "ticket"),
    ("/v1/questions/{id}", "question"),
    ("/v1/me/profiles/{id}", "profile"),
    ("/v1/devices/{token}", "device"),
    ("/v1/astrologer/documents/{id}", "document"),
]

# Bodies the generator below cannot guess (a valid one is needed to reach the ownership check).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/consultations/{id}/review"): {"rating": 5, "comment": "great"},
    ("POST", "/v1/questions/{id}/review"): {"rating": 5, "comment": "great"},
    ("POST", "/v1/consultations/{id}/tips"): {"amount": 100},
    ("PATCH", "/v1/me/profiles/{id}"): {"name": "Renamed"},
}

# Tables whose changes are not the resource's (the attacker's own sign-in bookkeeping).
IGNORED_TABLES = {"schema_migrations"}


@pytest.fixture
def quiet_settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    # Nothing may change the tables on its own between two snapshots: no meter loop charging the
    # active consultation, no test-gateway payment settling the recharge.
    return make_settings(
        database_url, redis_url, tmp_path / "data", meter_loop=False,
        test_gateway_delay_seconds=3600,
    )  # fmt: skip


@pytest.fixture
async def quiet_app(quiet_settings: Settings) -> web.Application:
    return create_app(quiet_settings)


@pytest.fixture
async def quiet(aiohttp_client: Any, quiet_app: web.Application) -> Client:
    client: Client = await aiohttp_client(quiet_app)
    return client


@dataclass
class World:
    user: Any
    astrologer: Any
    ids: dict[str, str]
    user_headers: dict[str, str]


async def _post(client: Client, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status in (200, 201), (path, resp.status, await resp.text())
    return await resp.json()


async def _victims(client: Client, db: asyncpg.Pool[Any], settings: Settings) -> World:
    """A user and an astrologer with one of each private resource, made through the API."""
    user = await make_user(db)
    astrologer = await make_astrologer(db)
    await db.execute(
        "UPDATE astrologer_profiles SET rate_question = $2 WHERE user_id = $1",
        astrologer.id, settings.question_min_price,
    )  # fmt: skip
    await fund(db, user.id, 1_000_000)
    uh = await auth(db, settings, user)
    ah = await auth(db, settings, astrologer)
    ids: dict[str, str] = {}
    ids["consultation"] = str(await make_consultation(db, user, astrologer, status="active"))
    recharge = await _post(client, "/v1/wallet/recharges", {"amount": 5000, "gateway": "test"}, uh)
    ids["recharge"] = recharge["id"]
    ticket = await _post(client, "/v1/support/tickets", {"category": "other", "text": "hi"}, uh)
    ids["ticket"] = ticket["id"]
    question = await _post(
        client, "/v1/questions", {"astrologer_id": str(astrologer.id), "text": "When?"}, uh
    )
    ids["question"] = question["id"]
    profile = await _post(
        client,
        "/v1/me/profiles",
        {"name": "Kid", "relation": "child", "birth_date": "2015-01-01", "birth_place": "Pune"},
        uh,
    )
    ids["profile"] = profile["id"]
    await _post(client, "/v1/devices", {"platform": "android", "push_token": "victim-tok"}, uh)
    ids["device"] = "victim-tok"
    doc = await _post(
        client,
        "/v1/astrologer/documents",
        {"kind": "id_proof", "content_type": "application/pdf", "size": 10},
        ah,
    )
    ids["document"] = doc["document_id"]
    return World(user, astrologer, ids, uh)


def _example(schema: dict[str, Any], defs: dict[str, Any], name: str) -> Any:
    """A simple valid value for a JSON schema (required fields only)."""
    if "$ref" in schema:
        return _example(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"]
            return _example(options[0], defs, name) if options else None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        required = schema.get("required", [])
        props = schema.get("properties", {})
        return {k: _example(props[k], defs, k) for k in required}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, name)] * schema.get("minItems", 0)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return max(int(low), 1)
    if kind == "boolean":
        return True
    fmt = schema.get("format")
    if fmt == "uuid":
        return str(uuid.uuid4())
    if fmt == "date":
        return "2030-01-01"
    if fmt == "date-time":
        return (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return "x" * max(1, schema.get("minLength", 1))


def _body_for(model: type[BaseModel] | None, key: Any) -> Any:
    if model is None:
        return None
    if key in BODIES:
        body = BODIES[key]
    else:
        schema = model.model_json_schema()
        body = _example(schema, schema.get("$defs", {}), "")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        pytest.fail(f"{key}: the generated body {body} is not valid ({exc}); add one to BODIES")
    return body


def _resource(path: str) -> str | None:
    for prefix, name in RESOURCES:
        if path == prefix or path.startswith(prefix + "/"):
            return name
    return None


# One digest of a table's whole contents: any insert, update or delete changes it.
_DIGEST = """SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM "{table}" t"""


async def _snapshot(db: asyncpg.Pool[Any]) -> dict[str, str]:
    tables = [
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        if r["tablename"] not in IGNORED_TABLES
    ]
    found: dict[str, str] = {}
    for table in tables:
        found[table] = await db.fetchval(_DIGEST.format(table=table))
    return found


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(t for t in after if before.get(t) != after[t])


async def _rest_matrix(
    client: Client, db: asyncpg.Pool[Any], settings: Settings, world: World
) -> tuple[list[str], int]:
    """(problems, cases run) of the matrix over the app's live route table."""
    assert client.app is not None
    specs: list[RouteSpec] = client.app[ROUTE_SPECS]
    with_ids = [s for s in specs if "{" in s.path]
    attackers = {
        "user": await auth(db, settings, await make_user(db)),
        "astrologer": await auth(db, settings, await make_astrologer(db)),
    }
    problems: list[str] = []
    covered = 0
    for spec in with_ids:
        key = (spec.method, spec.path)
        if key in UNCOVERED:
            continue
        roles = spec.roles()
        if roles is None:
            problems.append(f"{key}: public route with an id; cover it or list it in UNCOVERED")
            continue
        admin_only = roles == ("admin",)
        name = None if admin_only else _resource(spec.path)
        if not admin_only and name is None:
            problems.append(f"{key}: no victim resource for its id; add it to RESOURCES")
            continue
        victim_id = world.ids[name] if name else str(uuid.uuid4())
        path = re.sub(r"{\w+}", victim_id, spec.path)
        body = _body_for(spec.body, key)
        who = ["user", "astrologer"] if admin_only else [r for r in roles if r != "admin"]
        expected = 403 if admin_only else 404
        for role in who:
            before = await _snapshot(db)
            resp = await client.request(
                spec.method, path, json=body, headers={**attackers[role], "Idempotency-Key": "k"}
            )
            text = await resp.text()
            after = await _snapshot(db)
            if resp.status != expected:
                problems.append(f"{key} as {role}: {resp.status} {text[:200]}")
            elif _changed(before, after):
                problems.append(f"{key} as {role}: changed {_changed(before, after)}")
            covered += 1
    return problems, covered


async def test_rest_idor_matrix(
    quiet: Client, db: asyncpg.Pool[Any], quiet_settings: Settings
) -> None:
    world = await _victims(quiet, db, quiet_settings)
    problems, covered = await _rest_matrix(quiet, db, quiet_settings, world)
    assert not problems, "\n".join(problems)
    assert covered >= 40  # the live table is really read: ~30 routes, most for two roles
    # The victim still sees each of their resources (the ids were real ones).
    for path in (
        f"/v1/consultations/{world.ids['consultation']}",
        f"/v1/wallet/recharges/{world.ids['recharge']}",
        f"/v1/support/tickets/{world.ids['ticket']}",
        f"/v1/questions/{world.ids['question']}",
    ):
        assert (await quiet.get(path, headers=world.user_headers)).status == 200, path


async def test_matrix_catches_a_leaking_route_and_an_unmapped_one(
    aiohttp_client: Any, quiet_settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    """The matrix can fail: a route that forgets the ownership check, and a new kind of id."""
    extra = Router("leaks")

    @extra.get("/v1/consultations/{id}/leak", access="user")
    async def leak(call: Call) -> dict[str, Any]:
        row = await call.services.db.fetchrow(
            "SELECT id FROM consultations WHERE id = $1", call.uuid("id")
        )
        return {"id": str(row["id"]) if row else None}

    @extra.post("/v1/things/{id}", access="user")
    async def thing(call: Call) -> dict[str, Any]:
        return {}

    app = create_app(quiet_settings)
    install(app, [extra])
    client: Client = await aiohttp_client(app)
    world = await _victims(client, db, quiet_settings)
    problems, _ = await _rest_matrix(client, db, quiet_settings, world)
    assert any("/v1/consultations/{id}/leak" in p and ": 200 " in p for p in problems), problems
    assert any("/v1/things/{id}" in p and "add it to RESOURCES" in p for p in problems), problems


def test_uncovered_list_names_only_live_routes(app: Any) -> None:
    live = {(s.method, s.path) for s in app[ROUTE_SPECS]}
    assert set(UNCOVERED) <= live, set(UNCOVERED) - live


# --- Socket.IO ----------------------------------------------------------------------------------


def _relayed(peer: Peer) -> dict[str, int]:
    """What another participant could have caused to reach `peer` (presence is public)."""
    return {
        k: len(v)
        for k, v in peer.events.items()
        if k.startswith(("chat:", "rtc:", "consultation:"))
    }


# Payloads the generator cannot guess.
EVENT_BODIES: dict[str, dict[str, Any]] = {
    "chat:send": {"client_msg_id": "m1", "text": "hello"},
    "rtc:offer": {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"},
    "rtc:answer": {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "answer"},
}


async def test_socket_idor_matrix(
    aiohttp_server: Any, quiet_app: Any, db: asyncpg.Pool[Any], quiet_settings: Settings
) -> None:
    app, settings = quiet_app, quiet_settings
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    namespace = app[SIO].namespace_handlers["/"]
    events: dict[str, tuple[type[BaseModel], Any, bool]] = namespace.events
    with_cid = sorted(
        e for e, (model, _, _) in events.items() if "consultation_id" in model.model_fields
    )
    assert {"consultation:join", "chat:send", "rtc:offer"} <= set(with_cid)
    user, astrologer = await make_user(db), await make_astrologer(db)
    cid = str(await make_consultation(db, user, astrologer, status="active"))
    victim = Peer()
    await victim.connect(url, await token_for(db, settings, user))
    strangers = [Peer(), Peer()]
    await strangers[0].connect(url, await token_for(db, settings, await make_user(db)))
    await strangers[1].connect(url, await token_for(db, settings, await make_astrologer(db)))
    problems: list[str] = []
    try:
        assert (await victim.call("consultation:join", {"consultation_id": cid}))["ok"]
        for event in with_cid:
            model = events[event][0]
            if event in EVENT_BODIES:
                payload = {"consultation_id": cid, **EVENT_BODIES[event]}
            else:
                schema = model.model_json_schema()
                payload = {**_example(schema, schema.get("$defs", {}), ""), "consultation_id": cid}
            try:
                model.model_validate(payload)
            except ValidationError as exc:
                pytest.fail(f"{event}: generated payload {payload} invalid ({exc}); add it")
            for stranger in strangers:
                before = await _snapshot(db)
                received = _relayed(victim)
                ack = await stranger.call(event, payload)
                after = await _snapshot(db)
                if not isinstance(ack, dict) or ack.get("ok") is not False:
                    problems.append(f"{event}: {ack}")
                elif ack["error"]["code"] not in ("not_found", "not_joined"):
                    problems.append(f"{event}: refused with {ack['error']}, not as not found")
                if _changed(before, after):
                    problems.append(f"{event}: changed {_changed(before, after)}")
                now = _relayed(victim)
                if now != received:
                    problems.append(f"{event}: the victim received {now} (was {received})")
    finally:
        for peer in (victim, *strangers):
            await peer.close()
    assert not problems, "\n".join(problems)
