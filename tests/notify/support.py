"""Test doubles that are real servers on loopback: an FCM HTTP v1 imitation, and helpers."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from core.services import Services
from workers.context import JobContext


@dataclass
class FcmReply:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # never answer (until the server stops): a provider that hangs
    delay: float = 0.0  # answer after this long: a slow provider


def fcm_error(
    status: int, code: str, message: str = "", *, field_name: str | None = None
) -> FcmReply:
    """An error body as FCM v1 sends it."""
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
    ]
    if field_name:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field_name, "description": message}],
            }
        )
    status_name = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}.get(
        status, "INTERNAL" if status == 500 else "UNAVAILABLE"
    )
    return FcmReply(
        status,
        {"error": {"code": status, "message": message, "status": status_name, "details": details}},
    )


class FakeFcm:
    """`POST /v1/projects/{project}/messages:send` on 127.0.0.1, answering scripted replies in
    order (200 with a message name once the script is used up) and recording each request."""

    def __init__(self) -> None:
        self.script: list[FcmReply] = []
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.accepted: list[dict[str, Any]] = []  # messages answered 200: what phones would get
        self.received = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization", ""))
        self.received.set()
        reply = self.script.pop(0) if self.script else FcmReply()
        if reply.hold:
            await asyncio.sleep(3600)
        await asyncio.sleep(reply.delay)
        if reply.status == 200:
            self.accepted.append(body["message"])
            project = request.match_info["project"]
            name = f"projects/{project}/messages/{uuid.uuid4().hex[:16]}"
            return web.json_response({"name": name}, headers=reply.headers)
        return web.json_response(reply.body or {}, status=reply.status, headers=reply.headers)

    async def start(self) -> FakeFcm:
        app = web.Application()
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def job_ctx(services: Services, job_try: int = 1) -> JobContext:
    """The context arq gives a job, for calling a job function directly."""
    return {"services": services, "settings": services.settings, "job_try": job_try}
