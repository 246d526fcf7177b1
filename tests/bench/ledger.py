"""Ledger throughput: single postings and the meter's batch path, on a scratch database.

    .venv/bin/python tests/bench/ledger.py [--wallets 2000] [--single 5000] [--batches 40]
                                           [--batch-size 500] [--concurrency 16]

Creates `astrolive_bench_<random>` on the server of DATABASE_URL (default: the local server),
migrates it, funds the wallets, measures, verifies the whole ledger with reconciliation, and drops
the database. Targets (issue 4): batch >= 8,000 charges/s, single postings >= 1,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncpg  # after the path setup above, so the script runs from anywhere

from billing.ledger import (  # same reason
    Charge,
    Leg,
    account_id,
    post_charges,
    post_transfer,
    rollup_system_balances,
)
from billing.reconcile import reconcile  # same reason
from db.embedded import with_database  # same reason
from db.migrate import migrate  # same reason
from db.pool import connect, create_pool  # same reason

RATE = 100  # paise a minute
SHARE = 60
FUNDS = 10_000_000  # per wallet: never the limit in this benchmark


class CpuClock:
    """CPU seconds used by this process and the PostgreSQL backends serving `pool`: on a machine
    shared with other work, charges per CPU-second is the figure that does not depend on load."""

    def __init__(self, backend_pids: list[int]) -> None:
        self.pids = backend_pids
        self.tick = os.sysconf("SC_CLK_TCK")

    def _backends(self) -> float:
        total = 0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # not Linux, or the server runs elsewhere: client CPU only
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total / self.tick

    def now(self) -> tuple[float, float]:
        t = os.times()
        return t.user + t.system, self._backends()


async def backend_pids(pool: asyncpg.Pool[Any], size: int) -> list[int]:
    conns = [await pool.acquire() for _ in range(size)]
    try:
        return [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
    finally:
        for c in conns:
            await pool.release(c)


def show(label: str, count: int, wall: float, cpu: tuple[float, float]) -> float:
    client, server = cpu
    rate = count / wall
    print(
        f"{label}: {rate:,.0f} charges/s wall-clock over {count:,}; "
        f"CPU {client:.2f} s client + {server:.2f} s PostgreSQL = "
        f"{count / max(client + server, 1e-9):,.0f} charges per CPU-second"
    )
    return rate


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def setup(dsn: str, wallets: int) -> tuple[list[uuid.UUID], list[uuid.UUID], list[uuid.UUID]]:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        users = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO users (phone) SELECT '+9197' || lpad(g::text, 8, '0')"
                " FROM generate_series(1, $1) g RETURNING id",
                wallets,
            )
        ]
        astros = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO users (phone, role) SELECT '+9196' || lpad(g::text, 8, '0'),"
                " 'astrologer' FROM generate_series(1, $1) g RETURNING id",
                max(1, wallets // 10),
            )
        ]
        consultations = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO consultations (user_id, astrologer_id, type, status, rate,"
                " share_percent) SELECT u, a, 'chat', 'requested', $3, $4"
                " FROM unnest($1::uuid[], $2::uuid[]) AS t(u, a) RETURNING id",
                users,
                [astros[i % len(astros)] for i in range(len(users))],
                RATE,
                SHARE,
            )
        ]
        # One recharge-like transfer funds every wallet (the clearing account pays).
        clearing = await account_id(conn, "gateway_clearing", None)
        legs = [Leg(clearing, -FUNDS * len(users))]
        for user in users:
            legs.append(Leg(await account_id(conn, "user_wallet", user), FUNDS))
        for astro in astros:
            await account_id(conn, "astrologer_earnings", astro)
        await account_id(conn, "platform_revenue", None)
        await account_id(conn, "promotions", None)
        await post_transfer(conn, key="bench:funding", kind="bench_funding", legs=legs)
        return users, [astros[i % len(astros)] for i in range(len(users))], consultations
    finally:
        await conn.close()


async def bench_single(
    pool: asyncpg.Pool[Any],
    users: list[uuid.UUID],
    astro_of: list[uuid.UUID],
    consultations: list[uuid.UUID],
    count: int,
    concurrency: int,
) -> float:
    async with pool.acquire() as conn:
        wallets = [await account_id(conn, "user_wallet", u) for u in users]
        earnings = {a: await account_id(conn, "astrologer_earnings", a) for a in set(astro_of)}
        revenue = await account_id(conn, "platform_revenue", None)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def worker() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                n = queue.get_nowait()
                i = n % len(users)
                await post_transfer(
                    conn,
                    key=f"charge:{consultations[i]}:s{n}",
                    kind="consultation_charge",
                    legs=[
                        Leg(wallets[i], -RATE),
                        Leg(earnings[astro_of[i]], SHARE),
                        Leg(revenue, RATE - SHARE),
                    ],
                    consultation_id=consultations[i],
                )

    clock = CpuClock(await backend_pids(pool, concurrency))
    started, (c0, s0) = time.perf_counter(), clock.now()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, (c1, s1) = time.perf_counter() - started, clock.now()
    return show(
        f"single postings (post_transfer, {concurrency} connections)",
        count,
        wall,
        (c1 - c0, s1 - s0),
    )


def charges_for(
    users: list[uuid.UUID],
    astro_of: list[uuid.UUID],
    consultations: list[uuid.UUID],
    start: int,
    size: int,
    tag: str,
) -> list[Charge]:
    out = []
    for n in range(start, start + size):
        i = n % len(users)
        out.append(
            Charge(
                key=f"charge:{consultations[i]}:{tag}{n}",
                consultation_id=consultations[i],
                user_id=users[i],
                astrologer_id=astro_of[i],
                amount=RATE,
                astrologer_share=SHARE,
            )
        )
    return out


async def bench_batches(
    pool: asyncpg.Pool[Any],
    users: list[uuid.UUID],
    astro_of: list[uuid.UUID],
    consultations: list[uuid.UUID],
    batches: int,
    size: int,
    streams: int,
    tag: str,
) -> float:
    # Each stream charges its own slice of the sessions, as meter processes would.
    per = len(users) // streams
    prepared = [
        [
            charges_for(
                users[s * per : (s + 1) * per],
                astro_of[s * per : (s + 1) * per],
                consultations[s * per : (s + 1) * per],
                b * size,
                size,
                tag,
            )
            for b in range(batches // streams)
        ]
        for s in range(streams)
    ]

    async def stream(mine: list[list[Charge]]) -> None:
        async with pool.acquire() as conn:
            for batch in mine:
                results = await post_charges(conn, batch)
                assert all(r.status == "posted" for r in results)

    clock = CpuClock(await backend_pids(pool, pool.get_size()))
    started, (c0, s0) = time.perf_counter(), clock.now()
    await asyncio.gather(*(stream(p) for p in prepared))
    wall, (c1, s1) = time.perf_counter() - started, clock.now()
    total = sum(len(b) for p in prepared for b in p)
    return show(
        f"batch path (post_charges, batches of {size}, {streams} stream(s))",
        total,
        wall,
        (c1 - c0, s1 - s0),
    )


async def main(args: argparse.Namespace) -> int:
    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(server, name)
    try:
        version = await admin.fetchval("SHOW server_version")
        loop = type(asyncio.get_running_loop()).__module__
        print(
            f"PostgreSQL {version}; {os.cpu_count()} cores ({cpu_model()}); "
            f"Python {platform.python_version()}, loop {loop}"
        )
        print(f"load average before: {os.getloadavg()[0]:.2f} (other work on this machine)")
        t0 = time.perf_counter()
        users, astro_of, consultations = await setup(dsn, args.wallets)
        print(
            f"setup: {len(users)} funded wallets, {len(set(astro_of))} astrologers "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        pool = await create_pool(dsn, min_size=args.concurrency, max_size=args.concurrency)
        try:
            single = await bench_single(
                pool, users, astro_of, consultations, args.single, args.concurrency
            )
            batch_rates = []
            for streams in (1, 2):
                rate = await bench_batches(
                    pool,
                    users,
                    astro_of,
                    consultations,
                    args.batches,
                    args.batch_size,
                    streams,
                    f"b{streams}-",
                )
                batch_rates.append(rate)
            async with pool.acquire() as conn:
                await rollup_system_balances(conn)
                # The bench posts synthetic charges (not priced from a consultation's terms):
                # only the ledger's own invariants apply, as in tests/billing/support.py.
                report = await reconcile(conn, skip=("charge_terms", "consultation_totals"))
                posted = await conn.fetchval(
                    "SELECT count(*) FROM transfers WHERE kind = 'consultation_charge'"
                )
                revenue = await conn.fetchval(
                    "SELECT balance FROM accounts WHERE kind = 'platform_revenue'"
                )
        finally:
            await pool.close()
        expected = posted * (RATE - SHARE)
        verdict = "OK" if report.ok else "BROKEN"
        print(
            f"verify: {posted:,} charges posted; platform revenue {revenue:,} "
            f"(expected {expected:,}); reconciliation {verdict} ({report.seconds:.2f} s) "
            f"{report.counts()}"
        )
        ok = report.ok and revenue == expected
        ok = ok and single >= 1000 and max(batch_rates) >= 8000
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print("targets met (wall-clock)" if ok else "targets NOT met (wall-clock)")
        return 0 if report.ok and revenue == expected else 1
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wallets", type=int, default=2000)
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    try:
        import uvloop  # the web and worker processes run on uvloop too
    except ImportError:  # pragma: no cover - not on Windows
        uvloop = None  # type: ignore[assignment]  # fall back to the default loop
    runner = uvloop.run if uvloop is not None else asyncio.run
    sys.exit(runner(main(parser.parse_args())))
