"""Verified gateway events -> work for the payment jobs. Signatures are checked before this is
called (on the raw body, in the gateway modules); here each event is recorded once and the
matching settle or refund job is queued. Events about objects that are not ours are ignored."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from billing import recharges, refunds
from billing.gateways import (
    GatewayUnavailable,
    SignatureInvalid,
    razorpay_gateway,
    stripe_gateway,
)
from core.errors import NotFound
from core.services import Services

log = logging.getLogger(__name__)

STRIPE_PAYMENT_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed")
STRIPE_REFUND_EVENTS = ("refund.failed", "refund.updated", "charge.refund.updated")
RAZORPAY_PAYMENT_EVENTS = ("payment.captured", "payment.failed")
RAZORPAY_REFUND_EVENTS = ("refund.failed", "refund.processed")


async def stripe_event(services: Services, raw: bytes, signature: str | None) -> str:
    """Verify and handle one Stripe webhook delivery; returns what was done (for the log)."""
    event = stripe_gateway.verify_webhook(raw, signature, services.settings.stripe_webhook_secret)
    kind, event_id = str(event.get("type")), str(event["id"])
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    if kind in STRIPE_PAYMENT_EVENTS:
        return await _payment_event(services, "stripe", event_id, kind, obj.get("id"), None, event)
    if kind in STRIPE_REFUND_EVENTS:
        return await _refund_event(services, event_id, obj.get("id"))
    return "ignored"


async def razorpay_event(
    services: Services, raw: bytes, signature: str | None, event_id: str | None
) -> str:
    """Verify and handle one Razorpay webhook delivery. Razorpay names each event in the
    `X-Razorpay-Event-Id` header; without one, the body's digest stands in."""
    event = razorpay_gateway.verify_webhook(
        raw, signature, services.settings.razorpay_webhook_secret
    )
    kind = str(event["event"])
    event_id = event_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    payload: dict[str, Any] = event.get("payload") or {}
    if kind in RAZORPAY_PAYMENT_EVENTS:
        payment = (payload.get("payment") or {}).get("entity") or {}
        return await _payment_event(
            services, "razorpay", event_id, kind, payment.get("order_id"), payment.get("id"), event
        )
    if kind in RAZORPAY_REFUND_EVENTS:
        refund = (payload.get("refund") or {}).get("entity") or {}
        return await _refund_event(services, event_id, refund.get("id"))
    return "ignored"


async def _payment_event(
    services: Services,
    gateway: str,
    event_id: str,
    kind: str,
    order_id: object,
    payment_id: object,
    event: dict[str, Any],
) -> str:
    if not isinstance(order_id, str):
        return "ignored"
    recharge = await recharges.find_by_order(services.db, gateway, order_id)
    if recharge is None:
        log.info("gateway event for an unknown order", extra={"gateway": gateway, "event": kind})
        return "unknown order"
    pay_id = payment_id if isinstance(payment_id, str) else None
    await recharges.record_event(
        services.db,
        gateway=gateway,
        event_id=event_id,
        type=kind,
        recharge_id=recharge.id,
        payment_id=pay_id,
        payload=event,
    )
    # A paid order is looked at again only for another payment: a second capture on it must be
    # recorded and flagged for refund (billing/recharges.py), never credited.
    if recharge.status != "succeeded" or pay_id not in (None, recharge.gateway_payment_id):
        await recharges.enqueue_settle(
            services,
            gateway=gateway,
            event_id=event_id,
            recharge_id=recharge.id,
            payment_id=pay_id,
        )
    return "settle queued"


async def _refund_event(services: Services, event_id: str, gateway_refund_id: object) -> str:
    if not isinstance(gateway_refund_id, str):
        return "ignored"
    refund = await refunds.find_card_refund(services.db, gateway_refund_id)
    if refund is None:
        return "unknown refund"
    await refunds.enqueue_card_refund(services, refund.id, event_id)
    return "refund check queued"


async def razorpay_verify(
    services: Services,
    *,
    user_id: uuid.UUID,
    order_id: str,
    payment_id: str,
    signature: str,
) -> recharges.Recharge:
    """The checkout callback: check Razorpay's payment signature, then settle at once (the same
    path as the job). 404 for an order that is not this user's recharge."""
    settings = services.settings
    if not settings.razorpay_key_secret:
        raise SignatureInvalid("Razorpay is not enabled here")
    razorpay_gateway.verify_payment(order_id, payment_id, signature, settings.razorpay_key_secret)
    recharge = await recharges.find_by_order(services.db, "razorpay", order_id)
    if recharge is None or recharge.user_id != user_id:
        raise NotFound("no such recharge")
    await recharges.record_event(
        services.db,
        gateway="razorpay",
        event_id=f"verify:{payment_id}",
        type="razorpay.verify",
        recharge_id=recharge.id,
        payment_id=payment_id,
        payload={"order_id": order_id, "payment_id": payment_id},
    )
    try:
        settled = await recharges.settle(services, recharge.id, payment_id)
    except GatewayUnavailable:
        await recharges.enqueue_settle(
            services,
            gateway="razorpay",
            event_id=f"verify:{payment_id}",
            recharge_id=recharge.id,
            payment_id=payment_id,
        )
        settled = recharge
    assert settled is not None
    return settled
