"""The migration runner: forward-only, checksummed, one runner at a time."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from db import embedded
from db.migrate import MigrationError, load, migrate
from tests.conftest import _server_dsn


@pytest.fixture
async def scratch_dsn() -> AsyncIterator[str]:
    server = _server_dsn()
    name = f"astrolive_scratch_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(embedded.with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield embedded.with_database(server, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _write(folder: Path, name: str, sql: str) -> None:
    (folder / name).write_text(sql)


async def test_applies_in_order_and_only_once(scratch_dsn: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int PRIMARY KEY);")
    _write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        assert await migrate(conn, tmp_path) == ["0001_a.sql", "0002_b.sql"]
        assert await migrate(conn, tmp_path) == []
        _write(tmp_path, "0003_c.sql", "CREATE TABLE c (id int);")
        assert await migrate(conn, tmp_path) == ["0003_c.sql"]
    finally:
        await conn.close()


async def test_refuses_changed_missing_and_out_of_order(scratch_dsn: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    _write(tmp_path, "0003_c.sql", "CREATE TABLE c (id int);")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await migrate(conn, tmp_path)
        _write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
        with pytest.raises(MigrationError, match="sorts before"):
            await migrate(conn, tmp_path)
        (tmp_path / "0002_b.sql").unlink()
        _write(tmp_path, "0001_a.sql", "CREATE TABLE a (id bigint);")
        with pytest.raises(MigrationError, match="was changed"):
            await migrate(conn, tmp_path)
        (tmp_path / "0001_a.sql").unlink()
        with pytest.raises(MigrationError, match="is missing"):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 2
        assert await conn.fetchval("SELECT to_regclass('b')") is None
    finally:
        await conn.close()


async def test_failed_migration_changes_nothing(scratch_dsn: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_bad.sql", "CREATE TABLE ok (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('ok')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


def test_file_names_are_checked(tmp_path: Path) -> None:
    _write(tmp_path, "1_bad name.sql", "")
    with pytest.raises(MigrationError, match="named"):
        load(tmp_path)


async def test_two_processes_migrating_at_once_leave_one_schema(scratch_dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": scratch_dsn, "REDIS_URL": "redis://127.0.0.1:1/0"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "astrolive",
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    outputs = sorted(out.decode() for out, _ in results)
    files = load()
    assert outputs[0].startswith("applied 0 migration(s)")
    assert outputs[1].startswith(f"applied {len(files)} migration(s)")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in files]
    finally:
        await conn.close()
