"""Gateway webhooks and Razorpay's checkout verify (API.md "Wallet and payments").

Webhooks are public routes authenticated by their signature, verified over the raw body before
anything is parsed; a bad or missing signature is 400 and changes nothing."""

from __future__ import annotations

import logging

from pydantic import Field

from api.framework import Call, Router
from api.models import Input, Output
from api.wallet import RechargeOut, recharge_out
from billing import webhooks
from core import ratelimit

log = logging.getLogger(__name__)
router = Router("payments")


class WebhookAck(Output):
    received: bool = True


class RazorpayVerifyIn(Input):
    order_id: str = Field(min_length=1, max_length=100)
    payment_id: str = Field(min_length=1, max_length=100)
    signature: str = Field(min_length=1, max_length=200)


@router.post(
    "/v1/payments/stripe/webhook",
    access="public",
    response=WebhookAck,
    errors={400: "missing or bad Stripe-Signature"},
)
async def stripe_webhook(call: Call) -> WebhookAck:
    """POST /v1/payments/stripe/webhook

    Stripe's events, signed in `Stripe-Signature`."""
    raw = await call.request.read()
    done = await webhooks.stripe_event(
        call.services, raw, call.request.headers.get("Stripe-Signature")
    )
    log.info("stripe webhook", extra={"outcome": done})
    return WebhookAck()


@router.post(
    "/v1/payments/razorpay/webhook",
    access="public",
    response=WebhookAck,
    errors={400: "missing or bad X-Razorpay-Signature"},
)
async def razorpay_webhook(call: Call) -> WebhookAck:
    """POST /v1/payments/razorpay/webhook

    Razorpay's events, signed in `X-Razorpay-Signature`."""
    raw = await call.request.read()
    headers = call.request.headers
    done = await webhooks.razorpay_event(
        call.services,
        raw,
        headers.get("X-Razorpay-Signature"),
        headers.get("X-Razorpay-Event-Id"),
    )
    log.info("razorpay webhook", extra={"outcome": done})
    return WebhookAck()


@router.post(
    "/v1/payments/razorpay/verify",
    access="user",
    body=RazorpayVerifyIn,
    response=RechargeOut,
    errors={400: "the payment signature does not verify", 404: "not your recharge"},
    rate_limit=ratelimit.RECHARGE_VERIFY,
)
async def razorpay_verify(call: Call) -> RechargeOut:
    """POST /v1/payments/razorpay/verify

    The checkout callback `{order_id, payment_id, signature}`: verified, then settled at once."""
    body = call.body(RazorpayVerifyIn)
    recharge = await webhooks.razorpay_verify(
        call.services,
        user_id=call.principal.user_id,
        order_id=body.order_id,
        payment_id=body.payment_id,
        signature=body.signature,
    )
    return recharge_out(recharge, call.services.settings.razorpay_key_id)
