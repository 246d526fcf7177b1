"""Astrologer earnings and payouts.

A payout request moves the amount out of the astrologer's earnings into payouts_clearing at once
(reserved: it cannot be requested or spent twice), in one transaction that locks the earnings
account and checks its balance. One pending payout per astrologer (a partial unique index). An
admin approves it; the arq job `execute_payout` pays it through the payout provider with the key
`payout:{id}`; a failed payout moves the amount back to earnings.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing import payment_keys
from billing.gateways.payouts import PayoutResult, payout_provider
from billing.ledger import Leg, Transfer, account_id, post_transfer
from billing.sweeps import claim_sql, sweep_claimed
from core.errors import AppError, Conflict, NotFound, PaymentRequired, ValidationFailed
from core.services import Services
from db.pool import Conn, Executor

log = logging.getLogger(__name__)


class PayoutPending(AppError):
    status, code, message = 409, "payout_pending", "a payout request is already pending"


class InsufficientEarnings(PaymentRequired):
    code, message = "insufficient_earnings", "the earnings balance does not cover this payout"


@dataclass(frozen=True)
class Payout:
    id: uuid.UUID
    astrologer_id: uuid.UUID
    amount: int
    currency: str
    status: str
    provider: str | None
    provider_ref: str | None
    failure_reason: str | None
    approved_by: uuid.UUID | None
    approved_at: datetime | None
    paid_at: datetime | None
    created_at: datetime
    rejection_reason: str | None = None  # migration 0013

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Payout:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


_COLUMNS = ", ".join(Payout.__dataclass_fields__)

LOCK_EARNINGS = "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE"
HAS_PENDING = """
SELECT 1 FROM payouts WHERE astrologer_id = $1 AND status IN ('requested', 'approved')
"""
INSERT_PAYOUT = f"""
INSERT INTO payouts (id, astrologer_id, amount, currency, reserve_id)
VALUES ($1, $2, $3, $4, $5)
RETURNING {_COLUMNS}
"""
APPROVE = f"""
UPDATE payouts SET status = 'approved', approved_by = $2, approved_at = now(), updated_at = now()
 WHERE id = $1 AND status = 'requested'
RETURNING {_COLUMNS}
"""
GET_PAYOUT = f"SELECT {_COLUMNS} FROM payouts WHERE id = $1"
LOCK_PAYOUT = f"SELECT {_COLUMNS} FROM payouts WHERE id = $1 FOR UPDATE"
MARK_PAID = f"""
UPDATE payouts SET status = 'paid', provider = $2, provider_ref = $3, paid_at = now(),
       updated_at = now()
 WHERE id = $1 AND status = 'approved'
RETURNING {_COLUMNS}
"""
MARK_FAILED = f"""
UPDATE payouts SET status = 'failed', provider = $2, failure_reason = $3, reversal_id = $4,
       updated_at = now()
 WHERE id = $1
RETURNING {_COLUMNS}
"""
AUDIT = """
INSERT INTO audit_log (actor_id, action, target_type, target_id, reason, details)
VALUES ($1, $2, 'payout', $3, $4, $5)
"""


async def request_payout(
    conn: Conn, *, astrologer_id: uuid.UUID, amount: int, currency: str, min_payout: int
) -> Payout:
    """Reserve `amount` of an astrologer's earnings for a payout. 422 below `min_payout`, 402
    `insufficient_earnings` beyond the balance, 409 `payout_pending` while another is pending."""
    if amount < min_payout:
        raise ValidationFailed({"amount": f"the minimum payout is {min_payout}"})
    try:
        async with conn.transaction():
            earnings = await account_id(conn, "astrologer_earnings", astrologer_id, currency)
            balance = await conn.fetchval(LOCK_EARNINGS, earnings)
            # Friendly check; the partial unique index is the last word.
            if await conn.fetchval(HAS_PENDING, astrologer_id):
                raise PayoutPending()
            if balance < amount:
                raise InsufficientEarnings(details={"balance": balance})
            payout_id = uuid.uuid4()
            clearing = await account_id(conn, "payouts_clearing", None, currency)
            reserve = await post_transfer(
                conn,
                key=f"payout:{payout_id}:reserve",
                kind="payout",
                legs=[Leg(earnings, -amount), Leg(clearing, amount)],
                actor_id=astrologer_id,
                reason="payout requested",
                metadata={"payout_id": str(payout_id)},
            )
            row = await conn.fetchrow(
                INSERT_PAYOUT, payout_id, astrologer_id, amount, currency, reserve.id
            )
            assert row is not None
            return Payout.from_row(row)
    except asyncpg.UniqueViolationError as exc:
        raise PayoutPending() from exc


async def approve_payout(conn: Conn, *, payout_id: uuid.UUID, admin_id: uuid.UUID) -> Payout:
    """Approve a requested payout (409 `payout_not_pending` otherwise); the caller enqueues
    `execute_payout` after commit."""
    async with conn.transaction():
        row = await conn.fetchrow(APPROVE, payout_id, admin_id)
        if row is None:
            if await conn.fetchrow(GET_PAYOUT, payout_id) is None:
                raise NotFound("no such payout")
            raise Conflict("this payout is not waiting for approval", code="payout_not_pending")
        payout = Payout.from_row(row)
        await conn.execute(
            AUDIT, admin_id, "approve_payout", str(payout_id), None, {"amount": payout.amount}
        )
        return payout


async def _give_back_txn(
    conn: Conn, payout: Payout, reason: str, actor_id: uuid.UUID | None
) -> Transfer:
    """The reserved amount of an unpaid payout back to earnings, once (key
    `payout:{id}:reversal`), in the caller's transaction."""
    earnings = await account_id(conn, "astrologer_earnings", payout.astrologer_id, payout.currency)
    clearing = await account_id(conn, "payouts_clearing", None, payout.currency)
    return await post_transfer(
        conn,
        key=f"payout:{payout.id}:reversal",
        kind="payout_reversal",
        legs=[Leg(clearing, -payout.amount), Leg(earnings, payout.amount)],
        actor_id=actor_id,
        reason=reason,
        metadata={"payout_id": str(payout.id)},
    )


REJECT = f"""
UPDATE payouts SET status = 'rejected', rejected_by = $2, rejection_reason = $3,
       reversal_id = $4, updated_at = now()
 WHERE id = $1 AND status = 'requested'
RETURNING {_COLUMNS}
"""


async def reject_payout(
    conn: Conn, *, payout_id: uuid.UUID, admin_id: uuid.UUID, reason: str
) -> Payout:
    """Reject a requested payout: its reserved amount goes back to the astrologer's earnings
    (one reversal transfer, key `payout:{id}:reversal`) in the same transaction. Only a payout
    still `requested` can be rejected (409 `payout_not_pending`): an approved one may already be
    in the provider's hands, and paying it and giving it back would pay it twice."""
    async with conn.transaction():
        row = await conn.fetchrow(LOCK_PAYOUT, payout_id)
        if row is None:
            raise NotFound("no such payout")
        payout = Payout.from_row(row)
        if payout.status != "requested":
            raise Conflict("this payout is not waiting for approval", code="payout_not_pending")
        reversal = await _give_back_txn(conn, payout, f"payout rejected: {reason}", admin_id)
        rejected = await conn.fetchrow(REJECT, payout_id, admin_id, reason, reversal.id)
        assert rejected is not None  # the row is locked and was requested
        await conn.execute(
            AUDIT, admin_id, "reject_payout", str(payout_id), reason, {"amount": payout.amount}
        )
        return Payout.from_row(rejected)


async def enqueue_execution(services: Services, payout_id: uuid.UUID) -> None:
    await services.arq.enqueue_job(
        payment_keys.EXECUTE_PAYOUT, str(payout_id), _job_id=payment_keys.payout_job_id(payout_id)
    )


async def execute_payout(services: Services, payout_id: uuid.UUID) -> Payout | None:
    """Pay an approved payout through the provider (key `payout:{id}`, so a rerun never pays
    twice); a failure moves the amount back to earnings. Safe to run any number of times."""
    row = await services.db.fetchrow(GET_PAYOUT, payout_id)
    if row is None or row["status"] != "approved":
        return Payout.from_row(row) if row else None
    payout = Payout.from_row(row)
    provider = payout_provider(services.settings)
    result = await provider.pay(
        payout_id=payout.id,
        astrologer_id=payout.astrologer_id,
        amount=payout.amount,
        currency=payout.currency,
        idempotency_key=f"payout:{payout.id}",
    )
    async with services.db.acquire() as conn, conn.transaction():
        return await apply_payout_result_txn(conn, payout.id, provider.name, result)


async def apply_payout_result_txn(
    conn: Conn, payout_id: uuid.UUID, provider: str, result: PayoutResult
) -> Payout:
    row = await conn.fetchrow(LOCK_PAYOUT, payout_id)
    if row is None:
        raise NotFound("no such payout")
    payout = Payout.from_row(row)
    if payout.status != "approved" or result.status == "pending":
        return payout
    if result.status == "paid":
        paid = await conn.fetchrow(MARK_PAID, payout_id, provider, result.reference)
        assert paid is not None
        return Payout.from_row(paid)
    reversal = await _give_back_txn(
        conn, payout, f"payout failed: {result.failure_reason or 'failed'}", None
    )
    failed = await conn.fetchrow(
        MARK_FAILED, payout_id, provider, result.failure_reason or "failed", reversal.id
    )
    assert failed is not None
    log.warning("payout failed; amount back in earnings", extra={"payout_id": str(payout_id)})
    return Payout.from_row(failed)


@dataclass(frozen=True)
class Earnings:
    balance: int
    currency: str
    lifetime: int
    pending_payout: int


EARNINGS = """
SELECT a.balance,
       coalesce((SELECT sum(e.amount) FROM entries e JOIN transfers t ON t.id = e.transfer_id
                  WHERE e.account_id = a.id
                    AND t.kind NOT IN ('payout', 'payout_reversal')), 0)::bigint AS lifetime
  FROM accounts a
 WHERE a.kind = 'astrologer_earnings' AND a.owner_id = $1 AND a.currency = $2
"""
PENDING_SUM = """
SELECT coalesce(sum(amount), 0)::bigint FROM payouts
 WHERE astrologer_id = $1 AND currency = $2 AND status IN ('requested', 'approved')
"""


async def earnings_of(conn: Executor, astrologer_id: uuid.UUID, currency: str) -> Earnings:
    """Balance (what can still be paid out), lifetime (earned net of refunds, payouts aside) and
    what is pending payout."""
    row = await conn.fetchrow(EARNINGS, astrologer_id, currency)
    pending = await conn.fetchval(PENDING_SUM, astrologer_id, currency)
    if row is None:
        return Earnings(0, currency, 0, pending)
    return Earnings(row["balance"], currency, row["lifetime"], pending)


LIST_PAYOUTS = f"""
SELECT {_COLUMNS} FROM payouts
 WHERE ($1::text IS NULL OR status = $1)
   AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
 ORDER BY created_at DESC, id DESC
 LIMIT $4
"""


async def list_payouts(
    conn: Executor, *, status: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Payout]:
    """Payouts newest first (keyset on created_at, id), optionally of one status."""
    at, last = after if after else (None, None)
    rows = await conn.fetch(LIST_PAYOUTS, status, at, last, limit)
    return [Payout.from_row(r) for r in rows]


# --- The sweep of approved payouts (issue 13) -------------------------------------------------

# Payouts approved more than PAYOUT_STALE_SECONDS ago and not paid (their job was lost, or the
# provider said "pending"), claimed once per round across workers.
CLAIM_APPROVED = claim_sql(
    "payouts", "status = 'approved' AND approved_at < now() - make_interval(secs => $1)",
    "approved_at",
)  # fmt: skip


async def sweep_approved_payouts(services: Services) -> dict[str, int]:
    """Resubmit every payout stuck `approved` to the provider with its fixed key `payout:{id}`
    (a provider that already paid it answers with that payment; it is never paid twice).
    Returns how many ended in each status; a provider error leaves it for the next round."""

    async def drive(payout_id: uuid.UUID) -> str:
        payout = await execute_payout(services, payout_id)
        return payout.status if payout else "missing"

    settings = services.settings
    return await sweep_claimed(
        services.db,
        CLAIM_APPROVED,
        (settings.payout_stale_seconds, settings.payment_sweep_batch),
        drive,
        retry_on=(Exception,),  # any provider failure: the next round asks again
    )
