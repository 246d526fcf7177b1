"""Helpers for the payments tests: run jobs directly, inspect the queue, make charged sessions."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from billing.ledger import Leg, account_id, post_transfer
from billing.rules import split
from core.services import Services
from workers.context import JobContext


def job_ctx(services: Services, job_try: int = 1) -> JobContext:
    return {"services": services, "settings": services.settings, "job_try": job_try}


async def run(
    services: Services, fn: Callable[..., Awaitable[Any]], *args: Any, job_try: int = 1
) -> Any:
    """Run an arq job function directly, as the worker would."""
    return await fn(job_ctx(services, job_try), *args)


async def queued(services: Services, only: str | None = None) -> list[tuple[str, tuple[Any, ...]]]:
    """(function, args) of every job waiting in the arq queue, or of those of function `only`
    (a settled recharge also queues its inbox notification, issue 17)."""
    jobs = await services.arq.queued_jobs()
    return [(j.function, tuple(j.args)) for j in jobs if only in (None, j.function)]


async def balance(db: asyncpg.Pool[Any], kind: str, owner: uuid.UUID | None) -> int:
    value = await db.fetchval(
        "SELECT balance FROM accounts WHERE kind = $1 AND owner_id IS NOT DISTINCT FROM $2",
        kind,
        owner,
    )
    return int(value or 0)


async def system_total(db: asyncpg.Pool[Any], kind: str) -> int:
    """A system account's balance from its entries (they are rolled up only in batches)."""
    value = await db.fetchval(
        "SELECT coalesce(sum(e.amount), 0) FROM entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE a.kind = $1",
        kind,
    )
    return int(value)


async def charged_consultation(
    db: asyncpg.Pool[Any],
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    minutes: int,
    rate: int,
    share_percent: int = 60,
    end_reason: str = "user_ended",
) -> uuid.UUID:
    """A completed consultation whose minutes were charged through the ledger, the meter's way
    (wallet -> astrologer earnings + platform revenue, key charge:{id}:{minute})."""
    consultation_id: uuid.UUID = await db.fetchval(
        "INSERT INTO consultations (user_id, astrologer_id, type, status, end_reason, rate,"
        " share_percent, billed_minutes, total_charged, started_at, ended_at)"
        " VALUES ($1, $2, 'chat', 'completed', $3, $4, $5, $6, $7, now(), now()) RETURNING id",
        user_id,
        astrologer_id,
        end_reason,
        rate,
        share_percent,
        minutes,
        minutes * rate,
    )
    async with db.acquire() as conn:
        wallet = await account_id(conn, "user_wallet", user_id)
        earnings = await account_id(conn, "astrologer_earnings", astrologer_id)
        revenue = await account_id(conn, "platform_revenue", None)
        for minute in range(1, minutes + 1):
            astro, platform = split(rate, share_percent)
            legs = [Leg(wallet, -rate), Leg(earnings, astro)]
            if platform:
                legs.append(Leg(revenue, platform))
            await post_transfer(
                conn,
                key=f"charge:{consultation_id}:{minute}",
                kind="consultation_charge",
                legs=legs,
                consultation_id=consultation_id,
            )
    return consultation_id


async def new_recharge(client: Any, headers: dict[str, str], gateway: str) -> dict[str, Any]:
    """POST /v1/wallet/recharges of 10,000 through `gateway`; the 201 body."""
    resp = await client.post(
        "/v1/wallet/recharges", json={"amount": 10_000, "gateway": gateway}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def razorpay_captured_hook(client: Any, payment: dict[str, Any], event_id: str) -> None:
    """Deliver Razorpay's signed `payment.captured` webhook for `payment`; it must answer 200."""
    from tests.payments import fake_gateways as fg

    body = fg.razorpay_payment_event("payment.captured", payment)
    resp = await client.post(
        "/v1/payments/razorpay/webhook",
        data=body,
        headers={
            "X-Razorpay-Signature": fg.razorpay_signature(body),
            "X-Razorpay-Event-Id": event_id,
        },
    )
    assert resp.status == 200, await resp.text()
