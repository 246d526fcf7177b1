"""The composition root of a process's resources: `open_services` opens PostgreSQL, Redis, the arq
pool and the HTTP session, and builds every external service once (file storage, SMS, the
notification channels, the payment gateways), each behind its Protocol and chosen by settings.
Web, worker and commands all go through it; `close_services` closes in reverse order."""

from __future__ import annotations

from typing import Any

import aiohttp
from arq import create_pool
from arq.connections import RedisSettings
from redis.asyncio import Redis

from billing.gateways import PaymentGateway, gateway_for
from core import crypto
from core.services import Services
from core.settings import Settings
from core.storage import Storage, make_storage
from db.pool import create_pool as create_db_pool
from notify.channels import build_channels
from notify.sms import sms_provider


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


class SettingsGateways:
    """Each gateway the settings enable, built on first use and kept for the process (the Stripe
    and Razorpay clients hold connection pools); a disabled one raises `gateway_disabled`."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._http = http
        self._built: dict[str, PaymentGateway] = {}

    def get(self, name: str) -> PaymentGateway:
        gateway = self._built.get(name)
        if gateway is None:
            gateway = self._built[name] = gateway_for(name, self._settings, self._http)
        return gateway


async def open_services(
    settings: Settings, emitter: Any = None, *, storage: Storage | None = None
) -> Services:
    """Open every resource a process needs; `close_services` closes them in reverse order.
    `storage` is given by the web app, which serves the local folder's files itself."""
    assert settings.database_url, "resolve the services first"
    assert settings.redis_url, "resolve the services first"
    crypto.install(settings)  # issue 16: the data keys, before anything reads personal data
    db = await create_db_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    arq = await create_pool(redis_settings(settings.redis_url))
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    sms = sms_provider(settings)
    services = Services(
        settings=settings,
        db=db,
        redis=redis,
        arq=arq,
        http=http,
        storage=storage or make_storage(settings),
        sms=sms,
        channels=build_channels(settings, http, sms=sms),
        gateways=SettingsGateways(settings, http),
    )
    if emitter is not None:
        services.emitter = emitter
    return services


async def close_services(services: Services) -> None:
    await services.http.close()
    await services.arq.aclose()
    await services.redis.aclose()
    await services.db.close()
