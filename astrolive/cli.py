"""`astrolive` command line: serve, worker, migrate, create-admin, seed-demo, run, with-services."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from core.logging import setup_logging
from core.settings import Settings
from db import embedded

log = logging.getLogger("astrolive")


def load_settings() -> Settings:
    """Settings with the database and Redis resolved (local servers, else embedded ones)."""
    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    found = embedded.resolve(settings.database_url, settings.redis_url, settings.data_dir)
    # Keep embedded servers alive as long as this process runs, and stop them with it.
    _KEEP.append(found)
    if found.keep:
        atexit.register(embedded.stop, found)
    embedded.export(found)
    settings.database_url, settings.redis_url = found.database_url, found.redis_url
    return settings


_KEEP: list[embedded.Services] = []


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # uvloop does not build on Windows; the default loop works there
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from astrolive.app import create_app

    settings = load_settings()
    _use_uvloop()
    app = create_app(settings)
    log.info("serving", extra={"host": settings.host, "port": args.port or settings.port})
    # run_app turns SIGTERM/SIGINT into a graceful shutdown: stop accepting, finish requests,
    # run cleanup contexts (close Socket.IO, pools) within the timeout.
    web.run_app(
        app,
        host=settings.host,
        port=args.port or settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=10,
        handle_signals=True,
    )


def cmd_worker(args: argparse.Namespace) -> None:
    from arq.worker import run_worker

    from astrolive.resources import redis_settings
    from astrolive.worker import WorkerSettings

    settings = load_settings()
    assert settings.redis_url
    if args.check:
        # Exit 0 while a worker's heartbeat (refreshed every health_check_interval) is fresh.
        from workers.admin import worker_alive

        alive = asyncio.run(worker_alive(settings.redis_url))
        print("worker alive" if alive else "no live worker")
        sys.exit(0 if alive else 1)
    _use_uvloop()
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]  # arq types settings_cls as WorkerSettingsType, a Protocol our class satisfies structurally
        redis_settings=redis_settings(settings.redis_url),
        ctx={"settings": settings},
    )


def cmd_jobs_failed(args: argparse.Namespace) -> None:
    from workers.admin import print_failed

    settings = load_settings()
    assert settings.redis_url
    asyncio.run(print_failed(settings.redis_url, args.limit, args.json))


def cmd_jobs_retry(args: argparse.Namespace) -> None:
    from workers.admin import print_retry

    settings = load_settings()
    assert settings.redis_url
    sys.exit(0 if asyncio.run(print_retry(settings.redis_url, args.job_id)) else 1)


async def _migrate(settings: Settings) -> list[str]:
    from db.migrate import migrate
    from db.pool import connect

    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = load_settings()
    applied = asyncio.run(_migrate(settings))
    log.info("migrations done", extra={"applied": applied})
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


def cmd_create_admin(args: argparse.Namespace) -> None:
    from astrolive.demo import create_admin

    settings = load_settings()
    user = asyncio.run(create_admin(settings, args.phone))
    print(f"admin {user.phone} ({user.id})")


def cmd_seed_demo(args: argparse.Namespace) -> None:
    from astrolive.demo import seed_demo

    settings = load_settings()
    summary = asyncio.run(seed_demo(settings))
    print(summary)


def cmd_run(args: argparse.Namespace) -> None:
    """Everything a newcomer needs: services, migrations, demo data, then web and worker."""
    from honcho.manager import Manager

    settings = load_settings()
    asyncio.run(_migrate(settings))
    from astrolive.demo import seed_demo

    print(asyncio.run(seed_demo(settings)))
    exe = [sys.executable, "-m", "astrolive"]
    env = dict(os.environ)
    manager = Manager()
    manager.add_process("web", " ".join([*exe, "serve"]), env=env)
    manager.add_process("worker", " ".join([*exe, "worker"]), env=env)
    if settings.demo_astrologer_on:  # development only: see astrolive/demo_astrologer.py
        manager.add_process("demo", " ".join([*exe, "demo-astrologer"]), env=env)
    print(f"astrolive on http://{settings.host}:{settings.port}/  (Ctrl-C stops)")
    manager.loop()
    sys.exit(manager.returncode)


def cmd_demo_astrologer(args: argparse.Namespace) -> None:
    """The demo astrologer (development only), a client of the server at --url."""
    from astrolive.demo_astrologer import run_demo_astrologer

    settings = load_settings()
    url = args.url or f"http://{settings.host}:{settings.port}"
    asyncio.run(run_demo_astrologer(settings, url))


async def _reconcile(settings: Settings) -> bool:
    from billing.ledger import rollup_system_balances
    from billing.reconcile import reconcile
    from db.pool import connect

    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        await rollup_system_balances(conn)
        report = await reconcile(conn)
    finally:
        await conn.close()
    for finding in report.findings:
        print(f"BREAK {finding.check} {finding.subject} {finding.details}")
    print(f"checks: {report.counts()} ({report.seconds:.2f} s)")
    return report.ok


def cmd_reconcile(args: argparse.Namespace) -> None:
    """Check the ledger's invariants; exit 1 on any break."""
    settings = load_settings()
    ok = asyncio.run(_reconcile(settings))
    print("ledger ok" if ok else "LEDGER BROKEN")
    sys.exit(0 if ok else 1)


def cmd_rotate_data_key(args: argparse.Namespace) -> None:
    """Issue 16: re-encrypt personal data under DATA_KEYS' first key (online, in batches), or
    with --generate print a new DATA_KEYS entry (KMS-wrapped when KMS_KEY_ID is set)."""
    from core import crypto

    if args.generate is not None:
        print(crypto.generate_key_entry(Settings(), args.generate or None))
        return
    from astrolive.data_keys import run

    settings = load_settings()
    report = asyncio.run(run(settings, batch_size=args.batch_size))
    for column, count in report.items():
        print(f"{column}: {count} re-encrypted")
    print(f"data key {crypto.current().primary}: {sum(report.values())} value(s) rotated")


def cmd_with_services(args: argparse.Namespace) -> None:
    """Run a command with DATABASE_URL and REDIS_URL pointing at working servers."""
    load_settings()
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SystemExit("with-services needs a command after --")
    sys.exit(subprocess.call(command))  # noqa: S603  # the developer's own command line


def openapi_document() -> str:
    """The OpenAPI document of every route, as `/v1/openapi.json` serves it."""
    import json

    from api import openapi
    from api.routes import ROUTERS

    specs = [spec for router in ROUTERS for spec in router.specs]
    return json.dumps(openapi.build(specs), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def cmd_openapi(args: argparse.Namespace) -> None:
    """Print the OpenAPI document (docs/openapi.json is this output, checked by a test)."""
    sys.stdout.write(openapi_document())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astrolive", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the web server (REST + Socket.IO)")
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(fn=cmd_serve)
    worker = sub.add_parser("worker", help="run the arq worker")
    worker.add_argument("--check", action="store_true", help="exit 0 if a worker is alive")
    worker.set_defaults(fn=cmd_worker)
    jobs = sub.add_parser("jobs", help="failed background jobs").add_subparsers(required=True)
    failed = jobs.add_parser("failed", help="list failed jobs (kept for an hour)")
    failed.add_argument("--limit", type=int, default=100)
    failed.add_argument("--json", action="store_true")
    failed.set_defaults(fn=cmd_jobs_failed)
    retry = jobs.add_parser("retry", help="re-enqueue a failed job with the same arguments")
    retry.add_argument("job_id")
    retry.set_defaults(fn=cmd_jobs_retry)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)
    admin = sub.add_parser("create-admin", help="make PHONE an admin (creating the account)")
    admin.add_argument("phone")
    admin.set_defaults(fn=cmd_create_admin)
    sub.add_parser(
        "seed-demo", help="demo astrologers, a funded demo user, test phones"
    ).set_defaults(fn=cmd_seed_demo)
    sub.add_parser(
        "run", help="services + migrate + seed-demo + web + worker (+ the demo astrologer)"
    ).set_defaults(fn=cmd_run)
    demo = sub.add_parser("demo-astrologer", help="run the demo astrologer (development only)")
    demo.add_argument("--url", default=None, help="the server (default: HOST and PORT)")
    demo.set_defaults(fn=cmd_demo_astrologer)
    sub.add_parser(
        "reconcile", help="check the ledger's invariants; exit 1 on any break"
    ).set_defaults(fn=cmd_reconcile)
    sub.add_parser("openapi", help="print the OpenAPI document").set_defaults(fn=cmd_openapi)
    rotate = sub.add_parser(  # issue 16
        "rotate-data-key", help="re-encrypt personal data under the first DATA_KEYS key"
    )
    rotate.add_argument("--batch-size", type=int, default=500)
    rotate.add_argument(
        "--generate", nargs="?", const="", default=None, metavar="KEY_ID",
        help="print a new DATA_KEYS entry instead (wrapped by KMS when KMS_KEY_ID is set)",
    )  # fmt: skip
    rotate.set_defaults(fn=cmd_rotate_data_key)
    ws = sub.add_parser("with-services", help="run a command with the database and Redis resolved")
    ws.add_argument("command", nargs=argparse.REMAINDER)
    ws.set_defaults(fn=cmd_with_services)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from pydantic import ValidationError

    from core.errors import AppError

    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except AppError as err:
        details = f" {err.details}" if err.details else ""
        print(f"astrolive: {err.message}{details}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as err:
        # Refused settings (production's rules, issue 14): say which, without a traceback.
        for problem in err.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "settings"
            print(f"astrolive: {where}: {problem['msg']}", file=sys.stderr)
        sys.exit(2)
