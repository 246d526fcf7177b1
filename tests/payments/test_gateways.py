"""Every gateway implementation satisfies the same contract (Stripe and Razorpay against the fake
HTTP server on loopback through their real SDKs, and the local test gateway)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from billing.gateways import GatewayError, PaymentGateway, gateway_for
from billing.gateways.base import SignatureInvalid
from billing.gateways.razorpay_gateway import verify_payment
from core.services import Services
from tests.payments import fake_gateways as fg
from tests.payments.fake_gateways import FakeGateways


def _pay(fake: FakeGateways, name: str, order_id: str) -> str | None:
    """Make the fake gateway take the payment; the payment id the gateway reports, if any."""
    if name == "stripe":
        fake.succeed_intent(order_id)
        return None
    if name == "razorpay":
        return fake.capture(order_id)
    return None


@pytest.mark.parametrize("name", ["stripe", "razorpay", "test"])
async def test_gateway_contract(name: str, services: Services, fake: FakeGateways) -> None:
    gateway: PaymentGateway = gateway_for(name, services.settings, services.http)
    rid = uuid.uuid4()
    order = await gateway.create_order(
        recharge_id=rid, total=11_800, currency="INR", idempotency_key=f"recharge:{rid}"
    )
    assert order.order_id
    payment_id = _pay(fake, name, order.order_id)
    state = await gateway.payment_state(order_id=order.order_id, payment_id=payment_id)
    assert state.status == "succeeded"
    assert state.payment_id
    assert state.amount in (11_800, None)
    first = await gateway.create_refund(
        payment_id=state.payment_id, amount=500, currency="INR", idempotency_key="card_refund:1"
    )
    again = await gateway.create_refund(
        payment_id=state.payment_id, amount=500, currency="INR", idempotency_key="card_refund:1"
    )
    assert first.refund_id == again.refund_id  # the same key never refunds twice
    looked = await gateway.refund_state(payment_id=state.payment_id, refund_id=first.refund_id)
    assert looked.refund_id == first.refund_id
    assert looked.status in ("pending", "succeeded")


async def test_razorpay_payment_of_another_order_is_refused(
    services: Services, fake: FakeGateways
) -> None:
    gateway = gateway_for("razorpay", services.settings, services.http)
    a = await gateway.create_order(
        recharge_id=uuid.uuid4(), total=100, currency="INR", idempotency_key="a"
    )
    b = await gateway.create_order(
        recharge_id=uuid.uuid4(), total=100, currency="INR", idempotency_key="b"
    )
    paid_b = fake.capture(b.order_id)
    with pytest.raises(GatewayError):
        await gateway.payment_state(order_id=a.order_id, payment_id=paid_b)


def test_razorpay_payment_signature_uses_the_key_secret() -> None:
    good = fg.razorpay_signature("order_1|pay_1", fg.RAZORPAY_KEY_SECRET)
    verify_payment("order_1", "pay_1", good, fg.RAZORPAY_KEY_SECRET)
    bad: list[tuple[Any, ...]] = [
        ("order_1", "pay_2", good),
        ("order_2", "pay_1", good),
        ("order_1", "pay_1", good.upper()),
    ]
    for order_id, payment_id, signature in bad:
        with pytest.raises(SignatureInvalid):
            verify_payment(order_id, payment_id, signature, fg.RAZORPAY_KEY_SECRET)
