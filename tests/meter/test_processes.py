"""The meter across real server processes: `kill -9` of the process charging a session, with a
second process running, loses no minute and doubles none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from core.services import Services
from core.settings import Settings
from db.identity import get_user
from tests.factories import token_for
from tests.meter.support import (
    accepted_consultation,
    assert_each_minute_once,
    consultation,
    heartbeats,
    meter_row,
    start,
    wait_for,
)
from tests.realtime.support import Peer
from tests.servers import ServerProcess

MINUTE = 0.5
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def server_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        JWT_SECRET=str(settings.jwt_secret),
        BILLING_MINUTE_SECONDS=str(MINUTE),
        DISCONNECT_GRACE_SECONDS="5",
        METER_LEASE_SECONDS="1",
        LOG_FORMAT="text",
        LOG_LEVEL="WARNING",
        DATA_DIR=str(tmp_path / "server-data"),
        ASTROLIVE_ENV="development",
    )
    return env


@pytest.fixture
async def servers(server_env: dict[str, str], tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    started = [ServerProcess(server_env, log=tmp_path / f"server{i}.log") for i in range(2)]
    try:
        yield started
    finally:
        for server in started:
            if server.proc is not None:
                await server.stop()


async def _charged_by(db: asyncpg.Pool[Any], cid: Any) -> list[tuple[int, str]]:
    rows = await db.fetch(
        "SELECT minute, details->>'by' AS by FROM meter_events"
        " WHERE consultation_id = $1 AND kind = 'charge' ORDER BY minute",
        cid,
    )
    return [(r["minute"], r["by"]) for r in rows]


async def test_kill_9_of_the_charging_process_loses_and_doubles_no_minute(
    servers: list[ServerProcess], services: Services, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    for server in servers:
        await server.start()
    victim, survivor = servers
    s = await accepted_consultation(db, rate=100, wallet=100_000)
    async with heartbeats(services, s):
        await start(services, s)  # minute 1 here; the servers' loops charge the rest

        async def victim_charged() -> bool:
            return any(by == victim.process_id for _, by in await _charged_by(db, s.id))

        await wait_for(victim_charged, within=30)
        victim.kill()
        assert victim.proc is not None
        await victim.proc.wait()
        killed_at = time.time()
        await asyncio.sleep(8 * MINUTE)
        account = await get_user(db, s.user_id)
        assert account is not None
        token = await token_for(db, settings, account)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{survivor.url}/v1/consultations/{s.id}/end",
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    assert body["status"] == "completed"
    assert body["end_reason"] == "user_ended"
    n = await assert_each_minute_once(db, s.id)
    c = await consultation(db, s.id)
    assert (c["billed_minutes"], c["total_charged"]) == (n, n * 100)
    charged = await _charged_by(db, s.id)
    after_kill = [m for m, by in charged if by == survivor.process_id]
    assert len(after_kill) >= 6, charged  # the survivor took over every minute after the kill
    # No minute waited longer than the lease plus a little for the survivor to take it over.
    lags = await db.fetch(
        "SELECT minute, extract(epoch FROM at - due_at)::float AS lag FROM meter_events"
        " WHERE consultation_id = $1 AND kind = 'charge' AND at > to_timestamp($2)",
        s.id,
        killed_at,
    )
    assert max(r["lag"] for r in lags) < 1.0 + 1.0, lags


async def test_kill_9_of_the_process_holding_a_participants_socket(
    server_env: dict[str, str],
    tmp_path: Path,
    services: Services,
    db: asyncpg.Pool[Any],
    settings: Settings,
) -> None:
    """The user's socket is on the process that is killed: nobody sees that socket leave, so the
    survivor's meter learns it from the missing heartbeats and stops the session at the user's
    last presence + grace; no minute starting at or after that stop is billed (issue 12)."""
    env = {**server_env, "REALTIME_HEARTBEAT_SECONDS": "0.5", "DISCONNECT_GRACE_SECONDS": "1"}
    victim, survivor = (ServerProcess(env, log=tmp_path / f"kill{i}.log") for i in range(2))
    await victim.start()
    await survivor.start()
    s = await accepted_consultation(db, rate=100, wallet=100_000)
    user, astro = await get_user(db, s.user_id), await get_user(db, s.astrologer_id)
    assert user is not None
    assert astro is not None
    u, a = Peer(), Peer()
    try:
        await u.connect(victim.url, await token_for(db, settings, user))
        await a.connect(survivor.url, await token_for(db, settings, astro))
        join = {"consultation_id": str(s.id)}
        assert (await u.call("consultation:join", join))["ok"]
        assert (await a.call("consultation:join", join))["ok"]
        await a.wait_for("session:tick", lambda es: len(es) >= 4, wait=20)
        victim.kill()
        assert victim.proc is not None
        await victim.proc.wait()
        await wait_for(lambda: _completed(db, s.id), within=30)
    finally:
        await a.close()
        with contextlib.suppress(Exception):
            await u.sio.disconnect()
        await survivor.stop()
    row = await meter_row(db, s.id)
    assert (row["stop_reason"], row["stop_party"]) == ("disconnected", "user")
    present = await db.fetchval(
        "SELECT extract(epoch FROM present_at) FROM session_presence"
        " WHERE consultation_id = $1 AND user_id = $2",
        s.id,
        s.user_id,
    )
    assert row["stopped_at"].timestamp() >= float(present) + 1.0 - 0.01  # last presence + grace
    n = await assert_each_minute_once(db, s.id)  # none at or after the stop
    c = await consultation(db, s.id)
    assert (c["billed_minutes"], c["total_charged"]) == (n, n * 100)


async def _completed(db: asyncpg.Pool[Any], cid: Any) -> bool:
    return bool(
        await db.fetchval("SELECT status = 'completed' FROM consultations WHERE id = $1", cid)
    )
