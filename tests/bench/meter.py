"""Minute meter throughput and punctuality: N concurrent metered sessions, no sockets.

    .venv/bin/python tests/bench/meter.py [--sessions 20000] [--minute 10] [--duration 40]
                                          [--processes 2] [--batch-size 500] [--concurrency 2]
                                          [--no-emit] [--listen]

Creates `astrolive_bench_<random>` on the server of DATABASE_URL (default: the local server) and
a private redis-server, migrates, makes N users with funded wallets, N astrologers and N accepted
consultations, and starts all the sessions with their start times spread evenly over one minute
(a steady state: as many minutes fall due every second). `--processes` meter loops (each its own
OS process, as web processes would run them) charge for `--duration` seconds; with `--listen`
each is also subscribed to the Socket.IO fan-out as a web process with clients is, so it receives
and filters the other's tick batches. Then it prints
charges/s and the lag between each minute's due time and its charge (p50, p99, max), and checks
the ledger: every minute due before the end charged exactly once, none twice, none missing.
Target (issue 7): 20,000 sessions with every minute charged within 2 s of its due time.

Sessions are started in bulk SQL (the same rows `live.session.start_session` writes) so that
the setup does not dominate the run; heartbeats are not simulated (the grace is set far longer
than the run), since the charge path is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncpg  # after the path setup above, so the script runs from anywhere
from redis.asyncio import Redis  # same reason

from astrolive.resources import close_services, open_services  # same reason
from billing.ledger import Leg, account_id, post_transfer  # same reason
from core.services import NullEmitter  # same reason
from core.settings import Env, Settings  # same reason
from db import embedded  # same reason
from db.migrate import migrate  # same reason
from db.pool import connect  # same reason
from live import (
    keys,  # same reason
    meter,  # same reason
)

RATE = 100  # paise a minute
SHARE = 60


def settings_for(args: argparse.Namespace, dsn: str, redis_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
        astrolive_env=Env.DEVELOPMENT,  # production is the default (issue 14)
        database_url=dsn,
        redis_url=redis_url,
        jwt_secret="bench-" + "x" * 32,
        billing_minute_seconds=args.minute,
        disconnect_grace_seconds=10 * 3600.0,
        realtime_heartbeat_seconds=3600.0,  # heartbeats are not simulated (see above)
        meter_batch_size=args.batch_size,
        meter_concurrency=args.concurrency,
        meter_sweep_seconds=3600.0,
        db_pool_min=2,
        db_pool_max=max(4, args.concurrency + 2),
        log_format="text",
        log_level="WARNING",
    )


async def people(
    conn: asyncpg.Connection[Any], n: int, funds: int
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """N users with `funds` in their wallets and N approved astrologers (bulk SQL), in id order;
    also used by tests/bench/live_sessions.py."""
    for prefix, role in (("+9197", "user"), ("+9196", "astrologer")):
        await conn.execute(
            "INSERT INTO users (phone, role) SELECT $2 || lpad(g::text, 8, '0'), $3"
            "  FROM generate_series(1, $1) g",
            n, prefix, role,
        )  # fmt: skip
    ids = "SELECT id FROM users WHERE role = $1 ORDER BY id"
    users = [r["id"] for r in await conn.fetch(ids, "user")]
    astros = [r["id"] for r in await conn.fetch(ids, "astrologer")]
    await conn.execute(
        "INSERT INTO astrologer_profiles (user_id, display_name, rate_chat, verification)"
        " SELECT id, 'Bench', $1, 'approved' FROM users WHERE role = 'astrologer'",
        RATE,
    )
    await conn.execute(
        "INSERT INTO accounts (kind, owner_id, currency)"
        " SELECT 'user_wallet', id, 'INR' FROM users WHERE role = 'user'"
    )
    wallets = {
        r["owner_id"]: r["id"]
        for r in await conn.fetch("SELECT owner_id, id FROM accounts WHERE kind = 'user_wallet'")
    }
    promotions = await account_id(conn, "promotions", None)
    await post_transfer(
        conn,
        key=f"bench:fund:{uuid.uuid4()}",
        kind="bonus",
        legs=[Leg(promotions, -funds * n)] + [Leg(wallets[u], funds) for u in users],
    )
    return users, astros


async def setup(dsn: str, redis_url: str, n: int, minute: float, duration: float) -> float:
    """Users, astrologers, funded wallets, accepted consultations; then every session started
    (meters rows, consultations active, Redis timers). Returns the first start time."""
    conn = await connect(dsn)
    try:
        await migrate(conn)
        minutes = int(duration / minute) + 5
        t = time.time()
        users, astros = await people(conn, n, RATE * minutes)
        cids = [uuid.uuid4() for _ in range(n)]
        # Room for the rest of the setup and for the meter processes to start: 1 s per 2,000
        # sessions plus 3 s, so no minute is already late when the loops begin.
        first = time.time() + 3.0 + n / 2000
        starts = [first + i * minute / n for i in range(n)]
        from datetime import UTC, datetime

        started = [datetime.fromtimestamp(s, UTC) for s in starts]
        await conn.execute(
            "INSERT INTO consultations (id, user_id, astrologer_id, type, status, rate, list_rate,"
            " share_percent, accepted_at, started_at)"
            " SELECT c, u, a, 'chat', 'active', $4, $4, $5, now(), s"
            "   FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $6::timestamptz[])"
            "     AS t(c, u, a, s)",
            cids, users, astros, RATE, SHARE, started,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO meters (consultation_id, started_at, minute_seconds)"
            " SELECT c, s, $3 FROM unnest($1::uuid[], $2::timestamptz[]) AS t(c, s)",
            cids,
            started,
            minute,
        )
        await conn.execute("ANALYZE")
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            items = {str(c): s for c, s in zip(cids, starts, strict=True)}
            chunk = list(items.items())
            for i in range(0, len(chunk), 5000):
                await redis.zadd(keys.DUE, dict(chunk[i : i + 5000]))
            # The live state start_session writes (live/clock.py START_LUA): both present.
            for i in range(0, n, 5000):
                async with redis.pipeline(transaction=False) as pipe:
                    for c, u, a, s in zip(
                        cids[i : i + 5000], users[i : i + 5000], astros[i : i + 5000],
                        starts[i : i + 5000], strict=True,
                    ):  # fmt: skip
                        pipe.hset(
                            keys.state(c),
                            mapping={"user": str(u), "astrologer": str(a), f"seen:{u}": s,
                                     f"seen:{a}": s},
                        )  # fmt: skip
                    await pipe.execute()
            await redis.set(keys.ALIVE, "bench")
        finally:
            await redis.aclose()
        print(f"setup: {n} sessions in {time.time() - t:.1f} s; first minute due in "
              f"{first - time.time():.1f} s")  # fmt: skip
        return first
    finally:
        await conn.close()


async def run_loop(args: argparse.Namespace) -> None:
    """One meter process: charge until SIGTERM."""
    settings = settings_for(args, args.dsn, args.redis_url)
    emitter: Any = NullEmitter()
    sio: Any = None
    if args.listen:
        # As a web process with clients: its Socket.IO manager subscribed to the fan-out channel,
        # so it also receives (and filters for local rooms) every other process's emits.
        from realtime.server import SioEmitter, create_sio

        sio = create_sio(settings, args.redis_url)
        sio.manager_initialized = True
        sio.manager.initialize()
        emitter = SioEmitter(sio)
    elif not args.no_emit:
        from realtime.server import write_only_emitter

        emitter = write_only_emitter(args.redis_url)
    services = await open_services(settings, emitter)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with meter.running_loop(services):
            await stop.wait()
    finally:
        if sio is not None:
            sio.manager.thread.cancel()  # the subscription task
            with contextlib.suppress(asyncio.CancelledError):
                await sio.manager.thread
            await sio.manager.redis.aclose()
        await close_services(services)


REPORT = """
SELECT count(*) AS charges,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
       max(lag) AS max,
       count(*) FILTER (WHERE lag > 2) AS late,
       min(at) AS first_at, max(at) AS last_at
  FROM (SELECT extract(epoch FROM at - due_at)::float AS lag, at FROM meter_events
         WHERE kind = 'charge') l
"""
# The lag over the run, by 5-second windows of due time (a backlog or a stall shows here).
BY_WINDOW = """
SELECT (floor((extract(epoch FROM due_at) - $1) / 5) * 5)::int AS w, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM at - due_at)) AS p50,
       max(extract(epoch FROM at - due_at))::float AS max
  FROM meter_events WHERE kind = 'charge' GROUP BY 1 ORDER BY 1
"""
# Every minute that was due at least `grace` seconds before the stop must be charged: the
# expected count per session against the ledger's charge transfers and the meter's lines.
VERIFY = """
WITH expected AS (
    SELECT m.consultation_id,
           floor(extract(epoch FROM (to_timestamp($1) - m.started_at)) / m.minute_seconds)::int + 1
               AS due_minutes,
           m.charged_minutes
      FROM meters m
), ledger AS (
    SELECT consultation_id, count(*) AS n, count(DISTINCT idempotency_key) AS distinct_n,
           max(split_part(idempotency_key, ':', 3)::int) AS last_minute
      FROM transfers WHERE idempotency_key LIKE 'charge:%' GROUP BY consultation_id
), lines AS (
    SELECT consultation_id, count(*) AS n FROM meter_events WHERE kind = 'charge'
     GROUP BY consultation_id
)
SELECT count(*) AS sessions,
       count(*) FILTER (WHERE coalesce(l.n, 0) < e.due_minutes) AS missing,
       count(*) FILTER (WHERE l.n <> l.distinct_n OR l.n <> l.last_minute) AS doubled_or_gaps,
       count(*) FILTER (WHERE coalesce(l.n, 0) <> e.charged_minutes
                           OR coalesce(x.n, 0) <> e.charged_minutes) AS meter_mismatch,
       sum(coalesce(l.n, 0)) AS ledger_charges
  FROM expected e
  LEFT JOIN ledger l USING (consultation_id)
  LEFT JOIN lines x USING (consultation_id)
"""


async def main(args: argparse.Namespace) -> int:
    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server, name)
    port = embedded.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="astrolive-bench-redis-"))
    redis_proc = embedded.start_redis(port, workdir)
    redis_url = f"redis://127.0.0.1:{port}/0"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = await setup(dsn, redis_url, args.sessions, args.minute, args.duration)
        cmd = [sys.executable, __file__, "--loop-only", "--dsn", dsn, "--redis-url", redis_url,
               "--minute", str(args.minute), "--batch-size", str(args.batch_size),
               "--concurrency", str(args.concurrency)]  # fmt: skip
        if args.no_emit:
            cmd.append("--no-emit")
        if args.listen:
            cmd.append("--listen")
        # Popen only forks; the processes run on their own while this coroutine sleeps.
        procs = [subprocess.Popen(cmd) for _ in range(args.processes)]  # noqa: ASYNC220  # our own script, started once
        await asyncio.sleep(max(0.0, first - time.time()) + args.duration)
        stop_at = time.time()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        conn = await connect(dsn)
        try:
            for w in await conn.fetch(BY_WINDOW, first):
                print(
                    f"  due {w['w']:>3}-{w['w'] + 5:<3}s: {w['n']:>6} charges "
                    f"p50={w['p50'] * 1000:.0f} ms max={w['max'] * 1000:.0f} ms"
                )
            r = await conn.fetchrow(REPORT)
            # Minutes due up to 2 s before the stop must all be there (the target's bound).
            v = await conn.fetchrow(VERIFY, stop_at - 2.0)
        finally:
            await conn.close()
        assert r is not None
        assert v is not None
        span = (r["last_at"] - r["first_at"]).total_seconds() if r["charges"] else 0.0
        print(
            f"sessions={args.sessions} minute={args.minute}s duration={args.duration}s "
            f"processes={args.processes} batch={args.batch_size} concurrency={args.concurrency} "
            f"emit={'off' if args.no_emit else 'on'} listen={'on' if args.listen else 'off'} "
            f"cpus={os.cpu_count()}"
        )
        print(
            f"charges={r['charges']} in {span:.1f} s = {r['charges'] / max(span, 1e-9):.0f}/s "
            f"(steady-state demand {args.sessions / args.minute:.0f}/s)"
        )
        print(
            f"lag due->charged: p50={r['p50'] * 1000:.0f} ms p99={r['p99'] * 1000:.0f} ms "
            f"max={r['max'] * 1000:.0f} ms; later than 2 s: {r['late']}"
        )
        print(
            f"ledger check: sessions={v['sessions']} ledger_charges={v['ledger_charges']} "
            f"missing(due >2 s before stop, not charged)={v['missing']} "
            f"doubled_or_gaps={v['doubled_or_gaps']} meter_vs_ledger_mismatch={v['meter_mismatch']}"
        )
        ok = v["missing"] == 0 and v["doubled_or_gaps"] == 0 and v["meter_mismatch"] == 0
        ok = ok and r["late"] == 0
        print("RESULT:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        redis_proc.terminate()
        redis_proc.wait(10)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--minute", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-emit", action="store_true")
    parser.add_argument(
        "--listen",
        action="store_true",
        help="each meter process also subscribes to the Socket.IO fan-out, as a web process does",
    )
    parser.add_argument("--loop-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.loop_only:
        asyncio.run(run_loop(arguments))
    else:
        sys.exit(asyncio.run(main(arguments)))
