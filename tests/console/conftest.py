"""Fixtures of the console's browser tests: the real server and worker as subprocesses on a free
port (against the test session's database and Redis), and Debian's Chromium driven by Playwright's
async API (the sync API cannot run inside the suite's asyncio loop).

Screenshots go to `test-output/console/` in the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import asyncpg
import pytest

from db import embedded
from db.pool import create_pool
from tests.conftest import TEST_PHONES
from tests.console.helpers import Watched, new_page

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
READY_SECONDS = 25.0  # a cold start imports aiortc and opens pools; well under the test timeout


@dataclass
class ConsoleServer:
    base_url: str
    log_dir: Path
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    files: list[BinaryIO] = field(default_factory=list)

    async def routes(self) -> set[str]:
        """Paths of the served OpenAPI document (what the backend has built so far)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.base_url}/v1/openapi.json") as resp,
        ):
            body = await resp.json()
        return set(body.get("paths", {}))

    async def require(self, *paths: str) -> None:
        """Skip the test, naming what is missing, when a backend route it drives is not built."""
        missing = [p for p in paths if p not in await self.routes()]
        if missing:
            pytest.skip("backend routes not built yet: " + ", ".join(missing))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def server_env(database_url: str, redis_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": "console-test-secret-" + "x" * 32,
        "AUTH_TEST_PHONES": TEST_PHONES,
        "BILLING_MINUTE_SECONDS": "1",
        "TEST_GATEWAY_DELAY_SECONDS": "0.5",
        "STUN_URLS": "",  # loopback only: no public STUN server to wait for
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        "DATA_DIR": str(data_dir),
        "WORKER_METRICS_PORT": "0",
        "HOST": "127.0.0.1",
    }
    env.update(extra)
    return env


async def start_server(
    database_url: str, redis_url: str, tmp: Path, *, worker: bool = True, **extra: str
) -> ConsoleServer:
    port = embedded.free_port()
    env = server_env(database_url, redis_url, tmp / "data", **extra)
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = ConsoleServer(f"http://127.0.0.1:{port}", log_dir)
    commands: list[tuple[str, Sequence[str]]] = [("web", ["serve", "--port", str(port)])]
    if worker:
        commands.append(("worker", ["worker"]))
    for name, args in commands:
        log = (log_dir / f"{name}.log").open("wb")
        server.files.append(log)
        server.procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "astrolive",
                *args,
                env=env,
                cwd=tmp,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + READY_SECONDS
    async with aiohttp.ClientSession() as http:
        while True:
            if server.procs[0].returncode is not None:
                await stop_server(server)
                pytest.fail("the server exited:\n" + server.logs())
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{server.base_url}/readyz") as resp:
                    if resp.status == 200:
                        return server
            if time.monotonic() > deadline:
                await stop_server(server)
                pytest.fail("the server did not become ready:\n" + server.logs())
            await asyncio.sleep(0.2)


async def stop_server(server: ConsoleServer) -> None:
    for proc in server.procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in server.procs:
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    for file in server.files:
        file.close()


@pytest.fixture
async def console(
    database_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[ConsoleServer]:
    server = await start_server(database_url, redis_url, tmp_path)
    try:
        yield server
    finally:
        await stop_server(server)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A plain pool for factories (no app services: the subprocesses are the app)."""
    created = await create_pool(database_url, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240  # one stat at session start
        pytest.skip("Debian's Chromium is not installed (apt-get install chromium, or ./dev test)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


OpenPage = Callable[..., Awaitable[Watched]]


@pytest.fixture
async def open_page(browser: Any, console: ConsoleServer) -> AsyncIterator[OpenPage]:
    """Open the console in a fresh browser context (its own sign-in); all closed at the end, before
    the server stops, so that no open socket holds up its graceful shutdown."""
    contexts: list[Any] = []

    async def opener(*, phone_sized: bool = False, prepare: Any = None) -> Watched:
        watched = await new_page(
            browser, console.base_url, phone_sized=phone_sized, prepare=prepare
        )
        contexts.append(watched.page.context)
        return watched

    yield opener
    for context in contexts:
        await context.close()
