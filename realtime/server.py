"""The Socket.IO server, attached to the aiohttp app and fanned out between processes via Redis."""

from __future__ import annotations

import logging
from typing import Any

import socketio
from aiohttp import web

from core.errors import AppError
from core.services import Services
from core.settings import Settings
from core.tokens import decode_access_token

log = logging.getLogger(__name__)

SIO = web.AppKey("sio", socketio.AsyncServer)


class SioEmitter:
    """`core.services.Emitter` over a Socket.IO server or a write-only Redis manager."""

    def __init__(self, target: Any) -> None:
        self._target = target

    async def emit(self, event: str, data: Any, room: str) -> None:
        await self._target.emit(event, data, room=room)


def create_sio(settings: Settings, redis_url: str) -> socketio.AsyncServer:
    manager = socketio.AsyncRedisManager(redis_url, channel="astrolive-sio")
    origins: Any = settings.cors_origins or "*"
    if settings.is_production and not settings.cors_origins:
        origins = [settings.public_base_url]
    return socketio.AsyncServer(
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
    return SioEmitter(
        socketio.AsyncRedisManager(redis_url, channel="astrolive-sio", write_only=True)
    )


def register(sio: socketio.AsyncServer, services_of: Any) -> None:
    """Connection handling. `services_of()` returns the app's `Services` once started."""

    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        services: Services = services_of()
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            raise socketio.exceptions.ConnectionRefusedError(
                {"code": "unauthorized", "message": "missing token in auth"}
            )
        try:
            principal = decode_access_token(services.settings, str(token))
        except AppError as err:
            raise socketio.exceptions.ConnectionRefusedError(err.to_dict()) from err
        await sio.save_session(sid, {"principal": principal})
        await sio.enter_room(sid, f"user:{principal.user_id}")
        return True

    sio.on("connect", connect)
