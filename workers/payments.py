"""Payment jobs: settle a gateway payment into the wallet, drive a card refund, complete the
local test gateway's recharges, pay an approved payout. Each is safe to run twice (arq delivers
at least once): the database's unique keys and locked rows make one effect, not the job id."""

from __future__ import annotations

import logging
import time
import uuid

from arq import Retry

from billing import payment_keys, payouts, recharges, refunds
from billing.gateways import GatewayUnavailable
from workers.context import JobContext, services_of

log = logging.getLogger(__name__)


def _retry(ctx: JobContext, exc: Exception) -> Retry:
    """A gateway that did not answer: arq runs the job again later (backoff grows per try)."""
    delay = ctx.get("job_try", 1) * payment_keys.RETRY_BACKOFF_SECONDS
    log.warning("gateway unavailable; retrying", extra={"defer": delay, "error": repr(exc)})
    return Retry(defer=delay)


async def settle_payment(ctx: JobContext, recharge_id: str, payment_id: str | None = None) -> str:
    """Credit a recharge once its gateway confirms the payment (or mark it failed)."""
    try:
        recharge = await recharges.settle(services_of(ctx), uuid.UUID(recharge_id), payment_id)
    except GatewayUnavailable as exc:
        raise _retry(ctx, exc) from exc
    return recharge.status if recharge else "missing"


async def complete_test_recharge(ctx: JobContext, recharge_id: str) -> str:
    """The local test gateway "pays" its recharge: the same settle path as a real webhook."""
    recharge = await recharges.settle(services_of(ctx), uuid.UUID(recharge_id))
    return recharge.status if recharge else "missing"


async def process_refund(ctx: JobContext, card_refund_id: str) -> str:
    """Submit a card refund to the gateway, or check a submitted one; a refund the gateway still
    has pending is asked about again later (its webhook usually comes first)."""
    services = services_of(ctx)
    refund_id = uuid.UUID(card_refund_id)
    try:
        refund = await refunds.process_card_refund(services, refund_id)
    except GatewayUnavailable as exc:
        raise _retry(ctx, exc) from exc
    if refund is None:
        return "missing"
    if refund.status in ("requested", "submitted"):
        window = int(time.time()) // payment_keys.REFUND_POLL_SECONDS
        await services.arq.enqueue_job(
            payment_keys.PROCESS_REFUND,
            card_refund_id,
            _job_id=payment_keys.refund_job_id(refund_id, f"poll:{window}"),
            _defer_by=payment_keys.REFUND_POLL_SECONDS,
        )
    return refund.status


async def execute_payout(ctx: JobContext, payout_id: str) -> str:
    """Pay an approved payout through the payout provider."""
    payout = await payouts.execute_payout(services_of(ctx), uuid.UUID(payout_id))
    return payout.status if payout else "missing"


async def sweep_payments(ctx: JobContext) -> dict[str, int]:
    """The cron that finishes what got stuck (issue 13): pending recharges asked of their
    gateway and settled or failed, card refunds stuck `requested`/`submitted` resubmitted or
    checked, approved payouts resubmitted, captured payments we did not credit refunded to the
    card. Idempotent and safe with several workers (each row is
    claimed with SKIP LOCKED; every effect is keyed by its cause)."""
    services = services_of(ctx)
    recharged = await recharges.sweep_pending_recharges(services)
    refunded = await refunds.sweep_stuck_card_refunds(services)
    paid = await payouts.sweep_approved_payouts(services)
    anomalies = await recharges.refund_anomalies(services)
    out = {f"recharges_{k}": v for k, v in recharged.__dict__.items()}
    out |= {f"extra_payments_{k}": v for k, v in anomalies.items()}
    out |= {f"refunds_{k}": v for k, v in refunded.items()}
    out |= {f"payouts_{k}": v for k, v in paid.items()}
    if any(out.values()):
        log.info("payment sweep", extra=out)
    return out


JOBS = (settle_payment, complete_test_recharge, process_refund, execute_payout)
