"""The typed container of a process's open resources, built by the composition root."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import Redis

from core.settings import Settings


class Emitter(Protocol):
    """Emit a Socket.IO event to a room: the server itself in web processes, a write-only Redis
    manager in workers. Rooms: `user:{id}` (every device of a person), `consultation:{id}`."""

    async def emit(self, event: str, data: Any, room: str) -> None: ...


class NullEmitter:
    """For commands that have no Socket.IO (migrate, seed-demo)."""

    async def emit(self, event: str, data: Any, room: str) -> None:
        return None


@dataclass
class Services:
    settings: Settings
    db: asyncpg.Pool[Any]
    redis: Redis
    arq: ArqRedis
    http: aiohttp.ClientSession
    emitter: Emitter = field(default_factory=NullEmitter)
