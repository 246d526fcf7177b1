"""Contract tests for the python-socketio / python-engineio private behaviours that
realtime/transport.py relies on (numbered as in its docstring). An upgrade that changes one of
them fails here, not in production; pyproject.toml pins the minor versions these passed with."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import aiohttp
import asyncpg
import engineio
import socketio
from engineio import packet as eio_packet

from core.settings import Settings
from realtime import keys, transport
from realtime.server import SIO
from tests.factories import make_user, token_for
from tests.realtime.support import Peer


def _eio_socket(app: Any, peer: Peer) -> Any:
    sio = app[SIO]
    sid = peer.sio.get_sid("/")
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    return sid, sio.eio.sockets[eio_sid]


async def _connected(start_server: Any, db: asyncpg.Pool[Any], settings: Settings) -> Any:
    url, app = await start_server()
    user = await make_user(db)
    peer = Peer()
    await peer.connect(url, await token_for(db, settings, user))
    return url, app, user, peer


def test_private_names_exist_with_the_signatures_used() -> None:
    # 1, 3, 4, 5, 7, 8: the names transport.py overrides or calls.
    manager = socketio.AsyncRedisManager
    assert list(inspect.signature(manager._handle_emit).parameters) == ["self", "message"]
    assert list(inspect.signature(manager._publish).parameters) == ["self", "data"]
    server = socketio.AsyncServer
    assert list(inspect.signature(server._handle_eio_connect).parameters) == [
        "self",
        "eio_sid",
        "environ",
    ]
    assert callable(server._engineio_server_class)
    assert "create_queue" in vars(engineio.AsyncServer)
    assert socketio.AsyncServer().packet_class is socketio.packet.Packet


async def test_sockets_get_the_capped_queue_and_the_overflow_hook(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # 3, 4, 6: the engine.io server class is ours, its sockets' queues come from create_queue,
    # and _handle_eio_connect runs once the socket is in eio.sockets.
    _, app, _, peer = await _connected(start_server, db, rt_settings)
    try:
        assert isinstance(app[SIO].eio, transport.CappedEngineIOServer)
        _, sock = _eio_socket(app, peer)
        assert isinstance(sock.queue, transport.SlowConsumerQueue)
        assert sock.queue.on_overflow is not None
        assert not sock.closed
        assert not sock.closing
    finally:
        await peer.close()


async def test_slow_consumer_hook_is_told_and_the_socket_closed(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # 6: a `None` packet stops the writer; close(wait=False, abort=True) ends the socket.
    _, app, _, peer = await _connected(start_server, db, rt_settings)
    sio = app[SIO]
    dropped: list[str] = []
    sio.on_slow_consumer = dropped.append
    _, sock = _eio_socket(app, peer)
    gone = asyncio.Event()
    peer.sio.on("disconnect", lambda *_: gone.set())
    try:
        for _ in range(sock.queue.limit + 1):
            sock.queue.put_nowait(transport.encode_event(sio, "x", {}))
        assert dropped == [sock.sid]
        async with asyncio.timeout(15):
            await gone.wait()  # the server cut the connection
    finally:
        await peer.close()


async def test_last_ping_is_cleared_by_the_pong(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # 6: last_ping is set when a ping goes out and None once the pong comes back.
    _, app, _, peer = await _connected(start_server, db, rt_settings)
    sio = app[SIO]
    sid, sock = _eio_socket(app, peer)
    try:
        assert transport.socket_alive(sio, sid)
        sock.last_ping = time.time() - 3 * sio.eio.ping_timeout
        assert not transport.socket_alive(sio, sid)  # a ping unanswered for too long
        await sock.receive(eio_packet.Packet(eio_packet.PONG))
        assert sock.last_ping is None
        assert transport.socket_alive(sio, sid)
        await sock.close(wait=False, abort=True)
        assert not transport.socket_alive(sio, sid)  # closed
    finally:
        await peer.close()


async def test_rooms_map_and_local_emit(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # 2, 7: manager.rooms[ns][room] is {sid: eio_sid}; an event encoded once and queued on the
    # socket reaches the client like an emit.
    _, app, user, peer = await _connected(start_server, db, rt_settings)
    sio = app[SIO]
    sid, sock = _eio_socket(app, peer)
    room = keys.user_room(user.id)
    try:
        assert dict(transport.local_rooms(sio.manager)[room]) == {sid: sock.sid}
        assert transport.emit_local(sio, room, "probe", {"n": 1}, skip_sid=None) == 1
        assert transport.emit_local(sio, room, "probe", {"n": 2}, skip_sid=sid) == 0
        assert transport.emit_local(sio, "no-such-room", "probe", {}, skip_sid=None) == 0
        await peer.wait_for("probe", lambda es: len(es) >= 1)
        assert peer.events["probe"] == [{"n": 1}]
        assert list(transport.queue_depths(sio)) == [sock.queue.qsize()]
    finally:
        await peer.close()


async def test_a_batch_from_another_process_is_delivered_in_order(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings, redis_url: str
) -> None:
    # 1, 8: a message from Redis goes through _handle_emit (our batch branch); a write-only
    # manager publishes with its own host id.
    _, _app, user, peer = await _connected(start_server, db, rt_settings)
    other = transport.BatchingRedisManager(redis_url, channel=keys.SIO_CHANNEL, write_only=True)
    room = keys.user_room(user.id)
    try:
        await other.emit_many([("probe", {"n": n}, room) for n in range(5)])
        await other.emit_many([("probe", {"n": 9}, "user:nobody-here")])
        await peer.wait_for("probe", lambda es: len(es) >= 5)
        assert [e["n"] for e in peer.events["probe"]] == [0, 1, 2, 3, 4]
    finally:
        await peer.close()
        await transport.close_manager(other)


async def test_websockets_refuse_compression_and_remember_their_transport(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    # 5: the driver's websocket class is built with (handler, server), handler.__self__ is the
    # engine.io socket, and our class answers without permessage-deflate.
    url, app = await start_server()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", compress=15) as ws,
    ):
        assert ws.compress == 0  # no permessage-deflate negotiated
        opening = await ws.receive_str()
        assert opening.startswith("0")
        socks = list(app[SIO].eio.sockets.values())
        assert len(socks) == 1
        assert getattr(socks[0], "astrolive_transport", None) is not None


async def test_close_manager_stops_the_subscription(redis_url: str) -> None:
    # 8: a listening manager's subscription task is `.thread`; its client `.redis`.
    manager = transport.BatchingRedisManager(redis_url, channel=keys.SIO_CHANNEL)
    server = socketio.AsyncServer(client_manager=manager, async_mode="aiohttp")
    assert server.manager is manager
    manager.initialize()
    task = manager.thread
    assert isinstance(task, asyncio.Task)
    await asyncio.sleep(0)
    await transport.close_manager(manager)
    assert task.done()
