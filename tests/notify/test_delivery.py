"""notify() → inbox entry and delivery rows → the delivery job → the channel, in the user's
language; at most one delivery per channel even when the job runs twice; transient errors retried,
permanent ones not; dead tokens dropped."""

from __future__ import annotations

import logging
import uuid

import pytest
from arq import Retry

import notify
from core.services import Services
from notify import deliveries, devices, inbox, templates
from notify.api import NOT_INBOX_EVENTS
from tests.factories import make_user
from tests.notify.conftest import FCM_TOKEN
from tests.notify.support import FakeFcm, FcmReply, fcm_error, job_ctx
from tests.notify.test_templates import DEVANAGARI, SAMPLE_DATA
from workers.notifications import DELIVERY_MAX_TRIES, DeliveryGaveUp, deliver_notification

INBOX_EVENTS = sorted(e for e in SAMPLE_DATA if e not in NOT_INBOX_EVENTS)


async def _user_with_device(
    services: Services, locale: str = "en", token: str | None = None
) -> tuple[uuid.UUID, str]:
    user = await make_user(services.db, locale=locale)
    push_token = token or f"tok-{uuid.uuid4().hex}"
    await devices.register(services.db, user.id, "android", push_token)
    return user.id, push_token


async def _only_notification(services: Services, user_id: uuid.UUID) -> inbox.Notification:
    items = await inbox.page(services.db, user_id, 10)
    assert len(items) == 1
    return items[0]


@pytest.mark.parametrize("locale", ["en", "hi"])
@pytest.mark.parametrize("event", INBOX_EVENTS)
async def test_each_event_reaches_inbox_and_push_in_the_users_language(
    push_services: Services, fcm: FakeFcm, event: str, locale: str
) -> None:
    user_id, token = await _user_with_device(push_services, locale)
    await notify.notify(push_services, user_id, event, dict(SAMPLE_DATA[event]), key=f"{event}:1")

    n = await _only_notification(push_services, user_id)
    expected = templates.render(event, locale, SAMPLE_DATA[event])
    assert (n.event, n.locale, n.title, n.body) == (event, locale, expected.title, expected.body)
    assert n.read_at is None
    assert bool(DEVANAGARI.search(n.body)) == (locale == "hi")

    counts = await deliver_notification(job_ctx(push_services), str(n.id))
    assert counts == {"sent": 1}
    [message] = fcm.accepted
    assert message["token"] == token
    assert message["notification"] == {"title": expected.title, "body": expected.body}
    assert message["data"]["event"] == event
    assert message["data"]["notification_id"] == str(n.id)
    assert message["android"]["collapse_key"] == str(n.id)
    assert fcm.auth == [f"Bearer {FCM_TOKEN}"]


async def test_notify_is_idempotent_per_key_and_the_job_delivers_once(
    push_services: Services, fcm: FakeFcm
) -> None:
    user_id, _ = await _user_with_device(push_services)
    data = {"astrologer_name": "Pandit Rao", "type": "chat"}
    for _ in range(3):
        await notify.notify(
            push_services, user_id, "consultation_missed", data, key="consultation_missed:c1"
        )
    n = await _only_notification(push_services, user_id)
    # The job runs twice (arq delivers at least once): the second run finds nothing to send.
    await deliver_notification(job_ctx(push_services), str(n.id))
    await deliver_notification(job_ctx(push_services), str(n.id))
    assert len(fcm.requests) == 1
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert (row.status, row.attempts, row.channel) == ("sent", 1, "push")
    assert row.provider_id
    assert row.provider_id.startswith("projects/astrolive-test/messages/")
    # One enqueued job for the three calls: arq dedupes on the notification's job id.
    queued = await push_services.arq.queued_jobs()
    assert [j.function for j in queued] == ["deliver_notification"]


async def test_push_500_then_200_delivers_exactly_once(
    push_services: Services, fcm: FakeFcm
) -> None:
    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "refund_issued", {"amount": 3000}, key="refund:r1")
    n = await _only_notification(push_services, user_id)
    fcm.script = [fcm_error(500, "INTERNAL", "try again")]

    with pytest.raises(Retry):
        await deliver_notification(job_ctx(push_services, 1), str(n.id))
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.reason
    assert "fcm 500 INTERNAL" in row.reason

    assert await deliver_notification(job_ctx(push_services, 2), str(n.id)) == {"sent": 1}
    assert await deliver_notification(job_ctx(push_services, 3), str(n.id)) == {"sent": 1}
    assert len(fcm.requests) == 2
    assert len(fcm.accepted) == 1
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert (row.status, row.attempts, row.reason) == ("sent", 2, None)


async def test_retry_after_of_a_throttled_provider_is_honoured(
    push_services: Services, fcm: FakeFcm
) -> None:
    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "payout_paid", {"amount": 100}, key="payout:p1")
    n = await _only_notification(push_services, user_id)
    reply = fcm_error(429, "QUOTA_EXCEEDED", "slow down")
    reply.headers["Retry-After"] = "7"
    fcm.script = [reply]
    with pytest.raises(Retry) as caught:
        await deliver_notification(job_ctx(push_services), str(n.id))
    assert caught.value.defer_score is not None
    assert caught.value.defer_score >= 7000


@pytest.mark.parametrize(
    "reply",
    [
        fcm_error(404, "UNREGISTERED", "Requested entity was not found."),
        fcm_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            field_name="message.token",
        ),
    ],
    ids=["unregistered", "invalid-token"],
)
async def test_dead_token_fails_without_retry_and_the_device_is_dropped(
    push_services: Services, fcm: FakeFcm, reply: FcmReply
) -> None:
    user_id, _token = await _user_with_device(push_services)
    _, other_token = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user_id)
    fcm.script = [reply]

    counts = await deliver_notification(job_ctx(push_services), str(n.id))  # no Retry raised
    assert counts == {"failed": 1}
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert row.status == "failed"
    assert row.reason
    assert str(reply.status) in row.reason
    assert await devices.list_for_user(push_services.db, user_id) == []
    # Only that token: other people's devices stay.
    assert (
        await push_services.db.fetchval(
            "SELECT count(*) FROM devices WHERE push_token = $1", other_token
        )
        == 1
    )
    await deliver_notification(job_ctx(push_services), str(n.id))
    assert len(fcm.requests) == 1


async def test_invalid_argument_about_the_payload_keeps_the_device(
    push_services: Services, fcm: FakeFcm
) -> None:
    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user_id)
    fcm.script = [fcm_error(400, "INVALID_ARGUMENT", "data must only contain string values")]
    assert await deliver_notification(job_ctx(push_services), str(n.id)) == {"failed": 1}
    assert len(await devices.list_for_user(push_services.db, user_id)) == 1


async def test_transient_errors_give_up_after_the_last_try_leaving_rows_queued(
    push_services: Services, fcm: FakeFcm
) -> None:
    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user_id)
    fcm.script = [fcm_error(503, "UNAVAILABLE", "down")]
    with pytest.raises(DeliveryGaveUp, match="gave up after"):
        await deliver_notification(job_ctx(push_services, DELIVERY_MAX_TRIES), str(n.id))
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert row.status == "queued"
    assert row.reason
    assert "503" in row.reason
    # An operator retry (a fresh job) delivers it.
    assert await deliver_notification(job_ctx(push_services, 1), str(n.id)) == {"sent": 1}


async def test_a_hanging_provider_times_out_and_is_retried(
    push_services: Services, fcm: FakeFcm
) -> None:
    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user_id)
    fcm.script = [FcmReply(hold=True)]
    with pytest.raises(Retry):
        await deliver_notification(job_ctx(push_services), str(n.id))
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert row.status == "queued"
    assert row.reason
    assert "fcm unreachable" in row.reason


async def test_a_live_claim_is_not_stolen_and_a_stale_one_is_taken_over(
    push_services: Services, fcm: FakeFcm
) -> None:
    """A worker killed after claiming, before sending: the next run waits out the lease, then
    sends once."""
    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user_id)
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert await deliveries.claim(push_services.db, row.id, 1.0) == 1  # "the killed worker"

    with pytest.raises(Retry):  # within the lease: hands off
        await deliver_notification(job_ctx(push_services, 2), str(n.id))
    assert fcm.requests == []
    await push_services.db.execute(
        "UPDATE notification_deliveries SET claimed_at = now() - interval '2 s' WHERE id = $1",
        row.id,
    )
    assert await deliver_notification(job_ctx(push_services, 3), str(n.id)) == {"sent": 1}
    # The dead worker's late write cannot undo it: its fence (attempts = 1) is stale.
    assert not await deliveries.mark_failed(push_services.db, row.id, 1, "late")
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert (row.status, row.attempts) == ("sent", 2)
    assert len(fcm.accepted) == 1


async def test_push_to_every_device_and_email_when_the_user_has_one(
    push_services: Services, fcm: FakeFcm, caplog: pytest.LogCaptureFixture
) -> None:
    user_id, t1 = await _user_with_device(push_services, "hi")
    await devices.register(push_services.db, user_id, "ios", "tok-ios")
    await push_services.db.execute(
        # Issue 16: only a verified address gets e-mail (tests/api/test_email.py checks the rest).
        "UPDATE users SET email = 'asha@example.com', email_verified_at = now() WHERE id = $1",
        user_id,
    )
    await notify.notify(push_services, user_id, "refund_issued", {"amount": 3000}, key="refund:r1")
    n = await _only_notification(push_services, user_id)
    caplog.set_level(logging.INFO, "astrolive.notify.outbox")
    # EMAIL_PROVIDER=log in these settings: the e-mail goes to the log.
    assert await deliver_notification(job_ctx(push_services), str(n.id)) == {"sent": 3}
    assert sorted(m["token"] for m in fcm.accepted) == sorted([t1, "tok-ios"])
    rows = await deliveries.list_for(push_services.db, n.id)
    assert sorted(r.channel for r in rows) == ["email", "push", "push"]
    assert any(
        "email to asha" in r.getMessage() and "रिफ़ंड" in r.getMessage() for r in caplog.records
    )


async def test_a_user_without_devices_gets_only_the_inbox(
    push_services: Services, fcm: FakeFcm
) -> None:
    user = await make_user(push_services.db)
    await notify.notify(push_services, user.id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user.id)
    assert await deliver_notification(job_ctx(push_services), str(n.id)) == {}
    assert fcm.requests == []


async def test_bad_calls_are_refused(push_services: Services) -> None:
    user = await make_user(push_services.db)
    with pytest.raises(ValueError, match="not an inbox event"):
        await notify.notify(push_services, user.id, "otp", {"code": "1", "minutes": 5}, key="otp:1")
    with pytest.raises(ValueError, match="unknown notification event"):
        await notify.notify(push_services, user.id, "nope", {}, key="nope:1")
    with pytest.raises(ValueError, match="needs amount"):
        await notify.notify(push_services, user.id, "refund_issued", {}, key="refund:1")
    # A missing user is skipped, not an error for the caller.
    await notify.notify(push_services, uuid.uuid4(), "astrologer_verified", {}, key="v:1")
    assert await push_services.db.fetchval("SELECT count(*) FROM notifications") == 0


async def test_the_sweep_enqueues_what_a_crash_left_unenqueued(push_services: Services) -> None:
    from workers.notifications import sweep_undelivered

    user_id, _ = await _user_with_device(push_services)
    async with push_services.db.acquire() as conn, conn.transaction():
        nid = await notify.record_txn(conn, user_id, "astrologer_verified", {}, key="verified:1")
    assert nid is not None
    assert await sweep_undelivered(job_ctx(push_services)) == 0  # too recent: its enqueue may come
    await push_services.db.execute(
        "UPDATE notification_deliveries SET created_at = now() - interval '5 minutes'"
    )
    assert await sweep_undelivered(job_ctx(push_services)) == 1
    queued = await push_services.arq.queued_jobs()
    assert [(j.function, j.args) for j in queued] == [("deliver_notification", (str(nid),))]


async def test_the_sweep_finds_claims_that_no_job_will_finish(push_services: Services) -> None:
    from workers.notifications import sweep_undelivered

    user_id, _ = await _user_with_device(push_services)
    await notify.notify(push_services, user_id, "astrologer_verified", {}, key="verified:1")
    n = await _only_notification(push_services, user_id)
    await push_services.arq.delete(f"arq:job:notify:{n.id}")  # as if its job had come and gone
    await push_services.arq.delete("arq:queue")
    [row] = await deliveries.list_for(push_services.db, n.id)
    assert await deliveries.claim(push_services.db, row.id, 1.0) == 1
    assert await sweep_undelivered(job_ctx(push_services)) == 0  # a fresh claim: its job runs
    await push_services.db.execute(
        "UPDATE notification_deliveries SET claimed_at = now() - interval '1 hour'"
    )
    assert await sweep_undelivered(job_ctx(push_services)) == 1
    queued = await push_services.arq.queued_jobs()
    assert [j.args for j in queued] == [(str(n.id),)]
