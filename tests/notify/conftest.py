"""Fixtures of notification tests: the FCM imitation, moto's server, settings that use them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from astrolive.resources import close_services, open_services
from core.services import Services
from core.settings import Settings
from tests.conftest import make_settings
from tests.notify.support import FakeFcm

FCM_PROJECT = "astrolive-test"
FCM_TOKEN = "test-access-token"


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    server = await FakeFcm().start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's AWS imitation in a thread on loopback, shared by the session's tests."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's standard variables pointing every AWS call at moto, with dummy credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_url


def fcm_settings(
    database_url: str, redis_url: str, data_dir: Path, fcm_url: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "push_provider": "fcm",
        "fcm_endpoint": fcm_url,
        "fcm_project_id": FCM_PROJECT,
        "fcm_access_token": FCM_TOKEN,
        "notify_retry_base_seconds": 0.01,
        "notify_retry_max_seconds": 0.05,
        "notify_claim_lease_seconds": 1.0,
        "notify_send_timeout_seconds": 0.5,
        "worker_metrics_port": 0,
    }
    values.update(overrides)
    return make_settings(database_url, redis_url, data_dir, **values)


@pytest.fixture
def push_settings(database_url: str, redis_url: str, tmp_path: Path, fcm: FakeFcm) -> Settings:
    return fcm_settings(database_url, redis_url, tmp_path / "data", fcm.url)


@pytest.fixture
async def push_services(push_settings: Settings) -> AsyncIterator[Services]:
    opened = await open_services(push_settings)
    yield opened
    await close_services(opened)
