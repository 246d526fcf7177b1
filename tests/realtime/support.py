"""Factories and a small Socket.IO test client for the real-time tests."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg
import socketio

from core.settings import Settings
from db import identity
from tests.factories import make_astrologer, make_user, token_for


async def make_consultation(
    db: asyncpg.Pool[Any],
    user: identity.User,
    astrologer: identity.User,
    *,
    type_: str = "chat",
    status: str = "active",
    ended_seconds_ago: float = 0.0,
) -> uuid.UUID:
    """A consultation row as the lifecycle would leave it in `status`."""
    completed = status == "completed"
    consultation_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO consultations (user_id, astrologer_id, type, status, rate, share_percent,
            accepted_at, started_at, ended_at, end_reason)
        VALUES ($1, $2, $3, $4, 1000, 60,
                CASE WHEN $4 IN ('accepted', 'active', 'completed') THEN now() END,
                CASE WHEN $4 IN ('active', 'completed') THEN now() END,
                CASE WHEN $5 THEN now() - make_interval(secs => $6::float8) END,
                CASE WHEN $5 THEN 'user_ended' END)
        RETURNING id
        """,
        user.id, astrologer.id, type_, status, completed, ended_seconds_ago,
    )  # fmt: skip
    return consultation_id


async def make_pair(
    db: asyncpg.Pool[Any], settings: Settings, *, type_: str = "chat", status: str = "active"
) -> tuple[uuid.UUID, identity.User, str, identity.User, str]:
    """(consultation id, user, user token, astrologer, astrologer token)."""
    user = await make_user(db)
    astrologer = await make_astrologer(db)
    cid = await make_consultation(db, user, astrologer, type_=type_, status=status)
    return (
        cid,
        user,
        await token_for(db, settings, user),
        astrologer,
        await token_for(db, settings, astrologer),
    )


class Peer:
    """A python-socketio client that records every event it receives."""

    def __init__(self, *, transports: list[str] | None = None) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.transports = transports or ["websocket"]
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.connect_error: Any = None
        self._changed = asyncio.Event()

        async def any_event(event: str, data: Any = None) -> None:
            self.events[event].append(data)
            self._changed.set()

        async def connect_error(data: Any) -> None:
            self.connect_error = data

        self.sio.on("*", any_event)
        self.sio.on("connect_error", connect_error)

    async def connect(self, url: str, token: str | None) -> None:
        auth = {"token": token} if token is not None else {}
        await self.sio.connect(
            url, auth=auth, transports=self.transports, wait_timeout=5, socketio_path="socket.io"
        )

    async def call(self, event: str, data: Any, wait: float = 10) -> Any:
        return await self.sio.call(event, data, timeout=wait)

    async def wait_for(
        self, event: str, predicate: Callable[[list[Any]], bool], wait: float = 10
    ) -> list[Any]:
        async with asyncio.timeout(wait):
            while not predicate(self.events[event]):
                self._changed.clear()
                await self._changed.wait()
        return self.events[event]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
