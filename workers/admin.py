"""Operator tools over arq's kept results: list failed jobs, re-enqueue one.

arq keeps each finished job's result in Redis (`arq:result:<job id>`) for
`WorkerSettings.keep_result` seconds (1 h); failures are listed from there. A retry enqueues the
same function with the same arguments under a new job id (`<id>:retry:<n>`) and deletes the
failed result, so the list shows only what is still failed. Jobs are safe to run twice (DESIGN.md),
so a retry never doubles an effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, JobResult

_KEY_PREFIXES = (result_key_prefix, job_key_prefix)


@dataclass(frozen=True)
class FailedJob:
    job_id: str
    function: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    tries: int
    error: str
    finished_at: datetime


def _failed(job_id: str, result: JobResult) -> FailedJob:
    return FailedJob(
        job_id,
        result.function,
        tuple(result.args),
        dict(result.kwargs),
        result.job_try,
        f"{type(result.result).__name__}: {result.result}",
        result.finish_time,
    )


async def failed_jobs(arq: ArqRedis, limit: int = 100) -> list[FailedJob]:
    """Failed jobs whose results arq still keeps, most recent first (SCAN, not KEYS)."""
    found: list[FailedJob] = []
    async for raw in arq.scan_iter(match=result_key_prefix + "*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        job_id = key[len(result_key_prefix) :]
        try:
            result = await Job(job_id, arq).result_info()
        except Exception as exc:  # pickled by code that no longer exists: list it as unreadable
            found.append(
                FailedJob(job_id, "?", (), {}, 0, f"unreadable result: {exc!r}", datetime.now(UTC))
            )
            continue
        if result is not None and not result.success:
            found.append(_failed(job_id, result))
    found.sort(key=lambda f: f.finished_at, reverse=True)
    return found[:limit]


async def retry_job(arq: ArqRedis, job_id: str) -> str | None:
    """Re-enqueue a failed job; the new job id, or None when there is no such failed job."""
    result = await Job(job_id, arq).result_info()
    if result is None or result.success:
        return None
    base = job_id.split(":retry:", 1)[0]
    n = 1
    while await arq.exists(*(prefix + f"{base}:retry:{n}" for prefix in _KEY_PREFIXES)):
        n += 1
    new_id = f"{base}:retry:{n}"
    job = await arq.enqueue_job(result.function, *result.args, _job_id=new_id, **result.kwargs)
    if job is None:
        return None
    await arq.delete(result_key_prefix + job_id)
    return new_id


async def _pool(redis_url: str) -> ArqRedis:
    from arq import create_pool
    from arq.connections import RedisSettings

    return await create_pool(RedisSettings.from_dsn(redis_url))


async def print_failed(redis_url: str, limit: int, as_json: bool) -> int:
    """`astrolive jobs failed`: one line per failed job (or JSON); the count."""
    import json

    arq = await _pool(redis_url)
    try:
        failed = await failed_jobs(arq, limit)
    finally:
        await arq.aclose()
    if as_json:
        rows = [
            {
                "job_id": f.job_id,
                "function": f.function,
                "args": list(f.args),
                "kwargs": f.kwargs,
                "tries": f.tries,
                "error": f.error,
                "finished_at": f.finished_at.isoformat(),
            }
            for f in failed
        ]
        print(json.dumps(rows, default=str, ensure_ascii=False, indent=2))
    else:
        for f in failed:
            args = ", ".join([*map(repr, f.args), *(f"{k}={v!r}" for k, v in f.kwargs.items())])
            print(
                f"{f.finished_at:%Y-%m-%d %H:%M:%S} {f.job_id} {f.function}({args}) "
                f"tries={f.tries} {f.error}"
            )
        print(f"{len(failed)} failed job(s)")
    return len(failed)


async def print_retry(redis_url: str, job_id: str) -> bool:
    """`astrolive jobs retry JOB_ID`: re-enqueue it; False when there is no such failed job."""
    arq = await _pool(redis_url)
    try:
        new_id = await retry_job(arq, job_id)
    finally:
        await arq.aclose()
    print(f"re-enqueued {job_id} as {new_id}" if new_id else f"no failed job {job_id}")
    return new_id is not None


async def worker_alive(redis_url: str) -> bool:
    """Whether some worker's heartbeat is fresh. arq rewrites the key every
    `health_check_interval` seconds with a TTL one second longer, so a dead worker's key is gone
    within that time."""
    from arq.constants import default_queue_name, health_check_key_suffix

    arq = await _pool(redis_url)
    try:
        return bool(await arq.exists(default_queue_name + health_check_key_suffix))
    finally:
        await arq.aclose()
