"""Razorpay: orders, payments and refunds through the razorpay SDK (sync, requests), run in a
thread; payment and webhook signatures verified with the SDK's `Utility`.

Payment signature: HMAC-SHA256(`order_id|payment_id`, key secret). Webhook signature:
HMAC-SHA256(raw body, webhook secret). Razorpay has no idempotency key for refunds, so ours
travels as the refund's `receipt` and an existing refund with that receipt is adopted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import razorpay
import requests
from razorpay.errors import BadRequestError, ServerError, SignatureVerificationError
from razorpay.errors import GatewayError as RzpGatewayError

from billing.gateways.base import (
    CapturedPayment,
    GatewayError,
    GatewayOrder,
    GatewayUnavailable,
    Outcome,
    PaymentState,
    RefundState,
    SignatureInvalid,
)

T = TypeVar("T")
HTTP_TIMEOUT_SECONDS = 15  # a call slower than this is "unavailable"; the job retries


def _captured(payment: dict[str, Any]) -> bool:
    """Was this payment's money captured? `captured`, or `refunded` after a capture (our own card
    refunds). A payment only authorised and then auto-refunded by Razorpay is `refunded` with
    `captured: false`: the money never arrived, it must never be credited."""
    status = payment.get("status")
    if status == "captured":
        return payment.get("captured", True) is not False
    return status == "refunded" and payment.get("captured") is True


def _outcome(payment: dict[str, Any]) -> tuple[Outcome, str | None]:
    if _captured(payment):
        return "succeeded", None
    status = payment.get("status")
    if status == "failed":
        return "failed", str(payment.get("error_description") or "failed")
    if status == "refunded":  # authorised, never captured, given back by Razorpay
        return "failed", "refunded before capture"
    return "pending", None


_REFUND_OUTCOMES: dict[str, Outcome] = {"processed": "succeeded", "failed": "failed"}


class RazorpayGateway:
    name = "razorpay"

    def __init__(self, key_id: str, key_secret: str, *, api_base: str | None) -> None:
        self.key_id = key_id
        self.key_secret = key_secret
        self.api_base = api_base

    def _client(self) -> Any:
        options = {"base_url": self.api_base} if self.api_base else {}
        return razorpay.Client(auth=(self.key_id, self.key_secret), **options)

    async def _call(self, fn: Callable[[Any], T]) -> T:
        def run() -> T:
            return fn(self._client())

        try:
            return await asyncio.to_thread(run)
        except (ServerError, RzpGatewayError, requests.RequestException) as exc:
            raise GatewayUnavailable(details={"gateway": "razorpay"}) from exc
        except BadRequestError as exc:
            raise GatewayError(str(exc), details={"gateway": "razorpay"}) from exc

    async def create_order(
        self, *, recharge_id: uuid.UUID, total: int, currency: str, idempotency_key: str
    ) -> GatewayOrder:
        data = {
            "amount": total,
            "currency": currency,
            "receipt": str(recharge_id),
            "notes": {"recharge_id": str(recharge_id), "key": idempotency_key},
        }
        order = await self._call(lambda c: c.order.create(data, timeout=HTTP_TIMEOUT_SECONDS))
        return GatewayOrder(order_id=str(order["id"]))

    async def payment_state(self, *, order_id: str, payment_id: str | None) -> PaymentState:
        """The order's payments as Razorpay has them: the captured one (the given payment when
        it was captured), every other captured one as `extra`; else how the given one stands."""
        found = await self._call(lambda c: c.order.payments(order_id, timeout=HTTP_TIMEOUT_SECONDS))
        items: list[dict[str, Any]] = list(found.get("items", []))
        if payment_id is not None and all(p.get("id") != payment_id for p in items):
            payment = await self._call(
                lambda c: c.payment.fetch(payment_id, timeout=HTTP_TIMEOUT_SECONDS)
            )
            if payment.get("order_id") != order_id:
                raise GatewayError("the payment belongs to another order")
            items.append(payment)
        items.sort(key=lambda p: (int(p.get("created_at") or 0), str(p.get("id"))))
        captured = [p for p in items if _captured(p)]
        captured.sort(key=lambda p: p.get("id") != payment_id)  # the given one first, if captured
        if not captured:
            given = next((p for p in items if p.get("id") == payment_id), None)
            if given is None:
                return PaymentState("pending", None, None, None)
            outcome, reason = _outcome(given)
            return PaymentState(outcome, str(given["id"]), None, None, reason)
        first, *others = captured
        return PaymentState(
            "succeeded",
            str(first["id"]),
            int(first["amount"]),
            _currency(first),
            None,
            tuple(CapturedPayment(str(p["id"]), int(p["amount"]), _currency(p)) for p in others),
        )

    async def create_refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str
    ) -> RefundState:
        existing = await self._call(
            lambda c: c.payment.fetch_multiple_refund(payment_id, timeout=HTTP_TIMEOUT_SECONDS)
        )
        for refund in existing.get("items", []):
            if refund.get("receipt") == idempotency_key:
                return _refund_state(refund)
        data = {"amount": amount, "receipt": idempotency_key, "notes": {"key": idempotency_key}}
        created = await self._call(
            lambda c: c.payment.refund(payment_id, data, timeout=HTTP_TIMEOUT_SECONDS)
        )
        return _refund_state(created)

    async def refund_state(self, *, payment_id: str, refund_id: str) -> RefundState:
        refund = await self._call(lambda c: c.refund.fetch(refund_id, timeout=HTTP_TIMEOUT_SECONDS))
        return _refund_state(refund)


def _currency(payment: dict[str, Any]) -> str:
    return str(payment.get("currency") or "").upper()


def _refund_state(refund: dict[str, Any]) -> RefundState:
    outcome = _REFUND_OUTCOMES.get(str(refund.get("status")), "pending")
    return RefundState(str(refund["id"]), outcome, "failed" if outcome == "failed" else None)


def verify_payment(order_id: str, payment_id: str, signature: str, key_secret: str) -> None:
    """Check the checkout callback's signature; `SignatureInvalid` when it is not Razorpay's."""
    utility = razorpay.Utility(razorpay.Client(auth=("", key_secret)))
    try:
        utility.verify_payment_signature(
            {
                "razorpay_order_id": order_id,
                "razorpay_payment_id": payment_id,
                "razorpay_signature": signature,
            }
        )
    except SignatureVerificationError as exc:
        raise SignatureInvalid() from exc


def verify_webhook(raw: bytes, header: str | None, secret: str | None) -> dict[str, Any]:
    """The event of a Razorpay webhook, after its signature over the RAW body verified."""
    if not header or not secret:
        raise SignatureInvalid("missing X-Razorpay-Signature header or webhook secret")
    try:
        body = raw.decode("utf-8")
        razorpay.Utility(None).verify_webhook_signature(body, header, secret)
        event = json.loads(body)
    except (SignatureVerificationError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureInvalid() from exc
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise SignatureInvalid("the signed body is not a Razorpay event")
    return event
