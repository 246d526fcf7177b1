"""Real server and worker processes for tests that need them (several processes, kill -9)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from core.settings import Settings
from db import embedded


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process use the test's database, Redis and secret."""
    assert settings.database_url
    assert settings.redis_url
    env = {
        **os.environ,
        "ASTROLIVE_ENV": settings.astrolive_env.value,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_signing_secret(),
        "AUTH_TEST_PHONES": ",".join(f"{p}:{c}" for p, c in settings.auth_test_phones.items()),
        "BILLING_MINUTE_SECONDS": str(settings.billing_minute_seconds),
        "DISCONNECT_GRACE_SECONDS": str(settings.disconnect_grace_seconds),
        "REQUEST_TIMEOUT_SECONDS": str(settings.request_timeout_seconds),
        "DATA_DIR": str(settings.data_dir),
        "RATE_LIMIT_EXEMPT_IPS": ",".join(settings.rate_limit_exempt_ips),
        "LOG_FORMAT": "text",
    }
    env.update(extra)
    return env


class ServerProcess:
    """`python -m astrolive serve --port N` in a child process; its output goes to `log` when
    given (for a test to read after a failure), else nowhere."""

    def __init__(
        self, env: Mapping[str, str], port: int | None = None, log: Path | None = None
    ) -> None:
        self.env = dict(env)
        self.port = port or embedded.free_port()
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def process_id(self) -> str:
        """How the server names itself in meter events (`host:pid`)."""
        assert self.proc is not None
        return f"{socket.gethostname()}:{self.proc.pid}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, wait_seconds: float = 20) -> ServerProcess:
        # The log file is opened here, before any awaiting, and handed to the child.
        out = self.log.open("wb") if self.log else None  # a local file, opened once
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "astrolive", "serve", "--port", str(self.port),
                env=self.env, stdout=out or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        finally:
            if out is not None:
                out.close()  # the child holds its own copy of the descriptor
        deadline = asyncio.get_running_loop().time() + wait_seconds
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}")
                try:
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("server did not become healthy")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no cleanup runs, as in a crash."""
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, wait_seconds: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), wait_seconds)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode
