"""A worker process for kill -9 tests: the service's real startup and delivery job, with a short
job timeout so arq gives a killed worker's job to another worker within seconds.

    python -m tests.workers.worker_child JOB_TIMEOUT_SECONDS
"""

from __future__ import annotations

import sys

from arq.worker import Worker

from astrolive.resources import redis_settings
from astrolive.worker import WorkerSettings, shutdown, startup
from core.logging import setup_logging
from core.settings import Settings
from tests.workers.support import registered


def main() -> None:
    settings = Settings()
    setup_logging("INFO", "text")
    assert settings.redis_url
    timeout = float(sys.argv[1])
    worker = Worker(
        functions=[registered("deliver_notification", timeout=timeout)],
        redis_settings=redis_settings(settings.redis_url),
        ctx={"settings": settings},
        on_startup=startup,  # type: ignore[arg-type]  # arq types ctx as dict; ours is a TypedDict
        on_shutdown=shutdown,  # type: ignore[arg-type]  # as on_startup
        poll_delay=0.05,
        handle_signals=True,
        job_completion_wait=WorkerSettings.job_completion_wait,
    )
    worker.run()


if __name__ == "__main__":
    main()
