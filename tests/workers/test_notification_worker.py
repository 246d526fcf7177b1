"""The real arq worker running notification jobs: retries with backoff through arq, one delivery
after a kill -9 mid-job, job metrics on the worker's endpoint, failed jobs listed and retried."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from arq.cron import CronJob
from arq.worker import Function

import notify
from astrolive.resources import close_services, open_services
from astrolive.worker import WorkerSettings
from core.services import Services
from core.settings import Settings
from db import embedded
from notify import deliveries, devices
from tests.factories import make_user
from tests.notify.conftest import fcm_settings
from tests.notify.support import FakeFcm, FcmReply, fcm_error
from tests.servers import process_env
from tests.workers.support import make_worker, registered, run_burst
from workers.admin import failed_jobs, retry_job, worker_alive

ROOT = Path(__file__).resolve().parents[2]
# arq 0.28's Worker.close() calls redis-py 5's deprecated `close()`; not our code.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


async def _notification(services: Services, key: str = "refund:r1") -> uuid.UUID:
    user = await make_user(services.db, locale="hi")
    await devices.register(services.db, user.id, "android", f"tok-{uuid.uuid4().hex}")
    await notify.notify(services, user.id, "refund_issued", {"amount": 3000}, key=key)
    nid = await services.db.fetchval("SELECT id FROM notifications WHERE user_id = $1", user.id)
    assert isinstance(nid, uuid.UUID)
    return nid


async def test_worker_retries_a_500_with_backoff_and_delivers_once_with_metrics(
    push_settings: Settings, push_services: Services, fcm: FakeFcm
) -> None:
    port = embedded.free_port()
    settings = push_settings.model_copy(update={"worker_metrics_port": port})
    nid = await _notification(push_services)
    fcm.script = [fcm_error(500, "INTERNAL"), fcm_error(503, "UNAVAILABLE")]
    worker = make_worker(settings, [registered("deliver_notification")], burst=False)
    task = asyncio.create_task(worker.main())
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                [row] = await deliveries.list_for(push_services.db, nid)
                if row.status == "sent":
                    break
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
    finally:
        task.cancel()
        await worker.close()
    assert (row.status, row.attempts) == ("sent", 3)
    assert len(fcm.requests) == 3
    assert len(fcm.accepted) == 1
    assert 'astrolive_jobs_total{function="deliver_notification",outcome="retry"} 2.0' in text
    assert 'astrolive_jobs_total{function="deliver_notification",outcome="success"} 1.0' in text
    assert 'astrolive_job_duration_seconds_count{function="deliver_notification"} 3.0' in text
    assert 'astrolive_notification_deliveries_total{channel="push",outcome="sent"} 1.0' in text
    assert 'astrolive_notification_deliveries_total{channel="push",outcome="retry"} 2.0' in text


async def test_failed_jobs_are_listed_and_retried(
    push_settings: Settings, push_services: Services, fcm: FakeFcm
) -> None:
    nid = await _notification(push_services)
    fcm.script = [fcm_error(503, "UNAVAILABLE", "outage")]
    # One try only, so the outage fails the job at once.
    await run_burst(make_worker(push_settings, [registered("deliver_notification", max_tries=1)]))
    [failed] = await failed_jobs(push_services.arq)
    assert failed.function == "deliver_notification"
    assert failed.args == (str(nid),)
    assert failed.job_id == f"notify:{nid}"
    assert "retries exceeded" in failed.error
    [row] = await deliveries.list_for(push_services.db, nid)
    assert row.status == "queued"
    assert row.reason
    assert "outage" in row.reason

    # The CLI prints it too (a real process, reading the same Redis).
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "astrolive", "jobs", "failed",
        env=process_env(push_settings), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout = (await asyncio.wait_for(cli.communicate(), 30))[0].decode()
    assert cli.returncode == 0
    assert f"notify:{nid} deliver_notification('{nid}')" in stdout
    assert "1 failed job(s)" in stdout

    assert await retry_job(push_services.arq, "no-such-job") is None
    new_id = await retry_job(push_services.arq, failed.job_id)
    assert new_id == f"notify:{nid}:retry:1"
    assert await failed_jobs(push_services.arq) == []
    await run_burst(make_worker(push_settings, [registered("deliver_notification")]))
    [row] = await deliveries.list_for(push_services.db, nid)
    assert (row.status, row.attempts) == ("sent", 2)
    assert len(fcm.accepted) == 1


def _child_env(settings: Settings, fcm: FakeFcm) -> dict[str, str]:
    return process_env(
        settings,
        PUSH_PROVIDER="fcm",
        FCM_ENDPOINT=fcm.url,
        FCM_PROJECT_ID=settings.fcm_project_id or "",
        FCM_ACCESS_TOKEN=settings.fcm_access_token or "",
        NOTIFY_SEND_TIMEOUT_SECONDS=str(settings.notify_send_timeout_seconds),
        NOTIFY_CLAIM_LEASE_SECONDS=str(settings.notify_claim_lease_seconds),
        NOTIFY_RETRY_BASE_SECONDS="0.05",
        WORKER_METRICS_PORT="0",
    )


async def _child_worker(env: dict[str, str], job_timeout: float = 3) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.workers.worker_child", str(job_timeout),
        env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_sigterm_lets_the_running_job_finish(
    database_url: str, redis_url: str, tmp_path: Path, fcm: FakeFcm
) -> None:
    settings = fcm_settings(
        database_url, redis_url, tmp_path, fcm.url, notify_send_timeout_seconds=5.0,
        notify_claim_lease_seconds=6.0,
    )  # fmt: skip
    services = await open_services(settings)
    try:
        nid = await _notification(services)
        fcm.script = [FcmReply(delay=1.5)]  # a slow provider: the deploy's SIGTERM comes mid-send
        worker = await _child_worker(_child_env(settings, fcm), job_timeout=10)
        try:
            await asyncio.wait_for(fcm.received.wait(), 20)
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), 20) == 0
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        [row] = await deliveries.list_for(services.db, nid)
        assert (row.status, row.attempts) == ("sent", 1)  # finished, not cancelled and re-run
        assert len(fcm.requests) == 1
    finally:
        await close_services(services)


@pytest.mark.slow
async def test_a_worker_killed_mid_send_is_finished_by_the_next_with_one_delivery(
    database_url: str, redis_url: str, tmp_path: Path, fcm: FakeFcm
) -> None:
    # Real numbers, scaled down: a send times out after 2 s, a claim is taken over after 2.5 s,
    # and arq hands a killed worker's job to another after job timeout (3 s) + 10 s.
    settings = fcm_settings(
        database_url, redis_url, tmp_path, fcm.url,
        notify_send_timeout_seconds=2.0, notify_claim_lease_seconds=2.5,
    )  # fmt: skip
    services = await open_services(settings)
    try:
        nid = await _notification(services)
        fcm.script = [FcmReply(hold=True)]  # the first send hangs: the worker dies inside it
        env = _child_env(settings, fcm)
        first = await _child_worker(env)
        try:
            await asyncio.wait_for(fcm.received.wait(), 20)
            [row] = await deliveries.list_for(services.db, nid)
            assert (row.status, row.attempts) == ("sending", 1)  # claimed, not marked
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()

        second = await _child_worker(env)
        try:
            for _ in range(400):
                [row] = await deliveries.list_for(services.db, nid)
                if row.status == "sent":
                    break
                await asyncio.sleep(0.1)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 15) == 0
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        assert (row.status, row.attempts) == ("sent", 2)
        assert len(fcm.requests) == 2  # the hung one and the finishing one
        assert len(fcm.accepted) == 1  # delivered once
        assert await failed_jobs(services.arq) == []
    finally:
        await close_services(services)


async def test_health_check_sees_a_live_worker(push_settings: Settings) -> None:
    assert push_settings.redis_url
    assert not await worker_alive(push_settings.redis_url)
    worker = make_worker(push_settings, [registered("noop")], burst=False, health_check_interval=1)
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if await worker_alive(push_settings.redis_url):
                break
            await asyncio.sleep(0.05)
        assert await worker_alive(push_settings.redis_url)
        # Not subprocess.run: it would block this loop, and with it the worker's heartbeat.
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "astrolive", "worker", "--check",
            env=process_env(push_settings), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(check.communicate(), 30)
        assert check.returncode == 0, out
    finally:
        task.cancel()
        await worker.close()
    assert not await worker_alive(push_settings.redis_url)  # close() removes the heartbeat


def test_worker_settings_are_hardened() -> None:
    names = {f.name for f in WorkerSettings.functions}
    assert {"deliver_notification", "notify_followers_online"} <= names
    assert "cron:sweep_undelivered" in {c.name for c in WorkerSettings.cron_jobs}
    assert WorkerSettings.job_completion_wait > 0
    assert WorkerSettings.health_check_interval <= 30
    # Every job is wrapped by the metrics (functools.wraps keeps the name arq logs).
    assert all(getattr(f.coroutine, "__wrapped__", None) for f in WorkerSettings.functions)


def test_a_killed_workers_jobs_come_back_within_a_minute() -> None:
    jobs: list[Function | CronJob] = [*WorkerSettings.functions, *WorkerSettings.cron_jobs]
    longest = max(j.timeout_s or WorkerSettings.job_timeout for j in jobs)
    assert longest + 10 <= 60  # arq: in_progress_timeout = max job timeout + 10 s


async def test_a_second_worker_on_a_taken_metrics_port_still_runs(push_settings: Settings) -> None:
    port = embedded.free_port()
    settings = push_settings.model_copy(update={"worker_metrics_port": port})
    first = make_worker(settings, [registered("noop")], burst=False)
    task = asyncio.create_task(first.main())
    try:
        for _ in range(100):
            if "metrics_server" in first.ctx:
                break
            await asyncio.sleep(0.02)
        job = await first.pool.enqueue_job("noop") if first.pool else None
        assert job is not None
        second = make_worker(settings, [registered("noop")])
        await run_burst(second)  # binds nothing, runs jobs all the same
        assert "metrics_server" not in second.ctx
        assert await job.result(timeout=5) == "ok"
    finally:
        task.cancel()
        await first.close()
