"""Live sessions through the real path: two web processes, real Socket.IO clients, short minutes.

    .venv/bin/python tests/bench/live_sessions.py [--sessions 1000] [--minute 1] [--duration 30]
                                                  [--grace 30]

Creates `astrolive_bench_<random>` on the server of DATABASE_URL and a private redis-server,
migrates, makes N funded users, N astrologers and N accepted consultations, starts two
`astrolive serve` processes, connects 2N python-socketio clients (each user to one process, its
astrologer to the other) and has every pair join: the second join starts the session, and the
web processes' meter loops charge every minute from then on. After `--duration` seconds every
user ends their session (`consultation:end`). Then it prints:

- the tick lag (due time -> charge, from `meter_events`): p50, p99, max (issue 12 targets at
  1,000 sessions with 1-second minutes: p99 <= 1 s, max <= 2 s);
- what the clients saw (due time -> `session:tick` received by the user);
- the bill check: every session billed exactly the minutes that started before its stop, each
  once, and the ledger equal to the meter.

The machine is shared: run it short, and report the figures with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncpg  # after the path setup above, so the script runs from anywhere
import socketio  # same reason

from core.settings import Env, Settings  # same reason
from core.tokens import issue_access_token  # same reason
from db import embedded  # same reason
from db.migrate import migrate  # same reason
from db.pool import connect  # same reason
from tests.bench.meter import RATE, people  # same reason
from tests.servers import ServerProcess  # same reason

SECRET = "bench-" + "x" * 40

BILL_CHECK = """
WITH m AS (
    SELECT consultation_id, started_at, minute_seconds, charged_minutes, stopped_at,
           CASE WHEN stopped_at IS NULL THEN NULL ELSE
               ceil(extract(epoch FROM stopped_at - started_at) / minute_seconds)::int END
               AS owed
      FROM meters
), l AS (
    SELECT consultation_id, count(*) AS n, count(DISTINCT idempotency_key) AS distinct_n
      FROM transfers WHERE idempotency_key LIKE 'charge:%' GROUP BY consultation_id
)
SELECT count(*) AS sessions,
       count(*) FILTER (WHERE m.stopped_at IS NULL) AS not_stopped,
       count(*) FILTER (WHERE m.charged_minutes <> m.owed) AS wrong_bill,
       count(*) FILTER (WHERE coalesce(l.n, 0) <> m.charged_minutes) AS ledger_mismatch,
       count(*) FILTER (WHERE l.n <> l.distinct_n) AS doubled,
       count(*) FILTER (WHERE c.end_reason <> 'user_ended') AS other_end,
       sum(m.charged_minutes) AS minutes
  FROM m LEFT JOIN l USING (consultation_id)
  JOIN consultations c ON c.id = m.consultation_id
"""
# The lag over the run by 2-second windows of due time (a start-up backlog or a stall shows here).
BY_WINDOW = """
SELECT (floor((extract(epoch FROM due_at) - $1) / 2) * 2)::int AS w, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM at - due_at)) AS p50,
       max(extract(epoch FROM at - due_at))::float AS max
  FROM meter_events WHERE kind = 'charge' AND minute > 1 GROUP BY 1 ORDER BY 1
"""
END_REASONS = """
SELECT c.end_reason, m.stop_party, count(*) AS n,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM meter_events e
                                       WHERE e.consultation_id = c.id AND e.kind = 'refund'))
           AS refunded
  FROM consultations c JOIN meters m ON m.consultation_id = c.id
 GROUP BY 1, 2 ORDER BY 3 DESC
"""
DUE_TIMES = """
SELECT consultation_id, minute, extract(epoch FROM due_at)::float8 AS due
  FROM meter_events WHERE kind = 'charge' AND minute > 1
"""
LAG = """
SELECT count(*) AS charges,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
       max(lag) AS max
  FROM (SELECT extract(epoch FROM at - due_at)::float AS lag FROM meter_events
         WHERE kind = 'charge' AND minute > 1) l
"""


async def setup(dsn: str, n: int) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """(consultation, user, astrologer) of N accepted consultations with funded wallets."""
    conn = await connect(dsn)
    try:
        await migrate(conn)
        users, astros = await people(conn, n, RATE * 100_000)
        cids = [uuid.uuid4() for _ in range(n)]
        await conn.execute(
            "INSERT INTO consultations (id, user_id, astrologer_id, type, status, rate, list_rate,"
            " share_percent, accepted_at)"
            " SELECT c, u, a, 'chat', 'accepted', $4, $4, 60, now()"
            "   FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(c, u, a)",
            cids, users, astros, RATE,
        )  # fmt: skip
        await conn.execute("ANALYZE")
        return list(zip(cids, users, astros, strict=True))
    finally:
        await conn.close()


async def tokens(dsn: str, settings: Settings, ids: list[uuid.UUID], role: str) -> list[str]:
    conn = await connect(dsn)
    try:
        rows = await conn.fetch(
            "INSERT INTO auth_sessions (user_id) SELECT * FROM unnest($1::uuid[]) RETURNING id,"
            " user_id",
            ids,
        )
    finally:
        await conn.close()
    login = {r["user_id"]: r["id"] for r in rows}
    return [issue_access_token(settings, i, role, login[i]) for i in ids]  # type: ignore[arg-type]


class Client:
    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.ticks: list[tuple[str, int, float]] = []  # (consultation, minute, received at)

        async def on_tick(data: Any) -> None:
            self.ticks.append((data["consultation_id"], data["minute"], time.time()))

        self.sio.on("session:tick", on_tick)


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
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
        astrolive_env=Env.DEVELOPMENT,
        database_url=dsn,
        redis_url=redis_url,
        jwt_secret=SECRET,
        access_token_ttl_seconds=3600,
    )
    env = dict(os.environ)
    env.update(
        ASTROLIVE_ENV="development", DATABASE_URL=dsn, REDIS_URL=redis_url, JWT_SECRET=SECRET,
        BILLING_MINUTE_SECONDS=str(args.minute), DISCONNECT_GRACE_SECONDS=str(args.grace),
        ACCESS_TOKEN_TTL_SECONDS="3600", RATE_LIMIT_EXEMPT_IPS="127.0.0.1",
        REALTIME_EVENTS_PER_SECOND="1000", LOG_LEVEL="WARNING", LOG_FORMAT="text",
        DATA_DIR=str(workdir / "data"), DB_POOL_MAX="20",
    )  # fmt: skip
    servers = [ServerProcess(env, log=workdir / f"server{i}.log") for i in range(2)]
    clients: list[tuple[Client, Client]] = []
    try:
        t0 = time.time()
        sessions = await setup(dsn, args.sessions)
        user_tokens = await tokens(dsn, settings, [u for _, u, _ in sessions], "user")
        astro_tokens = await tokens(dsn, settings, [a for _, _, a in sessions], "astrologer")
        for s in servers:
            await s.start(wait_seconds=60)
        print(f"setup: {args.sessions} sessions in {time.time() - t0:.1f} s")
        t0 = time.time()
        sem = asyncio.Semaphore(50)

        async def connect_pair(i: int) -> tuple[Client, Client]:
            u, a = Client(), Client()
            async with sem:
                await u.sio.connect(servers[i % 2].url, auth={"token": user_tokens[i]},
                                    transports=["websocket"], wait_timeout=30)  # fmt: skip
                await a.sio.connect(servers[(i + 1) % 2].url, auth={"token": astro_tokens[i]},
                                    transports=["websocket"], wait_timeout=30)  # fmt: skip
            return u, a

        clients = list(await asyncio.gather(*(connect_pair(i) for i in range(args.sessions))))
        print(f"connected {2 * args.sessions} sockets in {time.time() - t0:.1f} s")
        t0 = time.time()

        failed: set[int] = set()  # an overloaded client machine drops sockets: counted, not fatal

        async def join(i: int) -> None:
            join = {"consultation_id": str(sessions[i][0])}
            async with sem:
                u, a = clients[i]
                for c in (u, a):
                    try:
                        ack = await c.sio.call("consultation:join", join, timeout=60)
                    except (socketio.exceptions.SocketIOError, OSError):
                        failed.add(i)
                        return
                    if not ack["ok"]:
                        failed.add(i)
                        return

        t_run = time.time()
        await asyncio.gather(*(join(i) for i in range(args.sessions)))
        print(f"all sessions started in {time.time() - t0:.1f} s; running {args.duration} s")
        await asyncio.sleep(args.duration)

        async def end(i: int) -> None:
            async with sem:
                try:
                    await clients[i][0].sio.call(
                        "consultation:end", {"consultation_id": str(sessions[i][0])}, timeout=60
                    )
                except (socketio.exceptions.SocketIOError, OSError):
                    failed.add(i)  # the session still ends (disconnected) and is checked

        await asyncio.gather(*(end(i) for i in range(args.sessions) if i not in failed))
        await asyncio.sleep(args.grace + 2 if failed else 0)
        await asyncio.sleep(2)
        conn = await connect(dsn)
        try:
            lag = await conn.fetchrow(LAG)
            bill = await conn.fetchrow(BILL_CHECK)
            windows = await conn.fetch(BY_WINDOW, t_run)
            reasons = await conn.fetch(END_REASONS)
            due = {(str(r["consultation_id"]), r["minute"]): r["due"]
                   for r in await conn.fetch(DUE_TIMES)}  # fmt: skip
        finally:
            await conn.close()
        for w in windows:
            print(f"  due {w['w']:>4}-{w['w'] + 2:<4}s: {w['n']:>6} charges "
                  f"p50={w['p50'] * 1000:.0f} ms max={w['max'] * 1000:.0f} ms")  # fmt: skip
        assert lag is not None
        assert bill is not None
        seen = sorted(at - due[(c, m)] for u, _ in clients for c, m, at in u.ticks if (c, m) in due)
        print(f"client-side failures (dropped sockets, timed-out calls): {len(failed)}")
        for r in reasons:
            print(f"  ended {r['end_reason']} ({r['stop_party']}): {r['n']}, "
                  f"with an overcharge refund: {r['refunded']}")  # fmt: skip
        print(f"sessions={args.sessions} minute={args.minute}s duration={args.duration}s "
              f"web processes=2 cpus={os.cpu_count()} (machine shared)")  # fmt: skip
        print(f"tick lag due->charged (minutes 2+): charges={lag['charges']} "
              f"p50={lag['p50'] * 1000:.0f} ms p99={lag['p99'] * 1000:.0f} ms "
              f"max={lag['max'] * 1000:.0f} ms")  # fmt: skip
        if seen:
            p50, p99 = (seen[min(len(seen) - 1, int(q * len(seen)))] * 1000 for q in (0.5, 0.99))
            print(f"tick lag due->received by the user: n={len(seen)} p50={p50:.0f} ms "
                  f"p99={p99:.0f} ms max={seen[-1] * 1000:.0f} ms")  # fmt: skip
        print(f"bills: sessions={bill['sessions']} minutes={bill['minutes']} "
              f"not_stopped={bill['not_stopped']} wrong_bill={bill['wrong_bill']} "
              f"ledger_mismatch={bill['ledger_mismatch']} doubled={bill['doubled']} "
              f"other_end_reason={bill['other_end']}")  # fmt: skip
        # A session may end `disconnected` when an overloaded client misses its pings: that is a
        # real disconnect, reported above; its bill must still be exact.
        ok = not (bill["not_stopped"] or bill["wrong_bill"] or bill["ledger_mismatch"]
                  or bill["doubled"])  # fmt: skip
        targets = lag["p99"] <= 1.0 and lag["max"] <= 2.0
        print("RESULT:", "every bill exact" if ok else "BILLS WRONG",
              "/ lag within target" if targets else "/ lag over target")  # fmt: skip
        return 0 if ok else 1
    finally:
        await asyncio.gather(
            *(c.sio.disconnect() for pair in clients for c in pair if c.sio.connected),
            return_exceptions=True,
        )
        for s in servers:
            if s.proc is not None:
                await s.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--minute", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=30.0)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
