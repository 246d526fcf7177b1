"""Every Redis key and arq job id of notifications, with the reason for each number."""

from __future__ import annotations

import uuid

# "A followed astrologer came online" is sent at most once per this window per astrologer, so an
# astrologer whose connection flaps (online, offline, online) does not spam their followers.
# TTL = Settings.follow_online_debounce_seconds (30 min by default).
FOLLOW_ONLINE_PREFIX = "notify:follow-online:"


def follow_online(astrologer_id: uuid.UUID) -> str:
    return f"{FOLLOW_ONLINE_PREFIX}{astrologer_id}"


# arq job ids. arq ignores an enqueue whose id is queued, running or has a kept result, so one
# notification has one delivery job however often it is enqueued (the database claims make a
# second run harmless anyway). The sweep uses its own id: the first job's kept result (1 h) must
# not block the re-enqueue of a notification whose first job never ran.
def delivery_job_id(notification_id: uuid.UUID) -> str:
    return f"notify:{notification_id}"


def sweep_job_id(notification_id: uuid.UUID) -> str:
    return f"notify:{notification_id}:sweep"


def follow_online_job_id(astrologer_id: uuid.UUID, bucket: int) -> str:
    return f"notify:follow-online:{astrologer_id}:{bucket}"
