"""One composition root: every external service is built once per process, from settings, behind
its Protocol, and the web app's views and use cases share the same objects."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.framework import SERVICES
from billing.gateways import GatewayDisabled, LocalGateway
from core.services import Services
from core.storage import STORAGE, LocalStorage
from notify.channels import LogChannel, SmsChannel
from notify.sms import ConsoleSms


async def test_services_are_built_once_from_settings(services: Services) -> None:
    assert isinstance(services.storage, LocalStorage)
    assert isinstance(services.sms, ConsoleSms)
    assert set(services.channels) == {"push", "email", "sms"}
    assert isinstance(services.channels["push"], LogChannel)
    assert isinstance(services.channels["sms"], SmsChannel)
    gateway = services.gateways.get("test")
    assert isinstance(gateway, LocalGateway)
    assert services.gateways.get("test") is gateway  # built once, then kept
    with pytest.raises(GatewayDisabled):
        services.gateways.get("stripe")  # no keys in the test settings


async def test_the_app_shares_its_storage_with_the_use_cases(
    app: web.Application, client: TestClient[Any, Any]
) -> None:
    assert (await client.get("/healthz")).status == 200  # the services are open
    assert app[SERVICES].storage is app[STORAGE]
