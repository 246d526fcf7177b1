"""Discovery throughput: GET /v1/astrologers with filters on, against /healthz, on a real server.

    .venv/bin/python tests/bench/discovery.py [--astrologers 10000] [--reviews 1000000]
                                              [--seconds 8] [--concurrency 32]

Creates `astrolive_bench_<random>` on the server of DATABASE_URL (default: the local server),
migrates it, bulk-seeds astrologers, completed consultations and their reviews with
generate_series, marks a tenth of the astrologers online in a private redis-server, starts
`astrolive serve` as a real process, and measures requests/s and p99 latency of the listing (a
rotation of filtered and sorted queries, following cursors) and of /healthz in the same run. Prints
the ratio and the EXPLAIN of the heaviest listing query. Drops the database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # after the path setup above, so the script runs from anywhere
import asyncpg  # same reason
from redis.asyncio import Redis  # same reason

from consultations import discovery, keys  # same reason
from db import embedded  # same reason
from db.migrate import migrate  # same reason
from db.pool import connect  # same reason

ROOT = Path(__file__).resolve().parents[2]

SEED_ASTROLOGERS = """
WITH u AS (
    INSERT INTO users (phone, role)
    SELECT '+9177' || lpad(g::text, 8, '0'), 'astrologer' FROM generate_series(1, $1) g
    RETURNING id, phone
)
INSERT INTO astrologer_profiles (user_id, display_name, skills, languages, experience_years,
    rate_chat, rate_voice, rate_video, verification, verified_at)
SELECT id,
       (ARRAY['Acharya','Pandit','Guru','Tara','Dev','Noor','Meera','Ravi'])[1 + g % 8]
           || ' ' || (ARRAY['Sharma','Iyer','Rao','Fatima','Kumar','Joshi'])[1 + (g / 8) % 6]
           || ' ' || g,
       ARRAY[(ARRAY['vedic','tarot','kp','vastu','numerology','palmistry'])[1 + g % 6],
             (ARRAY['kundli','prashna','face-reading'])[1 + g % 3]],
       ARRAY[(ARRAY['hi','en','ta','te','bn','mr','ur'])[1 + g % 7], 'en'],
       g % 40, 500 + (g * 37) % 9500, 700 + (g * 53) % 9500,
       CASE WHEN g % 3 = 0 THEN NULL ELSE 1000 + (g * 71) % 9000 END,
       CASE WHEN g % 20 = 0 THEN 'pending' ELSE 'approved' END, now()
  FROM (SELECT id, phone, right(phone, 8)::int AS g FROM u) s
"""
SEED_USERS = """
INSERT INTO users (phone, role) SELECT '+9166' || lpad(g::text, 8, '0'), 'user'
  FROM generate_series(1, $1) g
"""
# Completed consultations (one per review), spread over the astrologers and users.
SEED_CONSULTATIONS = """
WITH a AS (SELECT array_agg(user_id ORDER BY user_id) AS ids FROM astrologer_profiles),
     u AS (SELECT array_agg(id ORDER BY id) AS ids FROM users WHERE role = 'user')
INSERT INTO consultations (user_id, astrologer_id, type, status, end_reason, rate, share_percent,
                           requested_at, started_at, ended_at, billed_minutes, total_charged,
                           created_at)
SELECT u.ids[1 + g % cardinality(u.ids)],
       a.ids[1 + ((g::bigint * 7919) % cardinality(a.ids))::int], 'chat',
       'completed', 'user_ended', 1000, 60, t, t, t + interval '10 minutes', 10, 10000, t
  FROM a, u, generate_series(1, $1) g,
       LATERAL (SELECT now() - (g || ' minutes')::interval AS t) tt
"""
SEED_REVIEWS = """
INSERT INTO reviews (consultation_id, user_id, astrologer_id, rating, comment, created_at)
SELECT id, user_id, astrologer_id, 1 + (hashtext(id::text) & 3) + (hashtext(id::text) >> 30 & 1),
       NULL, ended_at
  FROM consultations WHERE status = 'completed'
"""
AGGREGATE = """
UPDATE astrologer_profiles p
   SET rating_sum = r.s, rating_count = r.n, consultations_count = r.n
  FROM (SELECT astrologer_id, sum(rating) AS s, count(*) AS n FROM reviews GROUP BY 1) r
 WHERE r.astrologer_id = p.user_id
"""

# What the app asks for: filtered and sorted first pages, name searches, online only.
QUERIES = [
    "/v1/astrologers?sort=rating&limit=20",
    "/v1/astrologers?sort=popular&skill=vedic&limit=20",
    "/v1/astrologers?sort=rate_asc&type=chat&max_rate=3000&limit=20",
    "/v1/astrologers?sort=rate_desc&type=video&language=ta&limit=20",
    "/v1/astrologers?sort=experience&skill=tarot&language=hi&min_rating=3&limit=20",
    "/v1/astrologers?q=meera&sort=rating&limit=20",
    "/v1/astrologers?online=true&sort=rating&limit=20",
    "/v1/astrologers?online=true&type=voice&sort=rate_asc&limit=20",
]


async def seed(dsn: str, astrologers: int, reviews: int) -> list[str]:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        t = time.perf_counter()
        await conn.execute(SEED_ASTROLOGERS, astrologers)
        await conn.execute(SEED_USERS, max(1000, reviews // 100))
        await conn.execute(SEED_CONSULTATIONS, reviews)
        await conn.execute(SEED_REVIEWS)
        await conn.execute(AGGREGATE)
        await conn.execute("VACUUM ANALYZE")
        count = await conn.fetchval("SELECT count(*) FROM reviews")
        print(
            f"seeded {astrologers} astrologers, {count} reviews in {time.perf_counter() - t:.1f}s"
        )
        ids = await conn.fetch(
            "SELECT user_id FROM astrologer_profiles WHERE verification = 'approved'"
            " ORDER BY user_id LIMIT $1",
            astrologers // 10,
        )
        return [str(r["user_id"]) for r in ids]
    finally:
        await conn.close()


async def mark_online(redis_url: str, dsn: str, ids: list[str]) -> None:
    """A tenth of the astrologers online, written as presence writes them (consultations.keys,
    and the set's PostgreSQL mirror that `online=true` joins)."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        pipe = redis.pipeline(transaction=False)
        for aid in ids:
            pipe.set(keys.PRESENCE_ALIVE.format(id=aid), "1", ex=3600)
            pipe.set(keys.PRESENCE_WANTS.format(id=aid), "online")
            pipe.set(keys.PRESENCE_LAST.format(id=aid), "online")
            pipe.sadd(keys.PRESENCE_LISTED, aid)
        await pipe.execute()
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO astrologer_presence_listed (astrologer_id) SELECT unnest($1::uuid[])", ids
        )
        await conn.execute("ANALYZE astrologer_presence_listed")
    finally:
        await conn.close()


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit("the server exited")
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the server did not get ready")


async def load(url: str, paths: list[str], seconds: float, concurrency: int) -> dict[str, float]:
    """Closed-loop load: `concurrency` clients, each sending the next path as soon as the last
    answered, for `seconds`. Listing clients follow `next_cursor` once for every first page."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = n
        while time.perf_counter() < deadline:
            path = paths[i % len(paths)]
            i += 1
            started = time.perf_counter()
            async with http.get(url + path) as resp:
                body = await resp.read()
                ok = resp.status == 200
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors += 1
                continue
            if path.startswith("/v1/astrologers") and b'"next_cursor":"' in body:
                cursor = body.split(b'"next_cursor":"')[1].split(b'"')[0].decode()
                started = time.perf_counter()
                async with http.get(f"{url}{path}&cursor={cursor}") as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(concurrency)))
        wall = time.perf_counter() - t
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
    }


async def explain(dsn: str, online: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        filters = discovery.Filters(skill="tarot", language="hi", type="chat", max_rate=5000)
        sql, args = discovery.build_query(filters, "rating", None, 21)
        print("EXPLAIN ANALYZE of the skill+language+type+max_rate listing, sorted by rating:")
        for row in await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, *args):
            print("   ", row[0])
        sql, args = discovery.build_query(discovery.Filters(online=True), "rating", None, 21)
        print("EXPLAIN ANALYZE of the online=true listing, sorted by rating:")
        for row in await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, *args):
            print("   ", row[0])
        sql = (
            "SELECT id FROM reviews WHERE astrologer_id = $1"
            " ORDER BY created_at DESC, id DESC LIMIT 21"
        )
        print("EXPLAIN ANALYZE of an astrologer's reviews page (1M reviews):")
        for row in await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, online[0]):
            print("   ", row[0])
    finally:
        await conn.close()


def show(name: str, r: dict[str, float]) -> None:
    print(
        f"{name:10s} {r['rps']:9.0f} req/s   p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms"
        f"   ({int(r['requests'])} requests, {int(r['errors'])} errors)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--astrologers", type=int, default=10_000)
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server, name)
    redis_port, web_port = embedded.free_port(), embedded.free_port()
    with tempfile.TemporaryDirectory(prefix="astrolive-bench-") as workdir:
        redis_proc = embedded.start_redis(redis_port, Path(workdir) / "redis")
        proc: subprocess.Popen[bytes] | None = None
        try:
            online = await seed(dsn, args.astrologers, args.reviews)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            await mark_online(redis_url, dsn, online)
            env = {
                **os.environ,
                "ASTROLIVE_ENV": "development",  # production is the default (issue 14)
                "DATABASE_URL": dsn,
                "REDIS_URL": redis_url,
                "PORT": str(web_port),
                "DATA_DIR": str(Path(workdir) / "data"),
                "LOG_LEVEL": "WARNING",
                "METER_LOOP": "false",
            }
            proc = subprocess.Popen(  # noqa: ASYNC220  # started once, before any measuring
                [sys.executable, "-m", "astrolive", "serve"], cwd=ROOT, env=env
            )
            url = f"http://127.0.0.1:{web_port}"
            await wait_ready(url, proc)
            await load(url, QUERIES, 1.0, args.concurrency)  # warm-up: pools, plan caches
            health = await load(url, ["/healthz"], args.seconds, args.concurrency)
            listing = await load(url, QUERIES, args.seconds, args.concurrency)
            clients = f"{args.concurrency} concurrent clients"
            print(f"one server process, {clients}, {args.seconds:.0f}s each")
            show("/healthz", health)
            show("listing", listing)
            print(f"listing / healthz throughput ratio: {listing['rps'] / health['rps']:.2f}")
            await explain(dsn, online)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(15)
            redis_proc.terminate()
            redis_proc.wait(5)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
