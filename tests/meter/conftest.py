"""Meter tests run minutes of 0.3 s and a 1 s disconnect grace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from astrolive.resources import close_services, open_services
from core.services import Services
from core.settings import Settings
from tests.conftest import make_settings
from tests.meter.support import RecordingEmitter

MINUTE = 0.3
GRACE = 1.0


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        tmp_path / "data",
        billing_minute_seconds=MINUTE,
        disconnect_grace_seconds=GRACE,
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
