"""Opening and closing the resources of a process (web, worker or command)."""

from __future__ import annotations

from typing import Any

import aiohttp
from arq import create_pool
from arq.connections import RedisSettings
from redis.asyncio import Redis

from core.services import Services
from core.settings import Settings
from db.pool import create_pool as create_db_pool


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def open_services(settings: Settings, emitter: Any = None) -> Services:
    """Open every resource a process needs; `close_services` closes them in reverse order."""
    assert settings.database_url, "resolve the services first"
    assert settings.redis_url, "resolve the services first"
    db = await create_db_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    arq = await create_pool(redis_settings(settings.redis_url))
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    services = Services(settings=settings, db=db, redis=redis, arq=arq, http=http)
    if emitter is not None:
        services.emitter = emitter
    return services


async def close_services(services: Services) -> None:
    await services.http.close()
    await services.arq.aclose()
    await services.redis.aclose()
    await services.db.close()
