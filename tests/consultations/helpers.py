"""Helpers of the consultations tests: an emitter that records what would go to Socket.IO, and
services opened with test settings (short timers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from astrolive.resources import close_services, open_services
from core.services import Services
from tests.conftest import make_settings


class RecordingEmitter:
    """`core.services.Emitter` that keeps every emit, for asserting on events without a socket
    (the Socket.IO path itself is covered by a real client in test_requests)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, str]] = []

    async def emit(self, event: str, data: Any, room: str) -> None:
        self.events.append((event, data, room))

    def named(self, event: str) -> list[tuple[Any, str]]:
        return [(data, room) for name, data, room in self.events if name == event]


@asynccontextmanager
async def opened(
    database_url: str, redis_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Services, RecordingEmitter]]:
    emitter = RecordingEmitter()
    services = await open_services(
        make_settings(database_url, redis_url, tmp_path / "data", **overrides), emitter
    )
    try:
        yield services, emitter
    finally:
        await close_services(services)
