"""The baseline of tests/bench/chat.py: a bare python-socketio relay, no auth and no storage.

`consultation:join` enters a room; `chat:send` is emitted to the room (minus the sender) and acked
with a per-room counter. Run: python tests/bench/bare_relay.py PORT [--no-deflate]

As it is, python-socketio's aiohttp driver accepts permessage-deflate on websockets (every frame is
compressed); `--no-deflate` refuses it, as astrolive does (realtime/server.py), to show what part of
the difference that alone makes.
"""

from __future__ import annotations

import functools
import sys
from collections import defaultdict
from typing import Any

import socketio
from aiohttp import web


def make_app(*, deflate: bool = True) -> web.Application:
    if not deflate:
        from engineio.async_drivers import aiohttp as driver

        driver.WebSocketResponse = functools.partial(  # the driver module looks it up per socket
            web.WebSocketResponse, compress=False
        )
    sio = socketio.AsyncServer(async_mode="aiohttp", max_http_buffer_size=64 * 1024)
    app = web.Application()
    sio.attach(app)
    counters: dict[str, int] = defaultdict(int)

    async def join(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await sio.enter_room(sid, data["consultation_id"])
        return {"ok": True, "last_seq": counters[data["consultation_id"]]}

    async def send(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        room = data["consultation_id"]
        counters[room] += 1
        seq = counters[room]
        await sio.emit("chat:message", {**data, "seq": seq}, room=room, skip_sid=sid)
        return {"ok": True, "seq": seq}

    sio.on("consultation:join", join)
    sio.on("chat:send", send)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    return app


def main(port: int, deflate: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # same loop as `astrolive serve` where uvloop exists
        pass
    web.run_app(make_app(deflate=deflate), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), "--no-deflate" not in sys.argv[2:])
