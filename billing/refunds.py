"""Refunds: a consultation's charges back to the wallet, and a recharge back to the card.

Consultation refunds (`refund_consultation`) never exceed what the user was charged for that
consultation, across any number of partial refunds: the per-consultation totals row is locked
for the whole transaction and its CHECK is the last word. The refund is taken back from the
accounts the charges paid, in proportion (the astrologer's share out of their earnings, the rest
from platform revenue), with cumulative rounding so a full refund reverses every paisa exactly.

Card refunds (`request_card_refund`) debit the wallet at once (the money cannot be spent while
the gateway works), then the arq job `process_refund` calls the gateway's refund API with the
fixed key `card_refund:{id}`; if the gateway finally reports failure, the money goes back.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing import payment_keys, rules
from billing.gateways import GatewayUnavailable, RefundState
from billing.ledger import Leg, account_id, lock_owned_txn, post_transfer
from billing.sweeps import claim_sql, sweep_claimed
from core.errors import AppError, Conflict, NotFound
from core.services import Services
from db.pool import Conn, Executor

log = logging.getLogger(__name__)


class RefundExceedsCharged(AppError):
    status, code, message = 409, "refund_exceeds_charged", "more than is left to refund"


@dataclass(frozen=True)
class ConsultationRefund:
    id: uuid.UUID
    key: str
    consultation_id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    requested: int | None
    earnings_reversed: int
    reason: str
    actor_id: uuid.UUID | None
    transfer_id: uuid.UUID
    created_at: datetime
    replayed: bool = False

    @classmethod
    def from_row(cls, row: asyncpg.Record, replayed: bool = False) -> ConsultationRefund:
        fields = [f for f in cls.__dataclass_fields__ if f != "replayed"]
        return cls(**{f: row[f] for f in fields}, replayed=replayed)


_REFUND_COLUMNS = ", ".join(f for f in ConsultationRefund.__dataclass_fields__ if f != "replayed")

GET_CONSULTATION = "SELECT user_id, astrologer_id, currency FROM consultations WHERE id = $1"
GET_REFUND_BY_KEY = f"SELECT {_REFUND_COLUMNS} FROM consultation_refunds WHERE key = $1"
# What the user paid for the consultation: every debit of their wallet by a transfer of it.
CHARGED = """
SELECT coalesce(-sum(e.amount), 0)::bigint FROM entries e
  JOIN transfers t ON t.id = e.transfer_id
 WHERE t.consultation_id = $1 AND e.account_id = $2 AND e.amount < 0 AND t.kind <> 'tip'
"""
# Who received those payments: the other accounts of the charging transfers, net credited.
PAID_TO = """
SELECT e.account_id, a.kind, sum(e.amount)::bigint AS credited FROM entries e
  JOIN accounts a ON a.id = e.account_id
 WHERE e.account_id <> $2 AND e.transfer_id IN (
        SELECT w.transfer_id FROM entries w JOIN transfers t ON t.id = w.transfer_id
         WHERE t.consultation_id = $1 AND w.account_id = $2 AND w.amount < 0
           AND t.kind <> 'tip')
 GROUP BY e.account_id, a.kind
HAVING sum(e.amount) > 0
 ORDER BY e.account_id
"""
# What earlier refunds of the consultation already took back from each account.
REVERSED = """
SELECT e.account_id, -sum(e.amount)::bigint AS reversed FROM entries e
  JOIN consultation_refunds r ON r.transfer_id = e.transfer_id
 WHERE r.consultation_id = $1 AND e.amount < 0
 GROUP BY e.account_id
"""
# The consultation's totals row, locked until commit: concurrent refunds queue here. It is locked
# BEFORE `charged` is read (issue 13): a stale `charged` written over a newer one broke the CHECK.
ENSURE_TOTALS = """
INSERT INTO consultation_refund_totals (consultation_id, charged) VALUES ($1, 0)
ON CONFLICT (consultation_id) DO NOTHING
"""
LOCK_TOTALS = """
SELECT charged, refunded FROM consultation_refund_totals WHERE consultation_id = $1 FOR UPDATE
"""
SET_CHARGED = """
UPDATE consultation_refund_totals SET charged = greatest(charged, $2) WHERE consultation_id = $1
RETURNING charged, refunded
"""
ADD_REFUNDED = """
UPDATE consultation_refund_totals SET refunded = refunded + $2 WHERE consultation_id = $1
"""
INSERT_REFUND = f"""
INSERT INTO consultation_refunds
    (id, key, consultation_id, user_id, amount, requested, earnings_reversed, reason, actor_id,
     transfer_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING {_REFUND_COLUMNS}
"""
AUDIT = """
INSERT INTO audit_log (actor_id, action, target_type, target_id, reason, details)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def refund_consultation(
    conn: Conn,
    *,
    consultation_id: uuid.UUID,
    amount: int | None,
    reason: str,
    actor_id: uuid.UUID | None,
    key: str,
) -> ConsultationRefund:
    """Refund `amount` (None: everything not yet refunded) of a consultation's charges to the
    user's wallet, once per `key`. A repeat with the same key and amount returns the first
    refund; another amount is `idempotency_conflict`. More than is left is
    `refund_exceeds_charged` (409) and moves nothing. The meter's automatic rules call this with
    keys like `auto:{rule}:{consultation_id}`; admins through POST /v1/admin/refunds."""
    if amount is not None and amount <= 0:
        raise RefundExceedsCharged("a refund amount must be positive")
    async with conn.transaction():
        cons = await conn.fetchrow(GET_CONSULTATION, consultation_id)
        if cons is None:
            raise NotFound("no such consultation")
        user_id, currency = cons["user_id"], cons["currency"]
        wallet = await account_id(conn, "user_wallet", user_id, currency)
        earnings = await account_id(conn, "astrologer_earnings", cons["astrologer_id"], currency)
        # Lock, then read: the totals row (refunds of this consultation queue), then the wallet
        # and earnings in id order, the locks a charge of this consultation holds until it
        # commits; `charged` read after them includes every committed charge.
        await conn.execute(ENSURE_TOTALS, consultation_id)
        await conn.fetchrow(LOCK_TOTALS, consultation_id)
        locked = await lock_owned_txn(conn, [wallet, earnings])
        charged = await conn.fetchval(CHARGED, consultation_id, wallet)
        totals = await conn.fetchrow(SET_CHARGED, consultation_id, charged)
        assert totals is not None
        charged = totals["charged"]
        existing = await conn.fetchrow(GET_REFUND_BY_KEY, key)
        if existing is not None:
            if existing["consultation_id"] != consultation_id or existing["requested"] != amount:
                raise Conflict(
                    "this refund key was used for another refund", code="idempotency_conflict"
                )
            return ConsultationRefund.from_row(existing, replayed=True)
        remaining = charged - totals["refunded"]
        value = remaining if amount is None else amount
        if value <= 0 or value > remaining:
            raise RefundExceedsCharged(
                details={"charged": charged, "refunded": totals["refunded"], "remaining": remaining}
            )
        paid_to = await conn.fetch(PAID_TO, consultation_id, wallet)
        reversed_before = {
            r["account_id"]: r["reversed"] for r in await conn.fetch(REVERSED, consultation_id)
        }
        takes = reversal_amounts(
            [(r["account_id"], r["kind"], r["credited"]) for r in paid_to],
            reversed_before,
            refunded_after=totals["refunded"] + value,
            charged=charged,
            amount=value,
        )
        kinds = {r["account_id"]: r["kind"] for r in paid_to}
        # Earnings never go below zero (migration 0013): what was already paid out is taken from
        # platform revenue instead; a later refund of this consultation catches up on the share.
        earnings_balance = locked.get(earnings, (0, 0))[0]
        for acc in [a for a, k in kinds.items() if k == "astrologer_earnings"]:
            available = earnings_balance if acc == earnings else locked.get(acc, (0, 0))[0]
            excess = takes[acc] - max(0, available)
            if excess > 0:
                revenue = await account_id(conn, "platform_revenue", None, currency)
                takes[acc] -= excess
                takes[revenue] = takes.get(revenue, 0) + excess
                kinds.setdefault(revenue, "platform_revenue")
        refund_id = uuid.uuid4()
        legs = [Leg(wallet, value)] + [Leg(acc, -m) for acc, m in takes.items() if m != 0]
        transfer = await post_transfer(
            conn,
            key=f"refund:{refund_id}",
            kind="refund",
            legs=legs,
            consultation_id=consultation_id,
            actor_id=actor_id,
            reason=reason,
            metadata={"refund_key": key},
        )
        reversed_share = sum(m for acc, m in takes.items() if kinds[acc] == "astrologer_earnings")
        row = await conn.fetchrow(
            INSERT_REFUND, refund_id, key, consultation_id, user_id, value, amount,
            max(0, reversed_share), reason, actor_id, transfer.id,
        )  # fmt: skip
        assert row is not None
        await conn.execute(ADD_REFUNDED, consultation_id, value)
        await conn.execute(
            AUDIT, actor_id, "consultation_refund", "consultation", str(consultation_id), reason,
            {"refund_id": str(refund_id), "amount": value, "key": key,
             "earnings_reversed": reversed_share},
        )  # fmt: skip
        return ConsultationRefund.from_row(row)


def reversal_amounts(
    paid_to: list[tuple[uuid.UUID, str, int]],
    reversed_before: dict[uuid.UUID, int],
    *,
    refunded_after: int,
    charged: int,
    amount: int,
) -> dict[uuid.UUID, int]:
    """What this refund of `amount` takes back from each account the charges paid. Every account
    but one gets floor(credited x refunded_after / total credited) cumulatively (minus what earlier
    refunds took); the residual account (platform revenue, else the biggest) balances the legs.
    So after a full refund each account has given back exactly what it received."""
    if not paid_to:
        raise RefundExceedsCharged("nothing was paid to anyone for this consultation")
    residual = next(
        (acc for acc, kind, _ in paid_to if kind == "platform_revenue"),
        max(paid_to, key=lambda p: p[2])[0],
    )
    weight = sum(credited for _, _, credited in paid_to)
    # The charges may also have paid promo-funded parts: scale so the takes sum to refunded_after.
    takes: dict[uuid.UUID, int] = {}
    for acc, _, credited in paid_to:
        if acc == residual:
            continue
        target = credited * refunded_after // weight if charged else 0
        takes[acc] = target - reversed_before.get(acc, 0)
    takes[residual] = amount - sum(takes.values())
    return takes


async def refunds_of(conn: Executor, consultation_id: uuid.UUID) -> list[ConsultationRefund]:
    rows = await conn.fetch(
        f"SELECT {_REFUND_COLUMNS} FROM consultation_refunds WHERE consultation_id = $1"
        " ORDER BY created_at, id",
        consultation_id,
    )
    return [ConsultationRefund.from_row(r) for r in rows]


# Refunds of a recharge to the card.
@dataclass(frozen=True)
class CardRefund:
    id: uuid.UUID
    recharge_id: uuid.UUID
    amount: int
    bonus: int
    tax: int
    status: str
    gateway_refund_id: str | None
    failure_reason: str | None
    reason: str
    actor_id: uuid.UUID | None
    transfer_id: uuid.UUID
    reversal_id: uuid.UUID | None
    created_at: datetime

    @property
    def to_card(self) -> int:
        """What goes back to the card: the amount and the GST paid on it."""
        return self.amount + self.tax

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> CardRefund:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


_CARD_COLUMNS = ", ".join(CardRefund.__dataclass_fields__)

LOCK_RECHARGE_FOR_REFUND = """
SELECT id, user_id, status, amount, bonus, tax, refunded, currency, gateway, gateway_payment_id
  FROM recharges WHERE id = $1 FOR UPDATE
"""
ADD_RECHARGE_REFUNDED = """
UPDATE recharges SET refunded = refunded + $2, updated_at = now() WHERE id = $1
"""
INSERT_CARD_REFUND = f"""
INSERT INTO card_refunds (id, recharge_id, amount, bonus, tax, reason, actor_id, transfer_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING {_CARD_COLUMNS}
"""
GET_CARD_REFUND = f"SELECT {_CARD_COLUMNS} FROM card_refunds WHERE id = $1"
LOCK_CARD_REFUND = f"SELECT {_CARD_COLUMNS} FROM card_refunds WHERE id = $1 FOR UPDATE"
FIND_CARD_REFUND = f"SELECT {_CARD_COLUMNS} FROM card_refunds WHERE gateway_refund_id = $1"
MARK_SUBMITTED = f"""
UPDATE card_refunds SET status = 'submitted', gateway_refund_id = $2, updated_at = now()
 WHERE id = $1 AND status = 'requested'
RETURNING {_CARD_COLUMNS}
"""
MARK_CARD_SUCCEEDED = f"""
UPDATE card_refunds SET status = 'succeeded', gateway_refund_id = $2, updated_at = now()
 WHERE id = $1 AND status IN ('requested', 'submitted')
RETURNING {_CARD_COLUMNS}
"""
MARK_CARD_FAILED = f"""
UPDATE card_refunds
   SET status = 'failed', failure_reason = $2, reversal_id = $3, updated_at = now()
 WHERE id = $1
RETURNING {_CARD_COLUMNS}
"""
GIVE_BACK_RECHARGE = """
UPDATE recharges SET refunded = refunded - $2, updated_at = now() WHERE id = $1
"""


async def request_card_refund(
    conn: Conn,
    *,
    recharge_id: uuid.UUID,
    amount: int | None,
    reason: str,
    actor_id: uuid.UUID | None,
) -> CardRefund:
    """Take (part of) a recharge back out of the wallet toward the card: `amount` of the
    recharged amount (None: all not yet refunded), the same share of its bonus back to
    promotions, and the same share of its GST back to the card. The caller enqueues
    `process_refund` after commit (see `enqueue_card_refund`). 402 when the wallet has already
    spent it; 409 `refund_exceeds_charged` beyond what the recharge credited."""
    async with conn.transaction():
        r = await conn.fetchrow(LOCK_RECHARGE_FOR_REFUND, recharge_id)
        if r is None:
            raise NotFound("no such recharge")
        if r["status"] != "succeeded":
            raise Conflict("only a succeeded recharge can be refunded", code="not_refundable")
        remaining = r["amount"] - r["refunded"]
        value = remaining if amount is None else amount
        if value <= 0 or value > remaining:
            raise RefundExceedsCharged(
                details={"charged": r["amount"], "refunded": r["refunded"], "remaining": remaining}
            )
        after = r["refunded"] + value
        bonus = rules.pro_rata(r["bonus"], r["amount"], r["refunded"], after)
        tax = rules.pro_rata(r["tax"], r["amount"], r["refunded"], after)
        currency = r["currency"]
        wallet = await account_id(conn, "user_wallet", r["user_id"], currency)
        clearing = await account_id(conn, "gateway_clearing", None, currency)
        legs = [Leg(wallet, -(value + bonus)), Leg(clearing, value + tax)]
        if bonus:
            legs.append(Leg(await account_id(conn, "promotions", None, currency), bonus))
        if tax:
            legs.append(Leg(await account_id(conn, "tax_payable", None, currency), -tax))
        refund_id = uuid.uuid4()
        transfer = await post_transfer(
            conn,
            key=f"card_refund:{refund_id}",
            kind="card_refund",
            legs=legs,
            actor_id=actor_id,
            reason=reason,
            metadata={"recharge_id": str(recharge_id)},
        )
        row = await conn.fetchrow(
            INSERT_CARD_REFUND, refund_id, recharge_id, value, bonus, tax, reason, actor_id,
            transfer.id,
        )  # fmt: skip
        assert row is not None
        await conn.execute(ADD_RECHARGE_REFUNDED, recharge_id, value)
        await conn.execute(
            AUDIT, actor_id, "card_refund", "recharge", str(recharge_id), reason,
            {"card_refund_id": str(refund_id), "amount": value, "bonus": bonus, "tax": tax},
        )  # fmt: skip
        return CardRefund.from_row(row)


async def enqueue_card_refund(services: Services, card_refund_id: uuid.UUID, why: str) -> None:
    """Queue `process_refund` for a card refund (`why`: requested, or the gateway event id)."""
    await services.arq.enqueue_job(
        payment_keys.PROCESS_REFUND,
        str(card_refund_id),
        _job_id=payment_keys.refund_job_id(card_refund_id, why),
    )


async def get_card_refund(conn: Executor, card_refund_id: uuid.UUID) -> CardRefund | None:
    row = await conn.fetchrow(GET_CARD_REFUND, card_refund_id)
    return CardRefund.from_row(row) if row else None


async def find_card_refund(conn: Executor, gateway_refund_id: str) -> CardRefund | None:
    row = await conn.fetchrow(FIND_CARD_REFUND, gateway_refund_id)
    return CardRefund.from_row(row) if row else None


async def process_card_refund(services: Services, card_refund_id: uuid.UUID) -> CardRefund | None:
    """Drive a card refund forward: submit it to the gateway (key `card_refund:{id}`, so a rerun
    after a crash finds the same gateway refund), or ask how a submitted one stands. A final
    failure puts the money back into the wallet, once. Safe to run any number of times."""
    refund = await get_card_refund(services.db, card_refund_id)
    if refund is None or refund.status in ("succeeded", "failed"):
        return refund
    recharge = await services.db.fetchrow(
        "SELECT gateway, gateway_payment_id, currency FROM recharges WHERE id = $1",
        refund.recharge_id,
    )
    assert recharge is not None
    assert recharge["gateway_payment_id"] is not None
    gw = services.gateways.get(recharge["gateway"])
    payment_id = recharge["gateway_payment_id"]
    state: RefundState
    if refund.status == "requested":
        state = await gw.create_refund(
            payment_id=payment_id,
            amount=refund.to_card,
            currency=recharge["currency"],
            idempotency_key=f"card_refund:{refund.id}",
        )
        submitted = await services.db.fetchrow(MARK_SUBMITTED, refund.id, state.refund_id)
        refund = CardRefund.from_row(submitted) if submitted else refund
    else:
        assert refund.gateway_refund_id is not None
        state = await gw.refund_state(payment_id=payment_id, refund_id=refund.gateway_refund_id)
    async with services.db.acquire() as conn, conn.transaction():
        return await apply_refund_state_txn(conn, refund.id, state)


async def apply_refund_state_txn(
    conn: Conn, card_refund_id: uuid.UUID, state: RefundState
) -> CardRefund:
    """In the caller's transaction: apply the gateway's verdict on a card refund. A failure
    reverses the wallet debit (key `card_refund_failed:{id}`) and frees the recharge's amount."""
    row = await conn.fetchrow(LOCK_CARD_REFUND, card_refund_id)
    if row is None:
        raise NotFound("no such card refund")
    refund = CardRefund.from_row(row)
    if refund.status in ("succeeded", "failed") or state.status == "pending":
        return refund
    if state.status == "succeeded":
        done = await conn.fetchrow(MARK_CARD_SUCCEEDED, refund.id, state.refund_id)
        assert done is not None
        return CardRefund.from_row(done)
    r = await conn.fetchrow(LOCK_RECHARGE_FOR_REFUND, refund.recharge_id)
    assert r is not None
    currency = r["currency"]
    wallet = await account_id(conn, "user_wallet", r["user_id"], currency)
    clearing = await account_id(conn, "gateway_clearing", None, currency)
    legs = [Leg(wallet, refund.amount + refund.bonus), Leg(clearing, -refund.to_card)]
    if refund.bonus:
        legs.append(Leg(await account_id(conn, "promotions", None, currency), -refund.bonus))
    if refund.tax:
        legs.append(Leg(await account_id(conn, "tax_payable", None, currency), refund.tax))
    reversal = await post_transfer(
        conn,
        key=f"card_refund_failed:{refund.id}",
        kind="card_refund_reversal",
        legs=legs,
        reason=f"card refund failed: {state.failure_reason or 'failed'}",
        metadata={"card_refund_id": str(refund.id)},
    )
    await conn.execute(GIVE_BACK_RECHARGE, refund.recharge_id, refund.amount)
    failed = await conn.fetchrow(
        MARK_CARD_FAILED, refund.id, state.failure_reason or "failed", reversal.id
    )
    assert failed is not None
    log.warning(
        "card refund failed; money returned to the wallet",
        extra={"card_refund_id": str(refund.id), "reason": state.failure_reason},
    )
    return CardRefund.from_row(failed)


# --- The sweep of stuck card refunds (issue 13) ------------------------------------------------

# Card refunds still `requested` (their job was lost) or `submitted` (no webhook came) after
# REFUND_STALE_SECONDS, claimed once per round across workers (SKIP LOCKED, stamped at once).
CLAIM_STUCK_REFUNDS = claim_sql(
    "card_refunds",
    "status IN ('requested', 'submitted') AND updated_at < now() - make_interval(secs => $1)",
    "created_at",
)


async def sweep_stuck_card_refunds(services: Services) -> dict[str, int]:
    """Resubmit (same key `card_refund:{id}`: the gateway finds its first refund) or check every
    card refund stuck `requested`/`submitted`. Returns how many ended in each status; an
    unreachable gateway leaves the refund for the next round."""

    async def drive(card_refund_id: uuid.UUID) -> str:
        refund = await process_card_refund(services, card_refund_id)
        return refund.status if refund else "missing"

    settings = services.settings
    return await sweep_claimed(
        services.db,
        CLAIM_STUCK_REFUNDS,
        (settings.refund_stale_seconds, settings.payment_sweep_batch),
        drive,
        retry_on=(GatewayUnavailable,),
    )
