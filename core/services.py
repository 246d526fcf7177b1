"""The typed container of a process's open resources and external services, built once per
process by the composition root (`astrolive.resources.open_services`). Every external service
stands behind a Protocol, with a real implementation and a local one chosen by settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import Redis

from core.settings import Settings
from core.storage import Storage

if TYPE_CHECKING:
    from billing.gateways import PaymentGateway
    from notify.channels import Channel, ChannelKind
    from notify.sms import SmsProvider


class Emitter(Protocol):
    """Emit a Socket.IO event to a room: the server itself in web processes, a write-only Redis
    manager in workers. Rooms: `user:{id}` (every device of a person), `consultation:{id}`."""

    async def emit(self, event: str, data: Any, room: str) -> None: ...


class Gateways(Protocol):
    """The payment gateways this process may use, each built once."""

    def get(self, name: str) -> PaymentGateway:
        """The gateway called `name`; `gateway_disabled` when it is not configured here."""
        ...


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
    storage: Storage  # S3 (S3_BUCKET) or a local folder served by /v1/files
    sms: SmsProvider  # SMS_PROVIDER: console or sns
    channels: dict[ChannelKind, Channel]  # notification delivery: push, email, sms
    gateways: Gateways  # stripe, razorpay, test
    emitter: Emitter = field(default_factory=NullEmitter)
