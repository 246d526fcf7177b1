"""Payout providers: how an approved payout reaches the astrologer's bank. The local provider
(default) pays at once and is what development and tests use; a real one (RazorpayX, Cashfree)
implements the same Protocol."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from core.errors import AppError
from core.settings import Settings

PayoutOutcome = Literal["pending", "paid", "failed"]


@dataclass(frozen=True)
class PayoutResult:
    status: PayoutOutcome
    reference: str | None
    failure_reason: str | None = None


class PayoutProvider(Protocol):
    name: str

    async def pay(
        self,
        *,
        payout_id: uuid.UUID,
        astrologer_id: uuid.UUID,
        amount: int,
        currency: str,
        idempotency_key: str,
    ) -> PayoutResult:
        """Send `amount` to the astrologer; the same key never pays twice."""
        ...


class LocalPayoutProvider:
    """Pays every payout at once, with a reference derived from the key (so a retry matches)."""

    name = "local"

    async def pay(
        self,
        *,
        payout_id: uuid.UUID,
        astrologer_id: uuid.UUID,
        amount: int,
        currency: str,
        idempotency_key: str,
    ) -> PayoutResult:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
        return PayoutResult("paid", "local_" + digest)


def payout_provider(settings: Settings) -> PayoutProvider:
    if settings.payout_provider == "local":
        return LocalPayoutProvider()
    raise AppError(
        f"payout provider {settings.payout_provider!r} is not available",
        code="payout_provider_unavailable",
        status=503,
    )
