"""Payments fixtures: the fake gateway server on loopback and settings that point the SDKs at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.settings import Settings
from tests.conftest import make_settings
from tests.payments import fake_gateways
from tests.payments.fake_gateways import FakeGateways


@pytest.fixture
def fake() -> FakeGateways:
    return FakeGateways()


@pytest.fixture
async def fake_url(fake: FakeGateways) -> AsyncIterator[str]:
    async for url in fake_gateways.serve(fake):
        yield url


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path, fake_url: str) -> Settings:
    """The root `settings`, with both gateways configured against the fake server."""
    return make_settings(
        database_url,
        redis_url,
        tmp_path / "data",
        stripe_api_key=fake_gateways.STRIPE_KEY,
        stripe_webhook_secret=fake_gateways.STRIPE_WEBHOOK_SECRET,
        stripe_api_base=fake_url,
        razorpay_key_id=fake_gateways.RAZORPAY_KEY_ID,
        razorpay_key_secret=fake_gateways.RAZORPAY_KEY_SECRET,
        razorpay_webhook_secret=fake_gateways.RAZORPAY_WEBHOOK_SECRET,
        razorpay_api_base=fake_url,
        test_gateway_delay_seconds=0.2,
        min_payout=10_000,
    )
