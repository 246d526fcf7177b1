"""The OpenAPI document: generated from the routes, valid OpenAPI 3.1, complete, and committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from astrolive.cli import openapi_document

DOC = Path(__file__).parents[2] / "docs" / "openapi.json"

# Every route of ../shared/API.md (method, path).
CONTRACT = [
    ("post", "/v1/auth/otp"), ("post", "/v1/auth/verify"), ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/logout"), ("get", "/v1/me"), ("patch", "/v1/me"),
    ("post", "/v1/me/avatar"), ("post", "/v1/devices"), ("get", "/v1/notifications"),
    ("put", "/v1/astrologer/profile"), ("post", "/v1/astrologer/documents"),
    ("put", "/v1/astrologer/availability"), ("post", "/v1/astrologer/status"),
    ("get", "/v1/astrologer/earnings"), ("post", "/v1/astrologer/payouts"),
    ("get", "/v1/astrologers"), ("get", "/v1/astrologers/{id}"),
    ("get", "/v1/astrologers/{id}/reviews"), ("get", "/v1/astrologers/{id}/slots"),
    ("post", "/v1/astrologers/{id}/waitlist"), ("delete", "/v1/astrologers/{id}/waitlist"),
    ("post", "/v1/consultations"), ("get", "/v1/consultations"),
    ("get", "/v1/consultations/{id}"), ("post", "/v1/consultations/{id}/accept"),
    ("post", "/v1/consultations/{id}/reject"), ("post", "/v1/consultations/{id}/cancel"),
    ("post", "/v1/consultations/{id}/end"), ("get", "/v1/consultations/{id}/messages"),
    ("post", "/v1/consultations/{id}/review"), ("post", "/v1/consultations/{id}/complaint"),
    ("get", "/v1/wallet"), ("get", "/v1/wallet/transactions"), ("get", "/v1/recharge-packs"),
    ("post", "/v1/wallet/recharges"), ("get", "/v1/wallet/recharges/{id}"),
    ("post", "/v1/payments/stripe/webhook"), ("post", "/v1/payments/razorpay/webhook"),
    ("post", "/v1/payments/razorpay/verify"), ("get", "/v1/admin/astrologers"),
    ("post", "/v1/admin/astrologers/{id}/verification"), ("post", "/v1/admin/refunds"),
    ("post", "/v1/admin/promos"), ("get", "/v1/admin/payouts"),
    ("post", "/v1/admin/payouts/{id}/approve"), ("get", "/v1/rtc/ice-servers"),
    ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/v1/openapi.json"),
]  # fmt: skip


def test_document_is_valid_and_covers_the_contract() -> None:
    doc = json.loads(openapi_document())
    validate(doc)  # raises on anything that is not OpenAPI 3.1
    missing = [(m, p) for m, p in CONTRACT if m not in doc["paths"].get(p, {})]
    assert missing == []
    # Money and booking POSTs document the Idempotency-Key header.
    params = doc["paths"]["/v1/wallet/recharges"]["post"]["parameters"]
    assert any(p["name"] == "Idempotency-Key" for p in params)
    assert doc["paths"]["/v1/wallet"]["get"]["security"] == [{"bearer": []}]


def test_committed_document_is_up_to_date() -> None:
    """docs/openapi.json is the output of `astrolive openapi`; regenerate it when this fails."""
    assert DOC.read_text() == openapi_document()


async def test_served_document_matches(client: TestClient[Any, Any]) -> None:
    served = await (await client.get("/v1/openapi.json")).json()
    assert served == json.loads(openapi_document())
