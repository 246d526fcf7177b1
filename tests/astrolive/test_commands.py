"""The command line a newcomer and the Procfile use: migrate, seed-demo, create-admin."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from core.settings import Env, Settings
from db import embedded
from tests.conftest import TEST_PHONES


async def _run(*args: str, database_url: str, redis_url: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "AUTH_TEST_PHONES": TEST_PHONES,
        "LOG_FORMAT": "text",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "astrolive", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_seed_demo_is_idempotent(database_url: str, redis_url: str, db: Any) -> None:
    for _ in range(2):
        code, out, err = await _run("seed-demo", database_url=database_url, redis_url=redis_url)
        assert code == 0, err
        # What ./dev up prints: the demo phones with their codes, and that a code is single-use.
        assert "+919000000001  code 123456" in out
        assert "A code is good for ONE sign-in" in out
        assert "Demo Jyotishi" in out
    user = await db.fetchrow("SELECT id, role FROM users WHERE phone = '+919000000001'")
    assert user["role"] == "user"
    balance = await db.fetchval(
        "SELECT balance FROM accounts WHERE kind = 'user_wallet' AND owner_id = $1", user["id"]
    )
    assert balance == 50_000  # funded once, through the ledger
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'demo_credit'") == 1
    astro = await db.fetchrow(
        "SELECT u.role, p.verification, p.rate_chat FROM users u "
        "JOIN astrologer_profiles p ON p.user_id = u.id WHERE u.phone = '+919000000002'"
    )
    assert (astro["role"], astro["verification"]) == ("astrologer", "approved")
    assert astro["rate_chat"] > 0
    admin = await db.fetchval("SELECT role FROM users WHERE phone = '+919000000003'")
    assert admin == "admin"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM astrologer_profiles WHERE verification = 'approved'"
        )
        >= 5
    )


async def test_create_admin_normalises_the_phone(
    database_url: str, redis_url: str, db: Any
) -> None:
    code, out, err = await _run(
        "create-admin", "098765 43210", database_url=database_url, redis_url=redis_url
    )
    assert code == 0, err
    assert "+919876543210" in out
    assert await db.fetchval("SELECT role FROM users WHERE phone = '+919876543210'") == "admin"
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'make_admin'") == 1
    code, _, err = await _run(
        "create-admin", "not-a-phone", database_url=database_url, redis_url=redis_url
    )
    assert code != 0
    assert await db.fetchval("SELECT count(*) FROM users WHERE role = 'admin'") == 1


def test_production_refuses_development_defaults() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET must be set"):
        Settings(_env_file=None, astrolive_env=Env.PRODUCTION)  # type: ignore[call-arg]  # pydantic-settings init option
    with pytest.raises(ValidationError, match="TEST_GATEWAY is refused"):
        Settings(  # type: ignore[call-arg]  # pydantic-settings init option
            _env_file=None, astrolive_env=Env.PRODUCTION, jwt_secret="s" * 40, sms_provider="sns",
            test_gateway=True,
        )  # fmt: skip
    ok = Settings(  # type: ignore[call-arg]  # pydantic-settings init option
        _env_file=None, astrolive_env=Env.PRODUCTION, jwt_secret="s" * 40, sms_provider="sns",
        data_keys="k1:" + "A" * 43 + "=",  # issue 16: production needs real data keys
    )  # fmt: skip
    assert ok.test_gateway is False
    assert Settings(_env_file=None).test_gateway is True  # type: ignore[call-arg]  # pydantic-settings init option


def test_settings_parse_lists_and_test_phones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_TEST_PHONES", "+919000000001:111111, +919000000002:222222")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example,https://b.example")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings init option
    assert settings.auth_test_phones == {"+919000000001": "111111", "+919000000002": "222222"}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("AUTH_TEST_PHONES", "+919000000001")
    with pytest.raises(ValidationError, match="PHONE:CODE"):
        Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings init option


def test_generated_jwt_secret_is_kept(tmp_path: Any) -> None:
    first = Settings(_env_file=None, data_dir=tmp_path).jwt_signing_secret()  # type: ignore[call-arg]  # pydantic-settings init option
    second = Settings(_env_file=None, data_dir=tmp_path).jwt_signing_secret()  # type: ignore[call-arg]  # pydantic-settings init option
    assert first == second
    assert len(first) >= 40
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


async def test_embedded_redis_starts_when_nothing_answers(tmp_path: Any) -> None:
    from db import embedded

    port = embedded.free_port()
    proc = embedded.start_redis(port, tmp_path)
    try:
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=port)
        assert await client.ping()
        await client.aclose()
    finally:
        proc.terminate()
        proc.wait(5)


async def test_database_is_created_when_missing(database_url: str) -> None:
    from db import embedded

    name = "astrolive_ensure_" + os.urandom(3).hex()
    dsn = embedded.with_database(database_url, name)
    await embedded.ensure_database(dsn)
    await embedded.ensure_database(dsn)  # a second time is fine
    conn = await asyncpg.connect(dsn)
    await conn.close()
    admin = await asyncpg.connect(embedded.with_database(database_url, "postgres"))
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.mark.filterwarnings("ignore")
async def test_newcomer_path_uses_embedded_services() -> None:
    """With no local servers, migrate runs against an embedded PostgreSQL and Redis.

    The data lives under the project's .data as in real use: run as root, pgserver runs
    PostgreSQL as a system user that must reach the folder (a private /tmp/pytest-of-root
    is not).
    """
    import shutil
    from pathlib import Path

    tmp_path = Path(".data") / f"test-embedded-{os.urandom(4).hex()}"
    tmp_path.mkdir(parents=True)
    try:
        await _migrate_embedded(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


async def _migrate_embedded(tmp_path: Any) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "ASTROLIVE_FORCE_EMBEDDED": "1",
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_FORMAT": "text",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "astrolive", "migrate", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("applied ")
    log = err.decode()
    # Forced: the log says why, never that nothing answered; pgserver's initdb output stays quiet.
    assert "ASTROLIVE_FORCE_EMBEDDED=1: started an embedded PostgreSQL" in log
    assert "ASTROLIVE_FORCE_EMBEDDED=1: started an embedded Redis" in log
    assert "no PostgreSQL answered" not in log
    assert "Successful postgres command" not in log
    assert (tmp_path / "data" / "pg" / "PG_VERSION").exists()


async def test_serve_shuts_down_gracefully_on_sigterm(settings: Settings) -> None:
    from tests.servers import ServerProcess, process_env

    server = await ServerProcess(process_env(settings)).start()
    started = asyncio.get_running_loop().time()
    code = await server.stop()
    assert code == 0
    assert asyncio.get_running_loop().time() - started < 12


def test_env_example_documents_every_setting() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / ".env.example").read_text()
    missing = [
        name.upper()
        for name in Settings.model_fields
        if not re.search(rf"^#? ?{name.upper()}=", text, re.MULTILINE)
    ]
    assert missing == []


def test_each_clone_gets_its_own_database_and_redis_db(tmp_path: Any) -> None:
    """Two clones on one machine: different database names and (almost always) Redis databases,
    stable for one folder; the arq queue lives in that Redis database."""
    a, b = tmp_path / "astrolive", tmp_path / "other" / "astrolive"
    assert embedded.clone_database(a) == embedded.clone_database(a)
    assert embedded.clone_database(a) != embedded.clone_database(b)
    assert embedded.clone_database(a).startswith("astrolive_astrolive_")
    assert len(embedded.clone_database(tmp_path / ("x" * 200))) < 63
    dbs = {embedded.clone_redis_db(tmp_path / str(n)) for n in range(200)}
    assert dbs == set(range(1, 16))  # never 0, which other software on the machine uses
