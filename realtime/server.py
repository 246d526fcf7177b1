"""The Socket.IO server, attached to the aiohttp app and fanned out between processes via Redis.

Handlers live in `realtime.namespace.AstroliveNamespace` (the default namespace `/`). This module
builds the server and holds the transport-level protections python-socketio does not give:

- each socket's outbound queue is capped (`transport.SlowConsumerQueue`): a client that does not
  read while others keep emitting to it is disconnected instead of growing the queue without bound;
- incoming packets are capped by engine.io's `max_http_buffer_size` (the connection is dropped);
- websockets do not negotiate permessage-deflate (see `transport.CappedEngineIOServer`);
- `chat:message` goes out through `realtime.relay.ChatRelay` (seq order per consultation on every
  process); other deliveries to the other participant (`chat:read`, `rtc:*`) through `ordered`, a
  write-only Redis manager, so every process, the sender's included, handles them in publish order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import socketio
from aiohttp import web

from core import metrics
from core.settings import Settings
from realtime import keys
from realtime.transport import (
    BatchingRedisManager,
    EmitItem,
    TransportServer,
    close_manager,
    local_rooms,
    queue_depths,
)

log = logging.getLogger(__name__)

SIO = web.AppKey("sio", socketio.AsyncServer)


class SioEmitter:
    """`core.services.Emitter` over a Socket.IO server or a write-only Redis manager."""

    def __init__(self, target: Any) -> None:
        self._target = target

    async def emit(self, event: str, data: Any, room: str) -> None:
        await self._target.emit(event, data, room=room)

    async def emit_many(self, items: Sequence[EmitItem]) -> None:
        """Many room emits as one Redis message (see `BatchingRedisManager`), in order."""
        manager = getattr(self._target, "manager", self._target)  # a server's, or the manager
        if isinstance(manager, BatchingRedisManager):
            await manager.emit_many(items)
            return
        for event, data, room in items:
            await self.emit(event, data, room)

    async def close(self) -> None:
        """Close a write-only manager's Redis connection (a server's closes with the app)."""
        redis = getattr(self._target, "redis", None)
        if redis is not None and not isinstance(self._target, socketio.AsyncServer):
            await redis.aclose()


class AstroliveServer(TransportServer):
    """The Socket.IO server: capped outbound queues (`realtime.transport`) and an ordered
    publisher for deliveries to the other participant."""

    relay: Any = None  # realtime.relay.ChatRelay, installed by `register`

    def __init__(self, *, redis_url: str, max_queued_packets: int, **kwargs: Any) -> None:
        super().__init__(max_queued_packets=max_queued_packets, **kwargs)
        # Chat deliveries: published to Redis first and handled by every process (this one too)
        # from its subscription, in Redis order. A write-only manager has its own host id, so the
        # server's own manager does not skip these messages as "already handled here".
        self.ordered = socketio.AsyncRedisManager(
            redis_url, channel=keys.SIO_CHANNEL, write_only=True
        )

    async def deliver(self, event: str, data: Any, room: str, skip_sid: str | None = None) -> None:
        """Emit through Redis only, so that all processes see this event in publish order."""
        await self.ordered.emit(event, data, room=room, skip_sid=skip_sid)


def create_sio(settings: Settings, redis_url: str) -> AstroliveServer:
    manager = BatchingRedisManager(redis_url, channel=keys.SIO_CHANNEL)
    origins: Any = settings.cors_origins or "*"
    if settings.is_production and not settings.cors_origins:
        origins = [settings.public_base_url]
    sio = AstroliveServer(
        redis_url=redis_url,
        max_queued_packets=settings.realtime_max_queued_packets,
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=origins,
        max_http_buffer_size=64 * 1024,
        ping_interval=10,
        ping_timeout=10,
        logger=False,
        engineio_logger=False,
    )
    sio.on_slow_consumer = lambda _eio_sid: metrics.domain().slow_consumer_dropped()
    return sio


def write_only_emitter(redis_url: str) -> SioEmitter:
    """For workers: emit to rooms served by any web process, without serving sockets."""
    return SioEmitter(BatchingRedisManager(redis_url, channel=keys.SIO_CHANNEL, write_only=True))


def _room_kind(room: str) -> str:
    if room.startswith("consultation:"):
        return "participant" if ":user:" in room else "consultation"
    return room.split(":", 1)[0]  # user, presence


def measure(sio: AstroliveServer) -> None:
    """Set the real-time gauges of `core.metrics` from this process's sockets (a scrape probe)."""
    m = metrics.domain()
    m.connected_sockets.set(len(sio.eio.sockets))
    rooms: dict[str, int] = {}
    members: dict[str, int] = {}
    for room, sids in local_rooms(sio.manager).items():
        if room is None:  # python-socketio's room of every connected socket
            continue
        kind = _room_kind(room)
        rooms[kind] = rooms.get(kind, 0) + 1
        members[kind] = members.get(kind, 0) + len(sids)
    for kind in ("user", "consultation", "participant", "presence"):
        m.rooms.labels(kind).set(rooms.get(kind, 0))
        m.room_members.labels(kind).set(members.get(kind, 0))
    depths = list(queue_depths(sio))
    m.queued_packets.labels("sum").set(sum(depths))
    m.queued_packets.labels("max").set(max(depths, default=0))
    relay = sio.relay
    if relay is not None:
        m.relay_held.set(sum(len(r.held) for r in relay.rooms.values()))
        m.relay_outbox.set(relay.unpublished)


def register(sio: AstroliveServer, services_of: Any, app: web.Application | None = None) -> None:
    """Install the default namespace. `services_of()` returns the app's `Services` once started.
    With `app`, the sockets and background tasks are stopped when the app shuts down (before its
    services close)."""
    from realtime.namespace import AstroliveNamespace
    from realtime.relay import ChatRelay

    relay = ChatRelay(sio, services_of)
    sio.relay = relay
    namespace = AstroliveNamespace(sio, services_of, relay)
    sio.register_namespace(namespace)
    probe = functools.partial(measure, sio)
    metrics.domain().on_scrape(probe)

    async def stop(_: web.Application) -> None:
        metrics.domain().forget(probe)
        await namespace.shutdown()
        if sio.eio.sockets:
            await sio.eio.disconnect()  # every local client; their disconnect handlers run now
        await relay.close()  # stores what is queued, gives its connection back to the pool
        await sio.shutdown()
        for manager in (sio.manager, sio.ordered):
            await close_manager(manager)

    if app is not None:
        app.on_shutdown.append(stop)
