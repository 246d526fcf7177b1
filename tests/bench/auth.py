"""Sign-in benchmark: the cost of `auth.authenticator.authenticate` (every REST request and every
Socket.IO connect) and of an OTP request + verify, in-process, against real PostgreSQL and Redis.

    .venv/bin/python -m tests.bench.auth [--n 5000] [--concurrency 50]

Prints authentications per second and p50/p99 latency for: the JWT check alone, the full check
with the Redis "ok" mark (the usual path), and the full check when Redis has no mark (PostgreSQL is
asked); then OTP request and verify latency. Uses its own database (dropped at the end) and a
private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from astrolive.resources import close_services, open_services
from auth import otp
from auth.authenticator import authenticate
from core.services import Services
from core.tokens import decode_access_token
from db import embedded
from db.migrate import migrate
from db.pool import connect
from tests.conftest import make_settings
from tests.factories import make_user, token_for


def server_dsn() -> str:
    for var in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(var):
            return os.environ[var].rpartition("/")[0]
    return "postgresql://postgres@127.0.0.1:5432"


async def measure(name: str, n: int, concurrency: int, op: Callable[[int], Awaitable[Any]]) -> None:
    latencies: list[float] = []
    queue = iter(range(n))

    async def runner() -> None:
        for i in queue:
            started = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"{name:<44} {n / elapsed:>9.0f}/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


async def bench(services: Services, n: int, concurrency: int) -> None:
    settings = services.settings
    users = [await make_user(services.db) for _ in range(100)]
    tokens = [await token_for(services.db, settings, u) for u in users]

    async def jwt_only(i: int) -> None:
        decode_access_token(settings, tokens[i % len(tokens)])

    async def cached(i: int) -> None:
        await authenticate(services, tokens[i % len(tokens)])

    async def uncached(i: int) -> None:
        token = tokens[i % len(tokens)]
        sid = decode_access_token(settings, token).session_id
        await services.redis.delete(f"auth:session:{sid}")
        await authenticate(services, token)

    await measure("authenticate: JWT only", n, concurrency, jwt_only)
    await measure("authenticate: JWT + Redis mark (usual)", n, concurrency, cached)
    await measure("authenticate: JWT + PostgreSQL (no mark)", n, concurrency, uncached)

    phones = [f"+9197{i:08d}" for i in range(min(n, 2000))]

    async def request(i: int) -> None:
        await otp.request_otp(services, phones[i], "user", f"10.0.{i // 250}.{i % 250}")

    test_phone = next(iter(settings.auth_test_phones))
    code = settings.auth_test_phones[test_phone]

    async def verify(i: int) -> None:
        await otp.request_otp(services, test_phone, "user", "10.1.0.1")
        await otp.verify_otp(services, test_phone, code)

    await measure("OTP request (limits + enqueue SMS job)", len(phones), concurrency, request)
    await measure("OTP request + verify (new login)", min(n, 2000), 1, verify)


async def main(n: int, concurrency: int) -> None:
    base = server_dsn()
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base + "/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    port = embedded.free_port()
    with tempfile.TemporaryDirectory(prefix="astrolive-bench-") as workdir:
        redis_proc = embedded.start_redis(port, Path(workdir))
        try:
            dsn = f"{base}/{name}"
            conn = await connect(dsn)
            await migrate(conn)
            await conn.close()
            settings = make_settings(
                dsn,
                f"redis://127.0.0.1:{port}/0",
                Path(workdir) / "data",
                otp_max_per_ip_hour=10**6,
                db_pool_max=20,
            )
            services = await open_services(settings)
            try:
                await bench(services, n, concurrency)
            finally:
                await close_services(services)
        finally:
            redis_proc.terminate()
            redis_proc.wait(5)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.concurrency))
