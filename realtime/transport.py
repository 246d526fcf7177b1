"""The one place that touches python-socketio and python-engineio beyond their public API.

The real-time layer needs a few things those libraries do not offer publicly: a Redis manager
that carries many room emits in one message, a bounded outbound queue per socket, websockets
without permessage-deflate, encoding a packet once for many sockets, and reading a socket's
liveness. Each private behaviour used is named here, wrapped in one function or class, and has a
contract test in tests/realtime/test_transport.py that fails if an upgrade changes it; the
libraries are pinned (pyproject.toml) to the minor versions those tests passed with.

Private behaviours relied on (python-socketio 5.18, python-engineio 4.15):

1. `AsyncPubSubManager._handle_emit(message)` handles one `emit` message, from this process or
   from Redis; `_publish(message)` sends one; `host_id` marks a process's own messages. Used by
   `BatchingRedisManager`.
2. `BaseManager.rooms[namespace][room] -> {sid: eio_sid}`: which rooms have sockets here
   (`local_rooms`).
3. `AsyncServer._handle_eio_connect(eio_sid, environ)`: the first call for a new engine.io
   socket, when `eio.sockets[eio_sid]` exists (`TransportServer` installs the overflow hook there).
4. `AsyncServer._engineio_server_class()`: which engine.io server class the Socket.IO server
   builds.
5. engine.io `AsyncServer._async["websocket"]`: the driver's websocket class, built with
   `(handler, server)`, called with the WSGI-like `environ`, whose `handler.__self__` is the
   engine.io socket and whose aiohttp `WebSocketResponse` is `_sock`.
6. engine.io socket: `queue` (an `asyncio.Queue` made by the public `create_queue`, drained by
   the writer, `None` stops it), `closed`, `closing`, `last_ping` (set when a ping is sent, `None`
   once answered), `close(wait=, abort=)`.
7. `AsyncServer.packet_class(EVENT, namespace=, data=).encode()` gives the engine.io message
   payload of an event (the same bytes `emit` would send).
8. `AsyncRedisManager.redis` (its client) and `.thread` (its subscription task), closed on
   shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet
from socketio import packet as sio_packet

log = logging.getLogger(__name__)

# One item of a batched emit: (event, data, room).
EmitItem = tuple[str, Any, str]

NAMESPACE = "/"


class BatchingRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]  # socketio has no type hints
    """python-socketio's Redis manager that can also carry many room emits in ONE Redis message.

    `emit_many` is what the minute meter uses for its ticks: with 20,000 live sessions a plain
    `emit` per tick is ~2,000 Redis messages a second that every web process decodes and, for the
    rooms it does not serve, encodes as a packet for nobody. A batch is one message on the same
    channel as every other emit (so it keeps its place among them: `session:started`, the ticks
    and `session:ended` of a consultation arrive in the order they were published), and each
    process delivers locally, in the batch's order, only the items whose room has sockets here.
    It travels as an `emit` message with a `batch` field, handled by `_handle_emit` below (private
    behaviour 1); all processes run this class (server.create_sio, server.write_only_emitter)."""

    async def emit_many(self, items: Sequence[EmitItem], namespace: str = NAMESPACE) -> None:
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
        namespace = message.get("namespace") or NAMESPACE
        rooms = local_rooms(self, namespace)
        if not rooms:
            return
        for event, data, room in message["batch"]:
            if room in rooms:  # a room with sockets in this process
                # The base manager's emit: local delivery only (what the pub/sub manager itself
                # calls for a message from Redis).
                await socketio.AsyncManager.emit(self, event, data, namespace, room=room)


def local_rooms(manager: Any, namespace: str = NAMESPACE) -> dict[str | None, dict[str, str]]:
    """Rooms with sockets in this process: `{room: {sid: eio_sid}}` (private behaviour 2). The
    `None` room holds every connected socket of the namespace."""
    rooms: dict[str | None, dict[str, str]] = manager.rooms.get(namespace) or {}
    return rooms


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
        base_ws = self._async.get("websocket")  # private behaviour 5
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


class TransportServer(socketio.AsyncServer):  # type: ignore[misc]  # socketio has no type hints
    """`socketio.AsyncServer` whose sockets have capped outbound queues: a slow consumer is
    disconnected (and `on_slow_consumer` is told) instead of growing the queue without bound."""

    on_slow_consumer: Callable[[str], None] | None = None

    def __init__(self, *, max_queued_packets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eio.max_queued_packets = max_queued_packets

    def _engineio_server_class(self) -> type[CappedEngineIOServer]:  # private behaviour 4
        return CappedEngineIOServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        sock = self.eio.sockets.get(eio_sid)  # private behaviour 3
        if sock is not None and isinstance(sock.queue, SlowConsumerQueue):
            sock.queue.on_overflow = lambda: self._drop_slow_consumer(eio_sid)
        return await super()._handle_eio_connect(eio_sid, environ)

    def _drop_slow_consumer(self, eio_sid: str) -> None:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            return
        log.warning("slow consumer disconnected", extra={"eio_sid": eio_sid})
        if self.on_slow_consumer is not None:
            self.on_slow_consumer(eio_sid)
        transport = getattr(sock, "astrolive_transport", None)
        if transport is not None:
            # A websocket writer blocked on a full TCP buffer never returns to the queue.
            transport.abort()
        self.start_background_task(sock.close, wait=False, abort=True)


def encode_event(sio: Any, event: str, data: Any) -> eio_packet.Packet:
    """An event encoded once, as the engine.io packet `emit` would queue (private behaviour 7)."""
    encoded = sio.packet_class(sio_packet.EVENT, namespace=NAMESPACE, data=[event, data]).encode()
    return eio_packet.Packet(eio_packet.MESSAGE, encoded)


def emit_local(sio: Any, room: str, event: str, data: Any, skip_sid: str | None) -> int:
    """Emit to every socket of `room` in this process but `skip_sid`: the packet is encoded once
    and queued on each socket directly, without a task per recipient and without suspending, so
    packets go out in the order this is called (private behaviours 2, 6 and 7). Returns how many
    sockets it was queued on."""
    members = local_rooms(sio.manager).get(room)
    if not members:
        return 0
    packet = encode_event(sio, event, data)
    sockets = sio.eio.sockets
    queued = 0
    for sid, eio_sid in list(members.items()):
        if sid == skip_sid:
            continue
        sock = sockets.get(eio_sid)
        if sock is not None and not sock.closed:
            sock.queue.put_nowait(packet)
            queued += 1
    return queued


def socket_alive(sio: Any, sid: str) -> bool:
    """The engine.io socket of `sid` still exists, is open, and answers pings: its last ping was
    answered, or sent less than two ping timeouts ago (private behaviour 6)."""
    eio_sid = sio.manager.eio_sid_from_sid(sid, NAMESPACE)
    sock = sio.eio.sockets.get(eio_sid) if eio_sid else None
    if sock is None or sock.closed or sock.closing:
        return False
    last_ping = sock.last_ping
    return not (last_ping and time.time() - last_ping > 2 * sio.eio.ping_timeout)


def queue_depths(sio: Any) -> Iterable[int]:
    """The outbound queue length of every local engine.io socket (for the metrics)."""
    for sock in list(sio.eio.sockets.values()):
        yield sock.queue.qsize()


async def close_manager(manager: Any) -> None:
    """Stop a Redis manager's subscription task and close its Redis client (private behaviour
    8); python-socketio's own shutdown leaves both."""
    listener = getattr(manager, "thread", None)
    if listener is not None:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
    redis = getattr(manager, "redis", None)
    if redis is not None:
        await redis.aclose()
