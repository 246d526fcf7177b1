"""Issue 14: production is the default, and production refuses what is only safe in development."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from astrolive.demo import seed_demo
from core.errors import Forbidden
from core.settings import Env, Settings
from tests.conftest import TEST_DATA_KEYS, make_settings

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"jwt_secret": "s" * 32, "sms_provider": "sns", "data_keys": TEST_DATA_KEYS}


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]  # pydantic-settings init option


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite sets ASTROLIVE_ENV=development for everything else (tests/conftest.py).
    monkeypatch.delenv("ASTROLIVE_ENV", raising=False)


def test_default_is_production() -> None:
    settings = _settings(**GOOD)
    assert settings.astrolive_env is Env.PRODUCTION
    assert settings.is_production
    assert settings.test_gateway is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"jwt_secret": None}, "JWT_SECRET must be set"),
        ({"jwt_secret": "x"}, "JWT_SECRET must be at least 32 bytes"),
        ({"jwt_secret": "y" * 31}, "JWT_SECRET must be at least 32 bytes"),
        ({"jwt_previous_secrets": "k0=short"}, "JWT_PREVIOUS_SECRETS"),
        ({"metrics_token": "short"}, "METRICS_TOKEN must be at least 32 bytes"),
        ({"turn_secret": "short"}, "TURN_SECRET must be at least 32 bytes"),
        ({"sms_provider": "console"}, "SMS_PROVIDER=console is for development"),
        ({"test_gateway": True}, "TEST_GATEWAY is refused"),
        ({"auth_test_phones": "+919000000001:123456"}, "AUTH_TEST_PHONES is refused"),
    ],
)
def test_production_refuses(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        _settings(**{**GOOD, **values})
    assert "ASTROLIVE_ENV=development" in str(caught.value)
    # Development takes the same values.
    _settings(**{**GOOD, **values, "astrolive_env": "development"})


def test_test_phones_in_production_only_when_allowed() -> None:
    allowed = _settings(
        **GOOD, auth_test_phones="+919000000001:123456", auth_test_phones_in_production=True
    )
    assert allowed.auth_test_phones == {"+919000000001": "123456"}


async def test_seed_demo_refused_in_production(
    database_url: str, redis_url: str, tmp_path: Path, db: Any
) -> None:
    settings = make_settings(
        database_url, redis_url, tmp_path, astrolive_env="production", sms_provider="sns"
    )
    with pytest.raises(Forbidden, match="seed-demo is for development"):
        await seed_demo(settings)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def _cli(*args: str, **env: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if k != "ASTROLIVE_ENV"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "astrolive", *args, env={**base, **env}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_cli_says_why_it_refuses_to_start(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    # cwd has a .env saying development in a checkout: an explicit production wins over it.
    code, err = await _cli(
        "serve", ASTROLIVE_ENV="production", JWT_SECRET="short", DATA_DIR=str(tmp_path),
        DATABASE_URL=database_url, REDIS_URL=redis_url,
    )  # fmt: skip
    assert code == 2
    assert "JWT_SECRET must be at least 32 bytes" in err
    assert "SMS_PROVIDER=console is for development" in err
    assert "Traceback" not in err
    code, err = await _cli(
        "seed-demo", ASTROLIVE_ENV="production", JWT_SECRET="z" * 40, SMS_PROVIDER="sns",
        AUTH_TEST_PHONES="", DATA_KEYS=TEST_DATA_KEYS, DATA_DIR=str(tmp_path),
        DATABASE_URL=database_url, REDIS_URL=redis_url,
    )  # fmt: skip
    assert code == 2
    assert "seed-demo is for development" in err


@pytest.mark.parametrize("name", ["trusted_proxies", "rate_limit_exempt_ips"])
def test_address_lists_are_checked_at_start(name: str) -> None:
    with pytest.raises(ValidationError, match="not an IP address or CIDR range"):
        _settings(**GOOD, **{name: "10.0.0.0/8,not-an-ip"})
    assert getattr(_settings(**GOOD, **{name: "10.0.0.0/8, ::1"}), name) == ["10.0.0.0/8", "::1"]
