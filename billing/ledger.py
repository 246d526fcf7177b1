"""The double-entry ledger. `post_transfer` is the one function that writes transfers and entries.

Every transfer carries an idempotency key derived from its cause; posting the same key again
returns the first transfer (same content) or raises `idempotency_conflict` (other content) and
moves nothing. Owned accounts (wallets, earnings) are locked in sorted id order and their balances
updated in the same transaction; the database CHECK refuses a wallet below zero. System accounts
are hot and only get entries: their balances are rolled up in batches.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core.errors import Conflict, PaymentRequired
from db.pool import Conn

SYSTEM_KINDS = (
    "platform_revenue",
    "promotions",
    "tax_payable",
    "gateway_clearing",
    "refunds",
    "payouts_clearing",
)
OWNED_KINDS = ("user_wallet", "astrologer_earnings")


@dataclass(frozen=True)
class Leg:
    account_id: uuid.UUID
    amount: int  # signed: + credits the account, - debits it


@dataclass(frozen=True)
class Transfer:
    id: uuid.UUID
    idempotency_key: str
    kind: str
    created_at: datetime
    replayed: bool  # True when this key had already been posted


class InsufficientFunds(PaymentRequired):
    code, message = "insufficient_balance", "the wallet does not cover this"


ENSURE_ACCOUNT = """
INSERT INTO accounts (kind, owner_id, currency) VALUES ($1, $2, $3)
ON CONFLICT (kind, owner_id, currency) DO NOTHING
"""
GET_ACCOUNT = """
SELECT id FROM accounts WHERE kind = $1 AND owner_id IS NOT DISTINCT FROM $2 AND currency = $3
"""
INSERT_TRANSFER = """
INSERT INTO transfers
    (idempotency_key, request_hash, kind, consultation_id, actor_id, reason, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, created_at
"""
GET_TRANSFER = """
SELECT id, request_hash, kind, created_at FROM transfers WHERE idempotency_key = $1
"""
LOCK_OWNED = """
SELECT id FROM accounts WHERE id = ANY($1::uuid[]) AND owner_id IS NOT NULL ORDER BY id FOR UPDATE
"""
APPLY_OWNED = """
UPDATE accounts SET balance = balance + $2, updated_at = now() WHERE id = $1 RETURNING balance
"""
INSERT_ENTRIES = """
INSERT INTO entries (transfer_id, account_id, amount, balance_after)
SELECT $1, a, m, b FROM unnest($2::uuid[], $3::bigint[], $4::bigint[]) AS t(a, m, b)
"""


async def account_id(
    conn: Conn, kind: str, owner_id: uuid.UUID | None, currency: str = "INR"
) -> uuid.UUID:
    """The id of the (kind, owner, currency) account, created on first use."""
    found = await conn.fetchval(GET_ACCOUNT, kind, owner_id, currency)
    if found is None:
        await conn.execute(ENSURE_ACCOUNT, kind, owner_id, currency)
        found = await conn.fetchval(GET_ACCOUNT, kind, owner_id, currency)
    assert isinstance(found, uuid.UUID)
    return found


def request_hash(kind: str, legs: Sequence[Leg], consultation_id: uuid.UUID | None) -> str:
    canonical = json.dumps(
        [kind, sorted((str(leg.account_id), leg.amount) for leg in legs), str(consultation_id)],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def post_transfer(
    conn: Conn,
    *,
    key: str,
    kind: str,
    legs: Sequence[Leg],
    consultation_id: uuid.UUID | None = None,
    actor_id: uuid.UUID | None = None,
    reason: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Transfer:
    """Post one balanced transfer, once per `key`. Runs in its own transaction (a savepoint when
    the caller already has one). Raises `InsufficientFunds` when a wallet would go negative."""
    if (
        len(legs) < 2
        or sum(leg.amount for leg in legs) != 0
        or any(leg.amount == 0 for leg in legs)
    ):
        raise ValueError("a transfer needs two or more non-zero legs that sum to zero")
    digest = request_hash(kind, legs, consultation_id)
    async with conn.transaction():
        row = await conn.fetchrow(
            INSERT_TRANSFER, key, digest, kind, consultation_id, actor_id, reason, metadata or {}
        )
        if row is None:
            existing = await conn.fetchrow(GET_TRANSFER, key)
            assert existing is not None
            if existing["request_hash"] != digest:
                raise Conflict(
                    "this idempotency key was used for another transfer",
                    code="idempotency_conflict",
                )
            return Transfer(existing["id"], key, existing["kind"], existing["created_at"], True)
        by_account: dict[uuid.UUID, int] = {}
        for leg in legs:
            by_account[leg.account_id] = by_account.get(leg.account_id, 0) + leg.amount
        owned = {r["id"] for r in await conn.fetch(LOCK_OWNED, sorted(by_account))}
        after: dict[uuid.UUID, int | None] = {}
        for acc in sorted(owned):
            try:
                after[acc] = await conn.fetchval(APPLY_OWNED, acc, by_account[acc])
            except asyncpg.CheckViolationError as exc:
                raise InsufficientFunds() from exc
        ids = list(by_account)
        await conn.execute(
            INSERT_ENTRIES,
            row["id"],
            ids,
            [by_account[a] for a in ids],
            [after.get(a) for a in ids],
        )
        return Transfer(row["id"], key, kind, row["created_at"], False)


async def wallet_balance(conn: Conn, user_id: uuid.UUID, currency: str = "INR") -> tuple[int, int]:
    """(balance, held) of a user's wallet; (0, 0) before its first movement."""
    row = await conn.fetchrow(
        "SELECT balance, held FROM accounts"
        " WHERE kind = 'user_wallet' AND owner_id = $1 AND currency = $2",
        user_id,
        currency,
    )
    return (row["balance"], row["held"]) if row else (0, 0)
