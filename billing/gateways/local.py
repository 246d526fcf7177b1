"""The local test gateway: development and tests only. Every payment succeeds; the recharge is
completed by the arq job `complete_test_recharge` through the same settle path as real ones."""

from __future__ import annotations

import hashlib
import uuid

from billing.gateways.base import GatewayOrder, PaymentState, RefundState

ORDER_PREFIX = "test_order_"


class LocalGateway:
    name = "test"

    async def create_order(
        self, *, recharge_id: uuid.UUID, total: int, currency: str, idempotency_key: str
    ) -> GatewayOrder:
        return GatewayOrder(order_id=ORDER_PREFIX + recharge_id.hex, client_secret=None)

    async def payment_state(self, *, order_id: str, payment_id: str | None) -> PaymentState:
        pay_id = payment_id or "test_pay_" + order_id.removeprefix(ORDER_PREFIX)
        return PaymentState("succeeded", pay_id, amount=None, currency=None)

    async def create_refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str
    ) -> RefundState:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        return RefundState("test_refund_" + digest, "succeeded")

    async def refund_state(self, *, payment_id: str, refund_id: str) -> RefundState:
        return RefundState(refund_id, "succeeded")
