"""A followed astrologer came online: every follower is told once per window, in their language,
however much the astrologer's presence flaps."""

from __future__ import annotations

import pytest

import notify
from core.services import Services
from notify import follows, keys
from tests.factories import make_astrologer, make_user
from tests.notify.support import FakeFcm, job_ctx
from workers.notifications import deliver_notification, notify_followers_online


async def test_followers_are_told_once_per_window(push_services: Services, fcm: FakeFcm) -> None:
    astrologer = await make_astrologer(push_services.db, display_name="Pandit Rao")
    asha = await make_user(push_services.db, locale="hi")
    ravi = await make_user(push_services.db, locale="en")
    stranger = await make_user(push_services.db)
    for user in (asha, ravi):
        assert await follows.follow(push_services.db, user.id, astrologer.id)

    assert await notify.notify_followers(push_services, astrologer.id)
    # Flapping: offline, online again, within the window: nothing more.
    assert not await notify.notify_followers(push_services, astrologer.id)
    assert not await notify.notify_followers(push_services, astrologer.id)
    [job] = await push_services.arq.queued_jobs()
    assert job.function == "notify_followers_online"

    told = await notify_followers_online(job_ctx(push_services), *job.args)
    assert told == 2
    # The job runs twice (at least once delivery): still one notification each.
    assert await notify_followers_online(job_ctx(push_services), *job.args) == 2
    rows = await push_services.db.fetch(
        "SELECT user_id, locale, title, body FROM notifications ORDER BY locale"
    )
    assert [(r["user_id"], r["locale"]) for r in rows] == [(ravi.id, "en"), (asha.id, "hi")]
    assert rows[0]["title"] == "Pandit Rao is online"
    assert rows[1]["title"] == "Pandit Rao ऑनलाइन हैं"
    assert stranger.id not in {r["user_id"] for r in rows}


async def test_a_lost_debounce_key_still_gives_one_notification_per_window(
    push_services: Services,
) -> None:
    astrologer = await make_astrologer(push_services.db)
    user = await make_user(push_services.db)
    await follows.follow(push_services.db, user.id, astrologer.id)
    assert await notify.notify_followers(push_services, astrologer.id)
    [job] = await push_services.arq.queued_jobs()
    await notify_followers_online(job_ctx(push_services), *job.args)
    await push_services.redis.delete(keys.follow_online(astrologer.id))  # a Redis restart
    assert await notify.notify_followers(push_services, astrologer.id)
    await notify_followers_online(job_ctx(push_services), *job.args)
    assert await push_services.db.fetchval("SELECT count(*) FROM notifications") == 1


async def test_the_debounce_window_is_the_setting(push_services: Services) -> None:
    astrologer = await make_astrologer(push_services.db)
    await notify.notify_followers(push_services, astrologer.id)
    ttl = await push_services.redis.ttl(keys.follow_online(astrologer.id))
    assert 0 < ttl <= push_services.settings.follow_online_debounce_seconds == 1800


@pytest.mark.parametrize("page_size", [1, 500])
async def test_fan_out_pages_through_all_followers(
    push_services: Services, fcm: FakeFcm, page_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.notifications as jobs

    monkeypatch.setattr(jobs, "FOLLOWERS_PAGE_SIZE", page_size)
    astrologer = await make_astrologer(push_services.db)
    users = [await make_user(push_services.db) for _ in range(5)]
    for user in users:
        await follows.follow(push_services.db, user.id, astrologer.id)
    assert await notify_followers_online(job_ctx(push_services), str(astrologer.id), 1) == 5
    nids = [r["id"] for r in await push_services.db.fetch("SELECT id FROM notifications")]
    assert len(nids) == 5
    for nid in nids:  # no devices: inbox only, nothing to send
        assert await deliver_notification(job_ctx(push_services), str(nid)) == {}
