"""Meter tests run minutes of 0.3 s, a 1 s disconnect grace and 1 s heartbeats (a silent
process is taken for dead after 3 s: long enough that a test driving sessions without heartbeats
on a loaded machine is not ended by that backup)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from astrolive.resources import close_services, open_services
from core.services import Services
from core.settings import Settings
from tests.conftest import make_settings
from tests.meter.support import RecordingEmitter
from tests.realtime.conftest import start_server  # noqa: F401  # a fixture, for test_rules.py

MINUTE = 0.3
GRACE = 1.0
HEARTBEAT = 1.0
STALE = 3 * HEARTBEAT  # live.keys.HEARTBEAT_MISSES heartbeats


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        tmp_path / "data",
        billing_minute_seconds=MINUTE,
        disconnect_grace_seconds=GRACE,
        realtime_heartbeat_seconds=HEARTBEAT,
        meter_lease_seconds=1.0,
        meter_sweep_seconds=2.0,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    opened = await open_services(settings, RecordingEmitter())
    yield opened
    await close_services(opened)


@pytest.fixture
def emitted(services: Services) -> RecordingEmitter:
    assert isinstance(services.emitter, RecordingEmitter)
    return services.emitter
