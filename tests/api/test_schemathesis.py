"""Issue 14: schemathesis over the whole served OpenAPI finds no server error and no response
that breaks the document, with a user's, an astrologer's and an admin's token.

Slow on purpose (about a minute on a quiet machine, more on a loaded one): it starts a real server
process and sends a few thousand generated requests (valid, invalid, and the corner cases of each
schema: NUL and lone surrogates in strings, out-of-range integers, wrong types, missing fields)
to every operation, three times, once per role. The examples per operation are bounded and the
seed fixed, so a run is reproducible: set ST_MAX_EXAMPLES / ST_SEED to explore further by hand,
and read the failures' curl commands in the assertion message.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from core.settings import Settings
from tests.factories import fund, make_astrologer, make_user, token_for
from tests.servers import ServerProcess, process_env

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = int(os.environ.get("ST_MAX_EXAMPLES", "15"))
SEED = int(os.environ.get("ST_SEED", "14"))
# 0 server errors and 0 schema mismatches: a status the document does not list for the operation,
# a body that does not match its schema, a content type other than the documented one.
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)
ST = Path(sys.executable).parent / "st"


async def _tokens(db: asyncpg.Pool[Any], settings: Settings) -> dict[str, str]:
    user = await make_user(db)
    await fund(db, user.id, 1_000_000)
    astrologer = await make_astrologer(db)
    admin = await make_user(db, role="admin")
    return {
        "user": await token_for(db, settings, user),
        "astrologer": await token_for(db, settings, astrologer),
        "admin": await token_for(db, settings, admin),
    }


def _spec_for(document: dict[str, Any], role: str) -> dict[str, Any]:
    """The operations `role` may call (public ones go with the user's run): a token of another
    role would only ever see 403, which tests nothing behind it."""
    paths: dict[str, Any] = {}
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            roles = op.get("x-roles")
            if (roles is None and role == "user") or (roles is not None and role in roles):
                paths.setdefault(path, {})[method] = op
    return {**document, "paths": paths}


async def _run(url: str, role: str, token: str, spec: Path, report: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ST), "run", str(spec), "--url", url,
        "--header", f"Authorization: Bearer {token}",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--no-shrink",
        "--request-timeout", "20",
        "--suppress-health-check", "all",
        "--report", "ndjson",
        "--report-ndjson-path", str(report),
        "--output-truncate", "true",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, f"--- schemathesis as {role} ---\n" + out.decode(errors="replace")


async def test_schemathesis_finds_no_server_error_and_no_mismatch(
    settings: Settings, db: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    # The server is another process on loopback: exempt from per-IP limits, as the suite is
    # (tests/conftest.py); per-user limits apply and their 429 is documented.
    tokens = await _tokens(db, settings)
    server = ServerProcess(
        # Rate limits off in this server only: fuzzing sends hundreds of calls per operation a
        # minute, and behind a 429 nothing would be tested (tests/api/test_rate_limits.py tests
        # the limits). The meter loop is not needed by any REST call.
        process_env(settings, METER_LOOP="false", LOG_LEVEL="WARNING", RATE_LIMITS_ENABLED="0"),
        log=tmp_path / "server.log",
    )
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + "/v1/openapi.json") as resp,
        ):
            document = await resp.json()
        runs = []
        for role, token in tokens.items():
            spec = tmp_path / f"{role}.openapi.json"
            spec.write_text(json.dumps(_spec_for(document, role)))
            runs.append(_run(server.url, role, token, spec, tmp_path / f"{role}.ndjson"))
        # The three roles at once: the server is one process, and a run mostly waits on it.
        results = await asyncio.gather(*runs)
        failures = [output[-12000:] for code, output in results if code != 0]
    finally:
        await server.stop()
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert not failures, "\n".join(failures) + "\n--- server log ---\n" + log[-6000:]
    # 500s, and 422s that only the last line of defence caught (api/middleware.py: a value the
    # database refused): the route's model should have bounded that value itself.
    gaps = [
        line
        for line in log.splitlines()
        if "unhandled error" in line or "input refused by the database" in line
    ]
    assert not gaps, log[-8000:]


def test_each_operation_documents_its_own_models() -> None:
    """Two models of one name (two `UploadOut`s) must not share one component: each operation's
    request and response schema has its own model's fields. Fast, and says which route broke."""
    from pydantic import BaseModel

    from api import openapi
    from api.routes import ROUTERS

    specs = [spec for router in ROUTERS for spec in router.specs]
    doc = openapi.build(specs)
    schemas = doc["components"]["schemas"]
    wrong = []
    for spec in specs:
        op = doc["paths"][spec.path][spec.method.lower()]
        pairs = []
        if isinstance(spec.response, type) and issubclass(spec.response, BaseModel):
            content = op["responses"][str(spec.status)].get("content", {})
            pairs.append((spec.response, content.get("application/json", {}).get("schema", {})))
        if spec.body is not None:
            pairs.append((spec.body, op["requestBody"]["content"]["application/json"]["schema"]))
        for model, schema in pairs:
            ref = schema.get("$ref", "")
            got = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
            if ref and set(got) != set(model.model_json_schema().get("properties", {})):
                wrong.append(f"{spec.method} {spec.path}: {model.__name__} documented as {ref}")
    assert not wrong, "\n".join(wrong)
