"""The payment gateway contract every implementation (Stripe, Razorpay, local) satisfies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from core.errors import AppError

Outcome = Literal["pending", "succeeded", "failed"]


class GatewayDisabled(AppError):
    status, code, message = 422, "gateway_disabled", "this payment gateway is not enabled"


class GatewayUnavailable(AppError):
    """The gateway did not answer (network, 5xx): try again later, nothing was decided."""

    status, code, message = 502, "gateway_unavailable", "the payment gateway did not answer"


class GatewayError(AppError):
    """The gateway answered with a refusal (4xx): retrying the same call will not help."""

    status, code, message = 502, "gateway_error", "the payment gateway refused the request"


class SignatureInvalid(AppError):
    status, code, message = 400, "invalid_signature", "the signature does not verify"


@dataclass(frozen=True)
class GatewayOrder:
    """What the app needs to pay: a PaymentIntent's client secret, or a Razorpay order id."""

    order_id: str
    client_secret: str | None = None


@dataclass(frozen=True)
class CapturedPayment:
    """Another payment the gateway captured on the same order (a second checkout, a retry)."""

    payment_id: str
    amount: int
    currency: str


@dataclass(frozen=True)
class PaymentState:
    """What the gateway says about a recharge's payment. `succeeded` only for money actually
    captured (Razorpay `captured`, Stripe `succeeded` with `amount_received`); `amount` and
    `currency` are what was captured (None: the gateway did not say -- the local test gateway).
    `extra`: every other payment captured on the same order, which must not be credited again."""

    status: Outcome
    payment_id: str | None
    amount: int | None
    currency: str | None
    failure_reason: str | None = None
    extra: tuple[CapturedPayment, ...] = ()


@dataclass(frozen=True)
class RefundState:
    refund_id: str
    status: Outcome
    failure_reason: str | None = None


class PaymentGateway(Protocol):
    name: str

    async def create_order(
        self, *, recharge_id: uuid.UUID, total: int, currency: str, idempotency_key: str
    ) -> GatewayOrder:
        """Create the gateway's payment object for `total` (amount + tax) minor units."""
        ...

    async def payment_state(self, *, order_id: str, payment_id: str | None) -> PaymentState:
        """Ask the gateway, the source of truth, how the payment of this order stands."""
        ...

    async def create_refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str
    ) -> RefundState:
        """Refund `amount` of a payment to the card; the same key never refunds twice."""
        ...

    async def refund_state(self, *, payment_id: str, refund_id: str) -> RefundState: ...
