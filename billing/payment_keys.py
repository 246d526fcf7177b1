"""Every Redis key the payments code makes (arq job ids and defers), with the reason for each.

arq stores a queued job under `arq:job:{job id}` and keeps its result for the worker's
`keep_result` (1 h): while either exists, enqueueing the same id again is refused. Job ids only
spare duplicate work; the database's unique keys are what guarantee one credit (DESIGN.md).
"""

from __future__ import annotations

import uuid

SETTLE_PAYMENT = "settle_payment"
PROCESS_REFUND = "process_refund"
COMPLETE_TEST_RECHARGE = "complete_test_recharge"
EXECUTE_PAYOUT = "execute_payout"


def settle_job_id(gateway: str, event_id: str) -> str:
    """One settle job per gateway event: five deliveries of the same event queue one job. A
    different event of the same payment (failed, then succeeded) gets its own job."""
    return f"settle:{gateway}:{event_id}"


def test_recharge_job_id(recharge_id: uuid.UUID) -> str:
    return f"test-recharge:{recharge_id}"


def refund_job_id(card_refund_id: uuid.UUID, reason: str) -> str:
    """`reason` is what woke it (requested, a gateway event id): each wake-up may run once."""
    return f"card-refund:{card_refund_id}:{reason}"


def payout_job_id(payout_id: uuid.UUID) -> str:
    return f"payout:{payout_id}"


# The settle job retries a gateway that did not answer after job_try x this many seconds: 5, 10,
# 15, 20 s — long enough for a blip to pass, inside the worker's max_tries (5).
RETRY_BACKOFF_SECONDS = 5

# A card refund still pending at the gateway is asked again after this long (the gateway's event
# usually comes first; this is the fallback). 10 minutes: refunds take minutes to days.
REFUND_POLL_SECONDS = 600
