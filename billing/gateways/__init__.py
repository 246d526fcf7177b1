"""Payment gateways and payout providers behind one interface each, chosen by settings.

`gateway_for(name, settings, http)` returns the Stripe, Razorpay or local test gateway; a gateway
whose keys are unset is off (`gateway_disabled`), and the test gateway is refused in production.
Webhook and payment signatures are verified with the SDKs' own code in each gateway's module.
"""

from __future__ import annotations

import aiohttp

from billing.gateways.base import (
    GatewayDisabled,
    GatewayError,
    GatewayOrder,
    GatewayUnavailable,
    PaymentGateway,
    PaymentState,
    RefundState,
    SignatureInvalid,
)
from billing.gateways.local import LocalGateway
from billing.gateways.razorpay_gateway import RazorpayGateway
from billing.gateways.stripe_gateway import StripeGateway
from core.settings import Settings

GATEWAYS = ("stripe", "razorpay", "test")


def gateway_for(name: str, settings: Settings, http: aiohttp.ClientSession) -> PaymentGateway:
    """The gateway called `name`, or `gateway_disabled` when it is not configured here."""
    if name == "stripe" and settings.stripe_api_key:
        return StripeGateway(settings.stripe_api_key, http, api_base=settings.stripe_api_base)
    if name == "razorpay" and settings.razorpay_key_id and settings.razorpay_key_secret:
        return RazorpayGateway(
            settings.razorpay_key_id,
            settings.razorpay_key_secret,
            api_base=settings.razorpay_api_base,
        )
    if name == "test" and settings.test_gateway and not settings.is_production:
        return LocalGateway()
    raise GatewayDisabled(f"the {name} gateway is not enabled here", details={"gateway": name})


__all__ = [
    "GATEWAYS",
    "GatewayDisabled",
    "GatewayError",
    "GatewayOrder",
    "GatewayUnavailable",
    "LocalGateway",
    "PaymentGateway",
    "PaymentState",
    "RazorpayGateway",
    "RefundState",
    "SignatureInvalid",
    "StripeGateway",
    "gateway_for",
]
