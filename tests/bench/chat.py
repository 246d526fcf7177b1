"""Chat benchmark: astrolive (auth, PostgreSQL storage, ordering, Redis fan-out) against a bare
python-socketio relay, under the same load from the official Node client.

    .venv/bin/python -m tests.bench.chat [--pairs 200] [--seconds 15]

N consultations, each a user and an astrologer on their own sockets, both sending chat messages
with acks (one in flight per socket) for a fixed time. Prints messages/s, p50/p99 ack latency and
the server's RSS per idle connection, for astrolive and for the bare relay, and their ratio. The
bare relay runs twice: as python-socketio comes (websocket permessage-deflate accepted) and
without deflate, which astrolive refuses (realtime/server.py), so both ratios are printed.
RSS per idle connection is (RSS with M idle sockets - RSS before) / M of the server process,
M = --idle-sockets (default 2N; the Node client cycles over the tokens: several devices each).
Uses its own database (astrolive_bench_<random>, dropped at the end) and a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from db import embedded
from db.migrate import migrate
from db.pool import connect, create_pool
from tests.conftest import make_settings
from tests.factories import make_astrologer, make_user, token_for
from tests.realtime.support import make_consultation
from tests.servers import ServerProcess, process_env

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
# The server of the real-time benchmarks: no meter loop, quiet logs, no per-socket rate limit
# (the load is the point), a pool big enough for the group commit and the joins.
BENCH_SERVER_ENV = {
    "METER_LOOP": "false",
    "LOG_LEVEL": "WARNING",
    "REALTIME_EVENTS_PER_SECOND": "100000",
    "REALTIME_EVENT_BURST": "100000",
    "DB_POOL_MAX": "20",
}


def server_dsn() -> str:
    for var in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return "postgresql://postgres@127.0.0.1:5432/postgres"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def node(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "bench.js"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err.decode())
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def idle_rss_per_connection(pid: int, spec_file: Path, connections: int) -> float:
    """(RSS with `connections` idle sockets - RSS without) / connections, in KiB."""
    await asyncio.sleep(1)
    before = rss_kib(pid)
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "bench.js"), "idle", str(spec_file), str(connections),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdin is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert json.loads(line)["ready"] == connections
    await asyncio.sleep(2)
    after = rss_kib(pid)
    proc.stdin.close()
    await proc.wait()
    return (after - before) / connections


async def wait_healthy(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


async def run(pairs: int, seconds: float, idle_sockets: int) -> None:
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        npm = await asyncio.create_subprocess_exec(
            "npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await npm.wait()
    workdir = Path(tempfile.mkdtemp(prefix="astrolive-bench-"))
    redis_port = embedded.free_port()
    redis = embedded.start_redis(redis_port, workdir)
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server_dsn(), "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server_dsn(), name)
    procs: list[Any] = []
    try:
        conn = await connect(dsn)
        await migrate(conn)
        await conn.close()
        settings = make_settings(dsn, f"redis://127.0.0.1:{redis_port}/0", workdir / "data")
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

        # astrolive
        env = process_env(settings, **BENCH_SERVER_ENV)
        server = ServerProcess(env)
        await server.start()
        procs.append(server)
        assert server.proc is not None
        spec_file = workdir / "astrolive.json"
        spec_file.write_text(json.dumps({"url": server.url, "pairs": spec_pairs}))
        ours_rss = await idle_rss_per_connection(server.proc.pid, spec_file, idle_sockets)
        ours = await node("load", str(spec_file), str(seconds))
        await server.stop()

        # the bare relay, as python-socketio comes (permessage-deflate on), then without deflate
        bare_runs: list[tuple[dict[str, Any], float]] = []
        for flags in ([], ["--no-deflate"]):
            port = embedded.free_port()
            bare = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).with_name("bare_relay.py")), str(port), *flags
            )
            procs.append(bare)
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(url)
            bare_file = workdir / "bare.json"
            bare_file.write_text(json.dumps({"url": url, "pairs": spec_pairs}))
            bare_rss = await idle_rss_per_connection(bare.pid, bare_file, idle_sockets)
            bare_runs.append((await node("load", str(bare_file), str(seconds)), bare_rss))
            bare.terminate()
            await bare.wait()
    finally:
        for p in procs:
            if isinstance(p, ServerProcess):
                if p.proc is not None and p.proc.returncode is None:
                    await p.stop()
            elif p.returncode is None:
                p.terminate()
                await p.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        redis.terminate()
        redis.wait(5)

    print(
        f"chat benchmark: {pairs} consultations ({2 * pairs} sockets), {seconds:g} s, Node client;"
        f" RSS over {idle_sockets} idle sockets"
    )
    (base, base_rss), (plain, plain_rss) = bare_runs
    for label, r, rss in (
        ("astrolive", ours, ours_rss),
        ("bare relay", base, base_rss),
        ("bare, no deflate", plain, plain_rss),
    ):
        print(
            f"  {label:<16}  {r['per_second']:8.0f} msg/s   p50 {r['p50_ms']:6.1f} ms   "
            f"p99 {r['p99_ms']:6.1f} ms   errors {r['errors']}   delivered {r['received']}   "
            f"RSS/idle conn {rss:5.1f} KiB"
        )
    ratio = ours["per_second"] / base["per_second"] if base["per_second"] else float("nan")
    print(f"  ratio astrolive / bare relay: {ratio:.2f}x  (target >= 0.8x)")
    ratio = ours["per_second"] / plain["per_second"] if plain["per_second"] else float("nan")
    print(f"  ratio astrolive / bare relay without deflate: {ratio:.2f}x")
    print(f"  astrolive RSS per idle connection: {ours_rss:.1f} KiB  (target <= 40 KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--idle-sockets", type=int, default=0, help="sockets for the RSS measure (default 2N)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.pairs, args.seconds, args.idle_sockets or 2 * args.pairs))


if __name__ == "__main__":
    main()
