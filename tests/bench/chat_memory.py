"""Memory per idle Socket.IO connection: astrolive against the bare python-socketio relay.

    .venv/bin/python -m tests.bench.chat_memory [--sockets 2000] [--pairs 200]

Each server runs in this process (so that it can be measured from inside), the sockets are opened by
the official Node client (tests/node/bench.js idle), cycling over the pairs' tokens (several
devices per person). For each server: one warm-up round (pools, caches and interned strings reach
their steady size), then
- RSS: (RSS with the sockets open - RSS before) / sockets, each read after `gc.collect()` and
  `malloc_trim(0)`, so freed memory that glibc keeps does not count;
- tracemalloc: the Python allocations still alive with the sockets open, per socket, and where
  they come from (by package). This is what the server holds; RSS adds allocator overhead and the
  C-level buffers of the event loop (uvloop, as `astrolive serve` uses), which tracemalloc does
  not see.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import secrets
import sys
import tempfile
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from astrolive.app import create_app
from db import embedded
from db.migrate import migrate
from db.pool import connect, create_pool
from tests.bench.bare_relay import make_app as make_bare_app
from tests.bench.chat import NODE_DIR, rss_kib, server_dsn
from tests.conftest import make_settings
from tests.factories import make_astrologer, make_user, token_for
from tests.realtime.support import make_consultation

WARM_UP_SOCKETS = 50


def trim() -> None:
    gc.collect()
    # Not glibc: nothing to trim, and RSS then includes what malloc keeps.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def open_sockets(spec_file: Path, count: int, join: bool) -> asyncio.subprocess.Process:
    args = [str(NODE_DIR / "bench.js"), "idle", str(spec_file), str(count)]
    proc = await asyncio.create_subprocess_exec(
        "node", *args, *(["join"] if join else []),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 300)
    assert json.loads(line)["ready"] == count, line
    await asyncio.sleep(2)  # the server's side of the last connects settles
    return proc


async def close_sockets(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    await proc.wait()
    await asyncio.sleep(2)  # the server notices the closes


def package_of(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "python3.11" in parts:
        return "stdlib:" + parts[-1]
    return "/".join(parts[-2:])


def progress(what: str) -> None:
    print(what, file=sys.stderr, flush=True)


async def measure(spec_file: Path, count: int, join: bool) -> dict[str, Any]:
    progress(f"  {count} sockets{' joined' if join else ''}: warm-up, RSS, tracemalloc")
    # A small warm-up round (pools, caches, interned strings); a full-size one would leave freed
    # memory behind that the measured round reuses, hiding its cost from RSS.
    await close_sockets(await open_sockets(spec_file, min(count, WARM_UP_SOCKETS), join))
    trim()
    before = rss_kib(os.getpid())
    proc = await open_sockets(spec_file, count, join)
    trim()
    after = rss_kib(os.getpid())
    await close_sockets(proc)
    trim()
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    proc = await open_sockets(spec_file, count, join)
    trim()
    second = tracemalloc.take_snapshot()
    await close_sockets(proc)
    tracemalloc.stop()
    by_package: dict[str, int] = defaultdict(int)
    for stat in second.compare_to(first, "filename"):
        by_package[package_of(stat.traceback[0].filename)] += stat.size_diff
    total = sum(by_package.values())
    top = sorted(by_package.items(), key=lambda kv: -kv[1])[:8]
    return {
        "rss": (after - before) / count,
        "python": total / 1024 / count,
        "top": [(name, size / 1024 / count) for name, size in top],
    }


async def serve(app: web.Application) -> tuple[str, Callable[[], Awaitable[None]]]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = embedded.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner.cleanup


async def run(sockets: int, pairs: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="astrolive-bench-"))
    redis_port = embedded.free_port()
    redis = embedded.start_redis(redis_port, workdir)
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server_dsn(), "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server_dsn(), name)
    results: list[tuple[str, dict[str, Any]]] = []
    try:
        conn = await connect(dsn)
        await migrate(conn)
        await conn.close()
        settings = make_settings(
            dsn, f"redis://127.0.0.1:{redis_port}/0", workdir / "data", meter_loop=False
        )
        db = await create_pool(dsn, min_size=1, max_size=4)
        spec_pairs = []
        for _ in range(pairs):
            user, astro = await make_user(db), await make_astrologer(db)
            cid = await make_consultation(db, user, astro, status="active")
            spec_pairs.append(
                {
                    "cid": str(cid),
                    "user": await token_for(db, settings, user),
                    "astrologer": await token_for(db, settings, astro),
                }
            )
        await db.close()
        servers: list[tuple[str, Callable[[], web.Application], list[bool]]] = [
            ("astrolive", lambda: create_app(settings), [False, True]),
            ("bare relay", make_bare_app, [False]),
            ("bare, no deflate", lambda: make_bare_app(deflate=False), [False]),
        ]
        for label, factory, joins in servers:
            progress(label)
            url, stop = await serve(factory())
            spec_file = workdir / "spec.json"
            spec_file.write_text(json.dumps({"url": url, "pairs": spec_pairs}))
            for join in joins:
                results.append(
                    (label + (", joined" if join else ""), await measure(spec_file, sockets, join))
                )
            await stop()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        redis.terminate()
        redis.wait(5)
    print(f"memory per idle connection: {sockets} Node sockets, in-process servers, after gc+trim")
    for label, r in results:
        print(f"  {label:<18}  RSS {r['rss']:6.1f} KiB   Python objects {r['python']:6.1f} KiB")
        print("      " + ", ".join(f"{n} {kib:.1f}" for n, kib in r["top"]))
    print("  target: astrolive <= 40 KiB per idle connection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()  # the loop `astrolive serve` runs on
    except ImportError:
        pass
    asyncio.run(run(args.sockets, args.pairs))


if __name__ == "__main__":
    main()
