"""The Socket.IO server, attached to the aiohttp app and fanned out between processes via Redis.

Handlers live in `realtime.namespace.AstroliveNamespace` (the default namespace `/`). This module
builds the server and holds the transport-level protections python-socketio does not give:

- each socket's outbound queue is capped (`SlowConsumerQueue`): a client that does not read while
  others keep emitting to it is disconnected instead of growing the queue without bound;
- incoming packets are capped by engine.io's `max_http_buffer_size` (the connection is dropped);
- websockets do not negotiate permessage-deflate (see `CappedEngineIOServer`);
- `chat:message` goes out through `realtime.relay.ChatRelay` (seq order per consultation on every
  process); other deliveries to the other participant (`chat:read`, `rtc:*`) through `ordered`, a
  write-only Redis manager, so every process, the sender's included, handles them in publish order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import engineio
import socketio
from aiohttp import web

from core.settings import Settings
from realtime import keys

log = logging.getLogger(__name__)

SIO = web.AppKey("sio", socketio.AsyncServer)


# One item of a batched emit: (event, data, room).
EmitItem = tuple[str, Any, str]


class BatchingRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]  # socketio has no type hints
    """python-socketio's Redis manager that can also carry many room emits in ONE Redis message.

    `emit_many` is what the minute meter uses for its ticks: with 20,000 live sessions a plain
    `emit` per tick is ~2,000 Redis messages a second that every web process decodes and, for the
    rooms it does not serve, encodes as a packet for nobody. A batch is one message on the same
    channel as every other emit (so it keeps its place among them: `session:started`, the ticks
    and `session:ended` of a consultation arrive in the order they were published), and each
    process delivers locally, in the batch's order, only the items whose room has sockets here.
    It travels as an `emit` message with a `batch` field, handled by `_handle_emit` below; all
    processes run this class (create_sio, write_only_emitter)."""

    async def emit_many(self, items: Sequence[EmitItem], namespace: str = "/") -> None:
        if not items:
            return
        message = {
            "method": "emit",
            "batch": [[event, data, room] for event, data, room in items],
            "namespace": namespace,
            "host_id": self.host_id,
        }
        await self._deliver_batch(message)  # this process's sockets (none when write-only)
        await self._publish(message)  # the other processes

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if "batch" in message:
            await self._deliver_batch(message)
        else:
            await super()._handle_emit(message)

    async def _deliver_batch(self, message: dict[str, Any]) -> None:
        namespace = message.get("namespace") or "/"
        local_rooms = self.rooms.get(namespace)
        if not local_rooms:
            return
        for event, data, room in message["batch"]:
            if room in local_rooms:  # a room with sockets in this process
                # The base manager's emit: local delivery only (what the pub/sub manager itself
                # calls for a message from Redis).
                await socketio.AsyncManager.emit(self, event, data, namespace, room=room)


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


class SlowConsumerQueue(asyncio.Queue[Any]):
    """An engine.io socket's outbound queue that refuses to grow past `limit` packets.

    engine.io queues every packet for a socket in an unbounded `asyncio.Queue` that its writer
    drains as fast as the client reads. Past `limit`, the queued packets are dropped, the writer is
    released (a `None` packet ends it) and `on_overflow` is called once to close the connection.
    The client reconnects and catches up from its last chat seq, so nothing is lost."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self.overflowed:
            if item is None:  # engine.io's own "stop the writer" marker always goes through
                super().put_nowait(item)
            return
        if item is not None and self.qsize() >= self.limit:
            self.overflowed = True
            while not self.empty():
                self.get_nowait()
                self.task_done()
            super().put_nowait(None)
            if self.on_overflow is not None:
                self.on_overflow()
            return
        super().put_nowait(item)


class CappedEngineIOServer(engineio.AsyncServer):  # type: ignore[misc]  # engineio has no type hints
    """engine.io server whose sockets get a `SlowConsumerQueue`, and whose websockets remember their
    TCP transport, so that a writer stuck on a client that stopped reading can be cut off.

    Its websockets refuse permessage-deflate, as the Node Socket.IO server does by default: with
    messages of a few hundred bytes, compressing every frame cost a third of the server's CPU
    under chat load (tests/bench/chat.py) and a zlib state of ~80 KiB per connection, for
    almost no bytes saved."""

    max_queued_packets = 2000
    _async: dict[str, Any]  # the driver's functions (engine.io sets it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base_ws = self._async.get("websocket")
        if base_ws is not None:

            class TrackedWebSocket(base_ws):  # type: ignore[misc,valid-type]  # a driver class chosen at run time
                async def __call__(self, environ: dict[str, Any]) -> Any:
                    owner = getattr(self.handler, "__self__", None)  # the engine.io socket
                    request = environ.get("aiohttp.request")
                    if owner is not None and request is not None:
                        owner.astrolive_transport = request.transport
                    if request is None:
                        return await super().__call__(environ)
                    # engine.io's aiohttp driver, with compression off (see the class docstring).
                    self._sock = web.WebSocketResponse(
                        max_msg_size=self.server.max_http_buffer_size, compress=False
                    )
                    await self._sock.prepare(request)
                    self.environ = environ
                    await self.handler(self)
                    return self._sock

            # `_async` is the driver module's shared dict: copy it before changing it.
            self._async = {**self._async, "websocket": TrackedWebSocket}

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return SlowConsumerQueue(self.max_queued_packets)


class AstroliveServer(socketio.AsyncServer):  # type: ignore[misc]  # socketio has no type hints
    """`socketio.AsyncServer` with capped outbound queues and an ordered chat publisher."""

    relay: Any = None  # realtime.relay.ChatRelay, installed by `register`

    def __init__(self, *, redis_url: str, max_queued_packets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eio.max_queued_packets = max_queued_packets
        # Chat deliveries: published to Redis first and handled by every process (this one too)
        # from its subscription, in Redis order. A write-only manager has its own host id, so the
        # server's own manager does not skip these messages as "already handled here".
        self.ordered = socketio.AsyncRedisManager(
            redis_url, channel=keys.SIO_CHANNEL, write_only=True
        )

    def _engineio_server_class(self) -> type[CappedEngineIOServer]:
        return CappedEngineIOServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        sock = self.eio.sockets.get(eio_sid)
        if sock is not None and isinstance(sock.queue, SlowConsumerQueue):
            sock.queue.on_overflow = lambda: self._drop_slow_consumer(eio_sid)
        return await super()._handle_eio_connect(eio_sid, environ)

    def _drop_slow_consumer(self, eio_sid: str) -> None:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            return
        log.warning("slow consumer disconnected", extra={"eio_sid": eio_sid})
        transport = getattr(sock, "astrolive_transport", None)
        if transport is not None:
            # A websocket writer blocked on a full TCP buffer never returns to the queue.
            transport.abort()
        self.start_background_task(sock.close, wait=False, abort=True)

    async def deliver(self, event: str, data: Any, room: str, skip_sid: str | None = None) -> None:
        """Emit through Redis only, so that all processes see this event in publish order."""
        await self.ordered.emit(event, data, room=room, skip_sid=skip_sid)


def create_sio(settings: Settings, redis_url: str) -> AstroliveServer:
    manager = BatchingRedisManager(redis_url, channel=keys.SIO_CHANNEL)
    origins: Any = settings.cors_origins or "*"
    if settings.is_production and not settings.cors_origins:
        origins = [settings.public_base_url]
    return AstroliveServer(
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


def write_only_emitter(redis_url: str) -> SioEmitter:
    """For workers: emit to rooms served by any web process, without serving sockets."""
    return SioEmitter(BatchingRedisManager(redis_url, channel=keys.SIO_CHANNEL, write_only=True))


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

    async def stop(_: web.Application) -> None:
        await namespace.shutdown()
        if sio.eio.sockets:
            await sio.eio.disconnect()  # every local client; their disconnect handlers run now
        await relay.close()  # stores what is queued, gives its connection back to the pool
        await sio.shutdown()
        listener = getattr(sio.manager, "thread", None)  # the Redis subscription task
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        for manager in (sio.manager, sio.ordered):
            redis = getattr(manager, "redis", None)
            if redis is not None:
                await redis.aclose()

    if app is not None:
        app.on_shutdown.append(stop)
