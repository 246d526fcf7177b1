"""Notification throughput: `notify.notify` (inbox row + delivery rows + enqueue) and the
delivery job (claim, FCM v1 call to an imitation on loopback, mark sent), on a scratch database.

    .venv/bin/python tests/bench/notify.py [--users 1000] [--concurrency 16]

Creates `astrolive_bench_<random>` on the server of DATABASE_URL (default: the local server) and
a private redis-server, measures, checks every notification was delivered exactly once, and
drops the database. No target is set by the issue; the figures are printed for comparison.
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

import notify  # same reason
from astrolive.resources import close_services, open_services  # same reason
from core.settings import Env, Settings  # same reason
from db import embedded  # same reason
from db.migrate import migrate  # same reason
from db.pool import connect  # same reason
from tests.notify.support import FakeFcm, job_ctx  # same reason
from workers.notifications import deliver_notification  # same reason


async def timed(label: str, count: int, coros: list[Any], concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def one(c: Any) -> None:
        async with limit:
            await c

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in coros))
    seconds = time.perf_counter() - started
    print(f"{label:<34} {count:>6} in {seconds:6.2f} s  = {count / seconds:8.0f}/s")


async def main(args: argparse.Namespace) -> int:
    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"astrolive_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded.with_database(server, name)
    port = embedded.free_port()
    fcm = await FakeFcm().start()
    with tempfile.TemporaryDirectory(prefix="astrolive-bench-") as workdir:
        redis_proc = embedded.start_redis(port, Path(workdir))
        try:
            conn = await connect(dsn)
            await migrate(conn)
            await conn.close()
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
                astrolive_env=Env.DEVELOPMENT,  # production is the default (issue 14)
                database_url=dsn,
                redis_url=f"redis://127.0.0.1:{port}/0",
                data_dir=Path(workdir),
                push_provider="fcm",
                fcm_endpoint=fcm.url,
                fcm_project_id="bench",
                fcm_access_token="t",
                db_pool_max=args.concurrency + 4,
            )
            services = await open_services(settings)
            try:
                ids = [uuid.uuid4() for _ in range(args.users)]
                await services.db.executemany(
                    "INSERT INTO users (id, phone, locale) VALUES ($1, $2, $3)",
                    [(u, f"+9197{i:08d}", "hi" if i % 2 else "en") for i, u in enumerate(ids)],
                )
                await services.db.executemany(
                    "INSERT INTO devices (user_id, platform, push_token) VALUES ($1, 'android', $2)",  # noqa: E501  # one SQL line reads better
                    [(u, f"tok-{u}") for u in ids],
                )
                version = await admin.fetchval("SHOW server_version")
                print(f"PostgreSQL {version}, {os.cpu_count()} CPUs")
                await timed(
                    "notify() (inbox + rows + enqueue)",
                    len(ids),
                    [
                        notify.notify(services, u, "refund_issued", {"amount": 100}, key=f"b:{u}")
                        for u in ids
                    ],
                    args.concurrency,
                )
                nids = [r["id"] for r in await services.db.fetch("SELECT id FROM notifications")]
                await timed(
                    "deliver_notification (FCM call)",
                    len(nids),
                    [deliver_notification(job_ctx(services), str(n)) for n in nids],
                    args.concurrency,
                )
                sent = await services.db.fetchval(
                    "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'"
                )
                ok = sent == len(ids) == len(fcm.accepted)
                accepted = len(fcm.accepted)
                print(f"delivered exactly once each: {ok} ({sent} sent, {accepted} accepted)")
                return 0 if ok else 1
            finally:
                await close_services(services)
        finally:
            await fcm.stop()
            redis_proc.terminate()
            redis_proc.wait(5)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    sys.exit(asyncio.run(main(parser.parse_args())))
