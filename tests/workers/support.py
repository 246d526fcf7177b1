"""Running the real arq worker in tests: in this process (burst) or as a child process."""

from __future__ import annotations

from typing import Any

from arq.worker import Function, Worker, func

from astrolive.resources import redis_settings
from astrolive.worker import FUNCTIONS, shutdown, startup
from core.settings import Settings


def registered(name: str, **overrides: Any) -> Function:
    """A job as `astrolive.worker` registered it (measured), with options changed for a test."""
    fn = next(f for f in FUNCTIONS if f.name == name)
    options = {"timeout": fn.timeout_s, "max_tries": fn.max_tries, **overrides}
    return func(fn.coroutine, name=fn.name, **options)


def make_worker(settings: Settings, functions: list[Function], **kw: Any) -> Worker:
    """An arq worker with the service's startup/shutdown (services, metrics), in burst mode: it
    returns when the queue is empty (deferred retries included)."""
    assert settings.redis_url
    options: dict[str, Any] = {
        "burst": True,
        "poll_delay": 0.02,
        "handle_signals": False,
        "max_tries": 5,
        "keep_result": 3600,
    }
    options.update(kw)
    return Worker(
        functions=functions,
        redis_settings=redis_settings(settings.redis_url),
        ctx={"settings": settings},
        on_startup=startup,  # type: ignore[arg-type]  # arq types ctx as dict; ours is a TypedDict
        on_shutdown=shutdown,  # type: ignore[arg-type]  # as on_startup
        **options,
    )


async def run_burst(worker: Worker) -> None:
    try:
        await worker.main()
    finally:
        await worker.close()
