"""A small aiohttp server on 127.0.0.1 that imitates the Stripe and Razorpay endpoints our
gateways call (PaymentIntents, refunds, orders, payments), honouring Stripe's Idempotency-Key.
Tests drive payment outcomes through its state and sign webhooks with the SDKs' own code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import stripe
from aiohttp import web

STRIPE_KEY = "sk_test_fake"
STRIPE_WEBHOOK_SECRET = "whsec_test_secret"
RAZORPAY_KEY_ID = "rzp_test_key"
RAZORPAY_KEY_SECRET = "rzp_test_secret"
RAZORPAY_WEBHOOK_SECRET = "rzp_webhook_secret"


@dataclass
class FakeGateways:
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    stripe_refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    stripe_idempotency: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    rzp_refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    refund_status: str = "pending"  # what a new refund starts as
    calls: list[str] = field(default_factory=list)
    down: bool = False  # answer 503 to everything

    # Test controls.
    def succeed_intent(self, intent_id: str) -> None:
        intent = self.intents[intent_id]
        intent.update(status="succeeded", amount_received=intent["amount"])

    def succeed_intent_with(self, intent_id: str, *, received: int, currency: str) -> None:
        """A succeeded PaymentIntent that received another amount or currency than ordered."""
        self.intents[intent_id].update(
            status="succeeded", amount_received=received, currency=currency
        )

    def fail_intent(self, intent_id: str) -> None:
        self.intents[intent_id].update(
            status="requires_payment_method",
            last_payment_error={"message": "card declined", "code": "card_declined"},
        )

    def capture(
        self,
        order_id: str,
        status: str = "captured",
        *,
        amount: int | None = None,
        currency: str | None = None,
        captured: bool | None = None,
    ) -> str:
        """A payment on the order. `status="refunded", captured=False` is Razorpay's
        authorised-then-auto-refunded payment (the money never arrived)."""
        order = self.orders[order_id]
        payment_id = "pay_" + secrets.token_hex(7)
        self.payments[payment_id] = {
            "id": payment_id,
            "entity": "payment",
            "order_id": order_id,
            "amount": order["amount"] if amount is None else amount,
            "currency": order["currency"] if currency is None else currency,
            "status": status,
            "captured": status == "captured" if captured is None else captured,
            "created_at": int(time.time()) + len(self.payments),
        }
        return payment_id

    # Stripe.
    async def _stripe_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {STRIPE_KEY}":
            raise web.HTTPUnauthorized(text='{"error": {"message": "bad key"}}')

    async def create_intent(self, request: web.Request) -> web.Response:
        await self._stripe_auth(request)
        key = request.headers.get("Idempotency-Key", "")
        if key in self.stripe_idempotency:
            return web.json_response(self.stripe_idempotency[key])
        form = await request.post()
        intent_id = "pi_" + secrets.token_hex(8)
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(str(form["amount"])),
            "amount_received": 0,
            "currency": str(form["currency"]),
            "status": "requires_payment_method",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(6)}",
            "metadata": {"recharge_id": str(form.get("metadata[recharge_id]", ""))},
            "last_payment_error": None,
            "cancellation_reason": None,
            "idempotency_key": key,
        }
        self.intents[intent_id] = intent
        self.stripe_idempotency[key] = intent
        self.calls.append(f"stripe.create_intent:{key}")
        return web.json_response(intent)

    async def get_intent(self, request: web.Request) -> web.Response:
        await self._stripe_auth(request)
        self.calls.append("stripe.get_intent")
        intent = self.intents.get(request.match_info["id"])
        if intent is None:
            return web.json_response({"error": {"message": "no such intent"}}, status=404)
        return web.json_response(intent)

    async def create_stripe_refund(self, request: web.Request) -> web.Response:
        await self._stripe_auth(request)
        key = request.headers.get("Idempotency-Key", "")
        if key in self.stripe_idempotency:
            return web.json_response(self.stripe_idempotency[key])
        form = await request.post()
        refund_id = "re_" + secrets.token_hex(8)
        refund = {
            "id": refund_id,
            "object": "refund",
            "amount": int(str(form["amount"])),
            "payment_intent": str(form["payment_intent"]),
            "status": self.refund_status,
            "failure_reason": None,
            "currency": "inr",
        }
        self.stripe_refunds[refund_id] = refund
        self.stripe_idempotency[key] = refund
        self.calls.append(f"stripe.create_refund:{key}")
        return web.json_response(refund)

    async def get_stripe_refund(self, request: web.Request) -> web.Response:
        await self._stripe_auth(request)
        return web.json_response(self.stripe_refunds[request.match_info["id"]])

    # Razorpay.
    def _rzp_auth(self, request: web.Request) -> None:
        expected = base64.b64encode(f"{RAZORPAY_KEY_ID}:{RAZORPAY_KEY_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            raise web.HTTPUnauthorized(text='{"error": {"code": "BAD_REQUEST_ERROR"}}')

    async def create_order(self, request: web.Request) -> web.Response:
        self._rzp_auth(request)
        data = await request.json()
        order = {
            "id": "order_" + secrets.token_hex(7),
            "entity": "order",
            "amount": data["amount"],
            "currency": data["currency"],
            "receipt": data.get("receipt"),
            "status": "created",
        }
        self.orders[order["id"]] = order
        self.calls.append("razorpay.create_order")
        return web.json_response(order)

    async def get_payment(self, request: web.Request) -> web.Response:
        self._rzp_auth(request)
        self.calls.append("razorpay.get_payment")
        payment = self.payments.get(request.match_info["id"])
        if payment is None:
            return web.json_response(
                {"error": {"code": "BAD_REQUEST_ERROR", "description": "no such payment"}},
                status=400,
            )
        return web.json_response(payment)

    async def order_payments(self, request: web.Request) -> web.Response:
        self._rzp_auth(request)
        order_id = request.match_info["id"]
        items = [p for p in self.payments.values() if p["order_id"] == order_id]
        return web.json_response({"entity": "collection", "count": len(items), "items": items})

    async def payment_refunds(self, request: web.Request) -> web.Response:
        self._rzp_auth(request)
        pid = request.match_info["id"]
        items = [r for r in self.rzp_refunds.values() if r["payment_id"] == pid]
        return web.json_response({"entity": "collection", "count": len(items), "items": items})

    async def create_rzp_refund(self, request: web.Request) -> web.Response:
        self._rzp_auth(request)
        data = await request.json()
        refund = {
            "id": "rfnd_" + secrets.token_hex(7),
            "entity": "refund",
            "payment_id": request.match_info["id"],
            "amount": data["amount"],
            "receipt": data.get("receipt"),
            "status": "processed" if self.refund_status == "succeeded" else self.refund_status,
        }
        self.rzp_refunds[refund["id"]] = refund
        self.calls.append("razorpay.create_refund")
        return web.json_response(refund)

    async def get_rzp_refund(self, request: web.Request) -> web.Response:
        self._rzp_auth(request)
        return web.json_response(self.rzp_refunds[request.match_info["id"]])

    @web.middleware
    async def _outage(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.down:
            return web.json_response(
                {"error": {"code": "SERVER_ERROR", "message": "down"}}, status=503
            )
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._outage])
        app.router.add_post("/v1/payment_intents", self.create_intent)
        app.router.add_get("/v1/payment_intents/{id}", self.get_intent)
        app.router.add_post("/v1/refunds", self.create_stripe_refund)
        app.router.add_get("/v1/refunds/{id:re_.*}", self.get_stripe_refund)
        app.router.add_post("/v1/orders", self.create_order)
        app.router.add_get("/v1/orders/{id}/payments", self.order_payments)
        app.router.add_get("/v1/payments/{id}", self.get_payment)
        app.router.add_get("/v1/payments/{id}/refunds", self.payment_refunds)
        app.router.add_post("/v1/payments/{id}/refund", self.create_rzp_refund)
        app.router.add_get("/v1/refunds/{id:rfnd_.*}", self.get_rzp_refund)
        return app


async def serve(fake: FakeGateways) -> AsyncIterator[str]:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# Signing, with the gateways' own algorithms.
def stripe_signature(
    payload: str, secret: str = STRIPE_WEBHOOK_SECRET, at: int | None = None
) -> str:
    timestamp = int(time.time()) if at is None else at
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)
    return f"t={timestamp},v1={signature}"


def stripe_event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> str:
    return json.dumps(
        {
            "id": event_id or "evt_" + secrets.token_hex(8),
            "object": "event",
            "type": kind,
            "data": {"object": obj},
        }
    )


def razorpay_signature(body: str, secret: str = RAZORPAY_WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def razorpay_payment_event(kind: str, payment: dict[str, Any]) -> str:
    return json.dumps(
        {
            "entity": "event",
            "event": kind,
            "payload": {"payment": {"entity": payment}},
            "created_at": int(time.time()),
        }
    )


__all__ = ["FakeGateways", "serve"]
