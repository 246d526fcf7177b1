"""Wallet recharges: packs, creating the gateway's payment object, and settling a payment into
the wallet exactly once.

The flow: `create_recharge` stores a pending recharge and asks the gateway for its object (a
Stripe PaymentIntent, a Razorpay order, a test order). A verified webhook or Razorpay's client
verify call (api/payments.py) leads to `settle`, which asks the gateway how the payment stands and
then, in one transaction holding the recharge row, credits the wallet through the ledger with the
key `recharge:{gateway}:{payment_id}`. Whatever comes second finds the recharge settled and does
nothing; the unique payment id and the ledger key are the last word.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from billing import payment_keys, rules
from billing.gateways import (
    GatewayError,
    GatewayUnavailable,
    PaymentGateway,
    PaymentState,
    RefundState,
)
from billing.gateways.base import CapturedPayment
from billing.ledger import Leg, account_id, post_transfer
from billing.reconcile import Finding, reconcile_check
from billing.sweeps import claim_sql
from core.errors import AppError, NotFound, ValidationFailed
from core.services import Services
from db.pool import Conn, Executor

log = logging.getLogger(__name__)

_PACK_NAMESPACE = uuid.UUID("5b0e4f3e-8a51-4a35-9a3b-52a1c0a7e1d0")


@dataclass(frozen=True)
class Pack:
    id: uuid.UUID
    amount: int
    bonus: int


def _pack(amount: int, bonus: int) -> Pack:
    return Pack(uuid.uuid5(_PACK_NAMESPACE, f"pack:{amount}:{bonus}"), amount, bonus)


# The recharge packs (INR paise), the AstroTalk way: bigger packs carry a bonus credited with the
# amount from the promotions account. Ids are stable (derived from the content).
RECHARGE_PACKS: tuple[Pack, ...] = (
    _pack(10_000, 0),  # ₹100
    _pack(20_000, 1_000),  # ₹200 + ₹10
    _pack(50_000, 5_000),  # ₹500 + ₹50
    _pack(100_000, 15_000),  # ₹1,000 + ₹150
    _pack(200_000, 40_000),  # ₹2,000 + ₹400
)


def find_pack(pack_id: uuid.UUID) -> Pack | None:
    return next((p for p in RECHARGE_PACKS if p.id == pack_id), None)


@dataclass(frozen=True)
class Recharge:
    id: uuid.UUID
    user_id: uuid.UUID
    gateway: str
    status: str
    amount: int
    bonus: int
    tax: int
    total: int
    currency: str
    pack_id: uuid.UUID | None
    gateway_order_id: str | None
    client_secret: str | None
    gateway_payment_id: str | None
    transfer_id: uuid.UUID | None
    failure_reason: str | None
    refunded: int
    created_at: datetime
    settled_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Recharge:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


_COLUMNS = ", ".join(Recharge.__dataclass_fields__)

INSERT_RECHARGE = f"""
INSERT INTO recharges (user_id, gateway, amount, bonus, tax, total, currency, pack_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING {_COLUMNS}
"""
SET_ORDER = f"""
UPDATE recharges SET gateway_order_id = $2, client_secret = $3, updated_at = now()
 WHERE id = $1
RETURNING {_COLUMNS}
"""
FAIL_CREATION = """
UPDATE recharges SET status = 'failed', failure_reason = $2, updated_at = now()
 WHERE id = $1 AND status = 'pending'
"""
GET_RECHARGE = f"SELECT {_COLUMNS} FROM recharges WHERE id = $1"
GET_USER_RECHARGE = f"SELECT {_COLUMNS} FROM recharges WHERE id = $1 AND user_id = $2"
GET_BY_ORDER = f"SELECT {_COLUMNS} FROM recharges WHERE gateway = $1 AND gateway_order_id = $2"
LOCK_RECHARGE = f"SELECT {_COLUMNS} FROM recharges WHERE id = $1 FOR UPDATE"
MARK_SUCCEEDED = f"""
UPDATE recharges
   SET status = 'succeeded', gateway_payment_id = $2, transfer_id = $3, failure_reason = NULL,
       settled_at = now(), updated_at = now()
 WHERE id = $1
RETURNING {_COLUMNS}
"""
MARK_FAILED = f"""
UPDATE recharges SET status = 'failed', failure_reason = $2, updated_at = now()
 WHERE id = $1 AND status = 'pending'
RETURNING {_COLUMNS}
"""
RECORD_EVENT = """
INSERT INTO payment_events (gateway, event_id, type, recharge_id, payment_id, payload)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (gateway, event_id) DO NOTHING
RETURNING event_id
"""


async def create_recharge(
    services: Services,
    *,
    user_id: uuid.UUID,
    gateway: str,
    amount: int | None = None,
    pack_id: uuid.UUID | None = None,
) -> Recharge:
    """Store a pending recharge and create the gateway's payment object for amount + tax. The
    test gateway's recharge completes itself a moment later (`complete_test_recharge`)."""
    settings = services.settings
    bonus = 0
    if pack_id is not None:
        pack = find_pack(pack_id)
        if pack is None:
            raise ValidationFailed({"pack_id": "no such recharge pack"})
        amount, bonus = pack.amount, pack.bonus
    if amount is None:
        raise ValidationFailed({"amount": "give an amount or a pack_id"})
    if not settings.recharge_min_amount <= amount <= settings.recharge_max_amount:
        raise ValidationFailed(
            {
                "amount": f"between {settings.recharge_min_amount} and "
                f"{settings.recharge_max_amount} minor units"
            }
        )
    gw = services.gateways.get(gateway)  # built once by the composition root
    q = rules.recharge_quote(amount, settings.gst_percent, bonus)
    tax, total = q.tax, q.total
    row = await services.db.fetchrow(
        INSERT_RECHARGE, user_id, gateway, amount, bonus, tax, total, settings.currency, pack_id
    )
    assert row is not None
    recharge = Recharge.from_row(row)
    try:
        order = await gw.create_order(
            recharge_id=recharge.id,
            total=total,
            currency=settings.currency,
            idempotency_key=f"recharge:{recharge.id}",
        )
    except AppError as exc:
        await services.db.execute(FAIL_CREATION, recharge.id, exc.code)
        raise
    row = await services.db.fetchrow(SET_ORDER, recharge.id, order.order_id, order.client_secret)
    assert row is not None
    if gateway == "test":
        await services.arq.enqueue_job(
            payment_keys.COMPLETE_TEST_RECHARGE,
            str(recharge.id),
            _job_id=payment_keys.test_recharge_job_id(recharge.id),
            _defer_by=settings.test_gateway_delay_seconds,
        )
    return Recharge.from_row(row)


async def get_recharge_of(conn: Executor, user_id: uuid.UUID, recharge_id: uuid.UUID) -> Recharge:
    """A user's own recharge; anyone else's is simply not found."""
    row = await conn.fetchrow(GET_USER_RECHARGE, recharge_id, user_id)
    if row is None:
        raise NotFound("no such recharge")
    return Recharge.from_row(row)


async def get_recharge(conn: Executor, recharge_id: uuid.UUID) -> Recharge | None:
    row = await conn.fetchrow(GET_RECHARGE, recharge_id)
    return Recharge.from_row(row) if row else None


async def find_by_order(conn: Executor, gateway: str, order_id: str) -> Recharge | None:
    row = await conn.fetchrow(GET_BY_ORDER, gateway, order_id)
    return Recharge.from_row(row) if row else None


async def record_event(
    conn: Executor,
    *,
    gateway: str,
    event_id: str,
    type: str,
    recharge_id: uuid.UUID | None,
    payment_id: str | None,
    payload: dict[str, Any],
) -> bool:
    """Keep a verified gateway event once; False when that event id was already received."""
    return (
        await conn.fetchval(RECORD_EVENT, gateway, event_id, type, recharge_id, payment_id, payload)
        is not None
    )


async def enqueue_settle(
    services: Services,
    *,
    gateway: str,
    event_id: str,
    recharge_id: uuid.UUID,
    payment_id: str | None,
) -> None:
    """Queue `settle_payment` for a verified gateway event (one job per event id)."""
    await services.arq.enqueue_job(
        payment_keys.SETTLE_PAYMENT,
        str(recharge_id),
        payment_id,
        _job_id=payment_keys.settle_job_id(gateway, event_id),
    )


async def settle(
    services: Services, recharge_id: uuid.UUID, payment_id: str | None = None
) -> Recharge | None:
    """Settle a recharge from what its gateway says: credit it once, mark it failed, or leave it
    pending; record (and flag for refund) any captured payment that must not be credited. Safe
    to run any number of times, concurrently: the recharge row is locked and a settled recharge
    is never credited again. Raises `GatewayUnavailable` to be retried."""
    recharge = await get_recharge(services.db, recharge_id)
    if recharge is None:
        log.warning("settle: no such recharge", extra={"recharge_id": str(recharge_id)})
        return None
    if recharge.gateway_order_id is None:
        return recharge
    if recharge.status == "succeeded" and payment_id in (None, recharge.gateway_payment_id):
        return recharge  # nothing new: another payment on a paid order is worth a look, only
    gw: PaymentGateway = services.gateways.get(recharge.gateway)
    state = await gw.payment_state(order_id=recharge.gateway_order_id, payment_id=payment_id)
    async with services.db.acquire() as conn, conn.transaction():
        settled = await apply_payment_state_txn(conn, recharge_id, state)
        # -- issue 17 (helper C): in this transaction, with the recharge row still locked, the
        # inbox is told (recharge_succeeded / recharge_failed) and a booking waiting for this
        # payment is confirmed, exactly once. Imported late: consultations builds on billing.
        from consultations import shortfall

        effects = await shortfall.recharge_settled_txn(conn, settled)
    await shortfall.after_commit(services, effects)
    # -- end issue 17
    return settled


INSERT_ANOMALY = """
INSERT INTO payment_anomalies (gateway, payment_id, recharge_id, kind, amount, currency)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (gateway, payment_id) DO NOTHING
RETURNING id
"""


async def _flag_txn(conn: Conn, recharge: Recharge, payment: CapturedPayment, kind: str) -> None:
    """Record a captured payment we do not credit, once, flagged for a refund to the card."""
    flagged = await conn.fetchval(
        INSERT_ANOMALY, recharge.gateway, payment.payment_id, recharge.id, kind,
        payment.amount, payment.currency,
    )  # fmt: skip
    if flagged is not None:
        log.error(
            "gateway payment not credited; flagged for refund",
            extra={
                "recharge_id": str(recharge.id),
                "payment_id": payment.payment_id,
                "kind": kind,
                "amount": payment.amount,
                "currency": payment.currency,
            },
        )


def _mismatch(recharge: Recharge, payment: CapturedPayment) -> str | None:
    """Why a captured payment cannot pay this recharge: another currency or amount (what the
    user must pay is amount + tax, the order's total)."""
    if payment.currency.upper() != recharge.currency.strip().upper():
        return "currency_mismatch"
    if payment.amount != recharge.total:
        return "amount_mismatch"
    return None


async def apply_payment_state_txn(
    conn: Conn, recharge_id: uuid.UUID, state: PaymentState
) -> Recharge:
    """In the caller's transaction: lock the recharge and apply the gateway's verdict.

    Credits (once) the first captured payment of the order's exact total and currency: amount
    (+ bonus, from promotions) to the wallet, amount + tax out of gateway clearing, the tax as
    payable. Every other captured payment (a second capture on a paid order, a wrong amount or
    currency) is recorded in `payment_anomalies` and flagged for refund, never credited. A
    recharge whose only captured payments are unusable is marked failed."""
    row = await conn.fetchrow(LOCK_RECHARGE, recharge_id)
    if row is None:
        raise NotFound("no such recharge")
    recharge = Recharge.from_row(row)
    if state.status == "pending":
        return recharge
    if state.status == "failed":
        if recharge.status != "pending":
            return recharge
        failed = await conn.fetchrow(MARK_FAILED, recharge_id, state.failure_reason or "failed")
        return Recharge.from_row(failed) if failed else recharge
    assert state.payment_id is not None
    if state.amount is None or state.currency is None:
        if recharge.gateway != "test":
            log.error("a gateway success without amount or currency; not credited",
                      extra={"recharge_id": str(recharge_id)})  # fmt: skip
            return recharge
        # The local test gateway's payments are fiction: they are always of the order's total.
        state = replace(state, amount=recharge.total, currency=recharge.currency.strip())
    assert state.amount is not None
    assert state.currency is not None
    main = CapturedPayment(state.payment_id or "", state.amount, state.currency)
    captured = [main, *state.extra]
    if recharge.status == "succeeded":
        for payment in captured:
            if payment.payment_id != recharge.gateway_payment_id:
                await _flag_txn(conn, recharge, payment, "extra_payment")
        return recharge
    chosen = next((p for p in captured if _mismatch(recharge, p) is None), None)
    for payment in captured:
        if payment is not chosen:
            await _flag_txn(
                conn, recharge, payment, _mismatch(recharge, payment) or "extra_payment"
            )
    if chosen is None:
        reason = _mismatch(recharge, captured[0]) or "amount_mismatch"
        failed = await conn.fetchrow(MARK_FAILED, recharge_id, reason)
        return Recharge.from_row(failed) if failed else recharge
    currency = recharge.currency
    wallet = await account_id(conn, "user_wallet", recharge.user_id, currency)
    clearing = await account_id(conn, "gateway_clearing", None, currency)
    legs = [Leg(clearing, -recharge.total), Leg(wallet, recharge.amount)]
    if recharge.tax:
        legs.append(Leg(await account_id(conn, "tax_payable", None, currency), recharge.tax))
    key = f"recharge:{recharge.gateway}:{chosen.payment_id}"
    transfer = await post_transfer(
        conn,
        key=key,
        kind="recharge",
        legs=legs,
        reason=f"recharge {recharge.id}",
        metadata={"recharge_id": str(recharge.id), "gateway": recharge.gateway},
    )
    if recharge.bonus:
        promotions = await account_id(conn, "promotions", None, currency)
        await post_transfer(
            conn,
            key=key + ":bonus",
            kind="bonus",
            legs=[Leg(promotions, -recharge.bonus), Leg(wallet, recharge.bonus)],
            reason=f"recharge bonus {recharge.id}",
            metadata={"recharge_id": str(recharge.id)},
        )
    done = await conn.fetchrow(MARK_SUCCEEDED, recharge_id, chosen.payment_id, transfer.id)
    assert done is not None
    log.info(
        "recharge credited",
        extra={"recharge_id": str(recharge_id), "amount": recharge.amount, "key": key},
    )
    return Recharge.from_row(done)


# --- The sweep of pending recharges (issue 13) -------------------------------------------------

# Claims the pending recharges due for a look, once per round across workers: rows another worker
# is claiming are skipped (SKIP LOCKED) and the claimed ones are stamped in the same statement.
CLAIM_STALE = claim_sql(
    "recharges",
    "status = 'pending' AND created_at < now() - make_interval(secs => $1)",
    "created_at",
    "t.id, t.gateway_order_id, t.created_at < now() - make_interval(secs => $3) AS too_old",
)
GIVE_UP = f"""
UPDATE recharges SET status = 'failed', failure_reason = $2, updated_at = now()
 WHERE id = $1 AND status = 'pending'
RETURNING {_COLUMNS}
"""


@dataclass
class SweepReport:
    settled: int = 0
    failed: int = 0
    still_pending: int = 0
    unreachable: int = 0


async def sweep_pending_recharges(services: Services) -> SweepReport:
    """Ask the gateway about every recharge still pending after RECHARGE_STALE_SECONDS (its
    webhooks were answered and its settle job's retries are over) and settle or fail it through
    the same path as a webhook. A recharge with no gateway order (the process died creating it)
    or never paid within RECHARGE_GIVE_UP_HOURS is failed. An unreachable gateway leaves it for
    the next round. Idempotent and safe with several workers (rows are claimed, settle locks)."""
    settings = services.settings
    report = SweepReport()
    rows = await services.db.fetch(
        CLAIM_STALE,
        settings.recharge_stale_seconds,
        settings.payment_sweep_batch,
        settings.recharge_give_up_hours * 3600,
    )
    for row in rows:
        try:
            recharge = (
                await settle(services, row["id"]) if row["gateway_order_id"] is not None else None
            )
        except GatewayUnavailable:
            report.unreachable += 1
            log.warning("sweep: gateway unreachable", extra={"recharge_id": str(row["id"])})
            continue
        except GatewayError:
            log.exception(
                "sweep: the gateway refused to say", extra={"recharge_id": str(row["id"])}
            )
            recharge = None
        status = recharge.status if recharge else "pending"
        if status == "pending" and (row["too_old"] or row["gateway_order_id"] is None):
            reason = "no gateway order" if row["gateway_order_id"] is None else "not paid in time"
            if await services.db.fetchrow(GIVE_UP, row["id"], reason) is not None:
                status = "failed"
        if status == "succeeded":
            report.settled += 1
        elif status == "failed":
            report.failed += 1
        else:
            report.still_pending += 1
    return report


# --- Refunds of captured payments we did not credit (issue 13) -----------------------------------

CLAIM_ANOMALIES = claim_sql(
    "payment_anomalies",
    "status IN ('flagged', 'refunding')",
    "created_at",
    "t.id, t.gateway, t.payment_id, t.amount, t.currency, t.status, t.gateway_refund_id",
)
SET_ANOMALY = """
UPDATE payment_anomalies
   SET status = $2, gateway_refund_id = coalesce($3, gateway_refund_id), note = $4,
       resolved_at = CASE WHEN $2 = 'resolved' THEN now() END
 WHERE id = $1 AND status <> 'resolved'
"""


async def refund_anomalies(services: Services) -> dict[str, int]:
    """Give back to the card every captured payment we recorded and did not credit: submit its
    refund through the gateway (key `anomaly_refund:{id}`, so a retry finds the first refund),
    then check it until the gateway confirms. A refund the gateway refuses stays flagged, with
    its reason, for a human (reconciliation keeps reporting it). Claimed rows, as the sweeps."""
    settings = services.settings
    counts: dict[str, int] = {}
    rows = await services.db.fetch(
        CLAIM_ANOMALIES, settings.refund_stale_seconds / 10, settings.payment_sweep_batch
    )
    for row in rows:
        gw = services.gateways.get(row["gateway"])
        try:
            if row["status"] == "flagged" or row["gateway_refund_id"] is None:
                state = await gw.create_refund(
                    payment_id=row["payment_id"],
                    amount=row["amount"],
                    currency=row["currency"],
                    idempotency_key=f"anomaly_refund:{row['id']}",
                )
            else:
                state = await gw.refund_state(
                    payment_id=row["payment_id"], refund_id=row["gateway_refund_id"]
                )
        except GatewayUnavailable:
            counts["unreachable"] = counts.get("unreachable", 0) + 1
            continue
        except GatewayError as exc:
            state = RefundState("", "failed", exc.message)
        status, note = {
            "succeeded": ("resolved", "refunded to the card"),
            "pending": ("refunding", None),
            "failed": ("flagged", f"refund failed: {state.failure_reason or 'failed'}"),
        }[state.status]
        await services.db.execute(SET_ANOMALY, row["id"], status, state.refund_id or None, note)
        counts[status] = counts.get(status, 0) + 1
    return counts


# Reconciliation: gateway successes = credited recharges.
SUCCEEDED_WITHOUT_TRANSFER = """
SELECT r.id FROM recharges r
  LEFT JOIN transfers t
    ON t.idempotency_key = 'recharge:' || r.gateway || ':' || r.gateway_payment_id
 WHERE r.status = 'succeeded' AND (t.id IS NULL OR t.id <> r.transfer_id)
"""
WRONG_CREDIT = """
SELECT r.id, e.amount, r.amount AS expected FROM recharges r
  JOIN accounts a ON a.kind = 'user_wallet' AND a.owner_id = r.user_id AND a.currency = r.currency
  JOIN entries e ON e.transfer_id = r.transfer_id AND e.account_id = a.id
 WHERE r.status = 'succeeded' AND e.amount <> r.amount
"""
ORPHAN_RECHARGE_TRANSFERS = """
SELECT t.idempotency_key FROM transfers t
  LEFT JOIN recharges r ON r.transfer_id = t.id
 WHERE t.kind = 'recharge' AND r.id IS NULL
"""
# Still pending long after a success was reported. A recharge FAILED after such an event was
# decided from the gateway's own answer (an authorised-then-refunded payment, a wrong amount or
# currency: those are in payment_anomalies), so only `pending` is a break here.
GATEWAY_SUCCESS_NOT_CREDITED = """
SELECT DISTINCT e.recharge_id FROM payment_events e
  JOIN recharges r ON r.id = e.recharge_id
 WHERE e.type IN ('payment_intent.succeeded', 'payment.captured', 'razorpay.verify')
   AND r.status = 'pending'
   AND e.received_at < now() - make_interval(secs => $1)
"""
# A verified success still not credited after this long means the settle path is broken (jobs
# normally settle within seconds; retries of an unreachable gateway end within a minute).
SETTLE_GRACE_SECONDS = 600


async def check_recharges(conn: Conn) -> list[str]:
    """Reconciliation of recharges against the ledger and the gateways' events: each problem is
    one line; an empty list means every gateway success was credited exactly once."""
    problems: list[str] = []
    for row in await conn.fetch(SUCCEEDED_WITHOUT_TRANSFER):
        problems.append(f"recharge {row['id']} succeeded without its recharge transfer")
    for row in await conn.fetch(WRONG_CREDIT):
        problems.append(
            f"recharge {row['id']} credited {row['amount']} instead of {row['expected']}"
        )
    for row in await conn.fetch(ORPHAN_RECHARGE_TRANSFERS):
        problems.append(f"transfer {row['idempotency_key']} credits no recorded recharge")
    for row in await conn.fetch(GATEWAY_SUCCESS_NOT_CREDITED, SETTLE_GRACE_SECONDS):
        problems.append(
            f"recharge {row['recharge_id']}: the gateway reported success, not credited"
        )
    return problems


@reconcile_check("recharges_credited")
async def reconcile_recharges(conn: Conn) -> list[Finding]:
    """`check_recharges` as a reconciliation check (list `billing.recharges` in the reconcile
    module's CHECK_MODULES to run it with the others)."""
    return [
        Finding("recharges_credited", problem.split(":")[0], {"problem": problem})
        for problem in await check_recharges(conn)
    ]
