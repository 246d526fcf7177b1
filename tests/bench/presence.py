"""Presence fan-out benchmark: many connected sockets, then astrologers coming online.

    .venv/bin/python -m tests.bench.presence [--sockets 10000] [--astrologers 1000] [--watch 20]
        [--code DIR]

`--sockets` sockets (the Node client, cycling over `--sockets / 10` user tokens) each watch
`--watch` astrologers (`presence:watch`, a discovery page), then `--astrologers` verified
astrologers connect (each one's connect publishes `online`). Prints how many `presence` events
all sockets received and how long it took until the last one. A server that does not know
`presence:watch` (the code before issue 15) sends every change to every socket: "broadcast".
`--code DIR` runs the server from another source tree (e.g. `git archive HEAD | tar -x -C DIR`
for the "before" figure) against the same venv. One server process; its own database
(astrolive_bench_<random>, dropped at the end) and a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from db import embedded
from db.migrate import migrate
from db.pool import connect, create_pool
from tests.bench.chat import BENCH_SERVER_ENV, NODE_DIR, server_dsn, wait_healthy
from tests.conftest import make_settings
from tests.factories import make_astrologer, make_user, token_for
from tests.servers import process_env


async def run(sockets: int, astrologers: int, watch: int, code: Path | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="astrolive-bench-"))
    redis_port = embedded.free_port()
    redis = embedded.start_redis(redis_port, workdir)
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server_dsn(), "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server_dsn(), name)
    server: asyncio.subprocess.Process | None = None
    try:
        conn = await connect(dsn)
        await migrate(conn)
        await conn.close()
        settings = make_settings(dsn, f"redis://127.0.0.1:{redis_port}/0", workdir / "data")
        db = await create_pool(dsn, min_size=1, max_size=4)
        users = [await make_user(db) for _ in range(max(1, sockets // 10))]
        astros = [await make_astrologer(db) for _ in range(astrologers)]
        spec = {
            "watchers": [await token_for(db, settings, u) for u in users],
            "sockets": sockets,
            "watch": min(watch, astrologers),
            "astrologers": [
                {"id": str(a.id), "token": await token_for(db, settings, a)} for a in astros
            ],
        }
        await db.close()
        env = process_env(settings, **BENCH_SERVER_ENV)
        port = embedded.free_port()
        with (workdir / "server.log").open("wb") as log:  # the child keeps its own descriptor
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "astrolive", "serve", "--port", str(port),
                env=env, cwd=str(code) if code else None, stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url)
        spec_file = workdir / "presence.json"
        spec_file.write_text(json.dumps({"url": url, **spec}))
        node = await asyncio.create_subprocess_exec(
            "node", "--max-old-space-size=4096", str(NODE_DIR / "presence.js"), str(spec_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await node.communicate()
        if node.returncode != 0:
            raise RuntimeError(err.decode())
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        if server is not None and server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 15)
            except TimeoutError:  # shutting 10,000 sockets down cleanly is not what is measured
                server.kill()
                await server.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        redis.terminate()
        redis.wait(5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--astrologers", type=int, default=1_000)
    parser.add_argument("--watch", type=int, default=20, help="astrologers each socket watches")
    parser.add_argument("--code", type=Path, default=None, help="run the server from this tree")
    args = parser.parse_args()
    r = asyncio.run(run(args.sockets, args.astrologers, args.watch, args.code))
    rate = r["presence_events"] / r["seconds"] if r["seconds"] else float("nan")
    print(
        f"presence benchmark ({r['mode']}): {r['sockets']} sockets watching {args.watch} each, "
        f"{r['astrologers']} astrologers coming online: {r['presence_events']} presence events "
        f"delivered in {r['seconds']:.1f} s ({rate:.0f}/s; connects took "
        f"{r['connect_seconds']:.1f} s)"
    )


if __name__ == "__main__":
    main()
