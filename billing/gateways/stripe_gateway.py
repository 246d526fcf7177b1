"""Stripe: PaymentIntents and refunds through `stripe.StripeClient` on our aiohttp session (the
SDK's async HTTP client), with our own idempotency keys; webhooks verified with the SDK's
`WebhookSignature` over the raw body, 300 s tolerance."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import stripe

from billing.gateways.base import (
    GatewayError,
    GatewayOrder,
    GatewayUnavailable,
    Outcome,
    PaymentState,
    RefundState,
    SignatureInvalid,
)

WEBHOOK_TOLERANCE_SECONDS = 300  # Stripe's own default: replays older than 5 minutes are refused
HTTP_TIMEOUT_SECONDS = 15  # a gateway call slower than this is "unavailable"; the job retries
NETWORK_RETRIES = 2  # the SDK retries connection errors with the same idempotency key


def _outcome_of_intent(intent: stripe.PaymentIntent) -> tuple[Outcome, str | None]:
    if intent.status == "succeeded":
        return "succeeded", None
    if intent.status == "canceled":
        return "failed", intent.cancellation_reason or "canceled"
    error = intent.last_payment_error
    if intent.status == "requires_payment_method" and error is not None:
        return "failed", error.message or error.code or "payment_failed"
    return "pending", None


def _outcome_of_refund(refund: stripe.Refund) -> tuple[Outcome, str | None]:
    if refund.status == "succeeded":
        return "succeeded", None
    if refund.status in ("failed", "canceled"):
        return "failed", refund.failure_reason or refund.status
    return "pending", None


def _translate(exc: stripe.StripeError) -> Exception:
    status = exc.http_status or 0
    if isinstance(exc, stripe.APIConnectionError) or status >= 500 or status == 429:
        return GatewayUnavailable(details={"gateway": "stripe"})
    return GatewayError(str(exc.user_message or exc), details={"gateway": "stripe"})


class StripeGateway:
    name = "stripe"

    def __init__(self, api_key: str, http: aiohttp.ClientSession, *, api_base: str | None) -> None:
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=stripe.AIOHTTPClient(
                session=http, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)
            ),
            max_network_retries=NETWORK_RETRIES,
        )

    async def create_order(
        self, *, recharge_id: uuid.UUID, total: int, currency: str, idempotency_key: str
    ) -> GatewayOrder:
        try:
            intent = await self.client.v1.payment_intents.create_async(
                params={
                    "amount": total,
                    "currency": currency.lower(),
                    "metadata": {"recharge_id": str(recharge_id)},
                    "automatic_payment_methods": {"enabled": True},
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return GatewayOrder(order_id=intent.id, client_secret=intent.client_secret)

    async def payment_state(self, *, order_id: str, payment_id: str | None) -> PaymentState:
        try:
            intent = await self.client.v1.payment_intents.retrieve_async(order_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        outcome, reason = _outcome_of_intent(intent)
        amount = intent.amount_received if outcome == "succeeded" else intent.amount
        # The PaymentIntent is the payment: one per recharge, its id the dedupe key.
        return PaymentState(outcome, intent.id, amount, intent.currency.upper(), reason)

    async def create_refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str
    ) -> RefundState:
        try:
            refund = await self.client.v1.refunds.create_async(
                params={
                    "payment_intent": payment_id,
                    "amount": amount,
                    "metadata": {"key": idempotency_key},
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        outcome, reason = _outcome_of_refund(refund)
        return RefundState(refund.id, outcome, reason)

    async def refund_state(self, *, payment_id: str, refund_id: str) -> RefundState:
        try:
            refund = await self.client.v1.refunds.retrieve_async(refund_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        outcome, reason = _outcome_of_refund(refund)
        return RefundState(refund.id, outcome, reason)


def verify_webhook(raw: bytes, header: str | None, secret: str | None) -> dict[str, Any]:
    """The event of a Stripe webhook, after its signature over the RAW body verified."""
    if not header or not secret:
        raise SignatureInvalid("missing Stripe-Signature header or webhook secret")
    try:
        payload = raw.decode("utf-8")
        stripe.WebhookSignature.verify_header(
            payload, header, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise SignatureInvalid() from exc
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise SignatureInvalid("the signed body is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise SignatureInvalid("the signed body is not a Stripe event")
    return event
