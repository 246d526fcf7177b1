"""Forward-only numbered SQL migrations (`db/migrations/0001_name.sql`).

A version table records each file's checksum. The runner holds a PostgreSQL advisory lock, so two
processes migrating at once apply each file once; it refuses to go on when an applied file was
changed or removed, or when a new file sorts before one already applied.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number; it names "the astrolive schema" among advisory locks.
ADVISORY_LOCK_KEY = 0x61737472_6F6C6976
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


async def migrate(conn: asyncpg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations under the advisory lock; return the names applied."""
    files = load(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(CREATE_VERSION_TABLE)
        applied = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
        by_version = {m.version: m for m in files}
        for version, row in sorted(applied.items()):
            current = by_version.get(version)
            if current is None:
                raise MigrationError(f"applied migration {row['name']} is missing")
            if current.checksum != row["checksum"]:
                raise MigrationError(f"applied migration {row['name']} was changed")
        top = max(applied, default=0)
        pending = [m for m in files if m.version not in applied]
        done: list[str] = []
        for mig in pending:
            if mig.version < top:
                raise MigrationError(
                    f"{mig.name} sorts before an applied migration; give it a higher number"
                )
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            log.info("applied migration", extra={"migration": mig.name})
            done.append(mig.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
