"""Holds: part of a wallet reserved for a scheduled booking: reserve, capture once, release, expire.

A hold raises the wallet's `held` under the wallet's row lock, in the same transaction that writes
the hold row; `wallet_not_negative` (balance - held >= 0) then keeps anything else from spending
it, so available = balance - held never goes below zero. A hold ends exactly once: `captured` (its
money moves through one ledger transfer), `released` (cancelled) or `expired` (the sweep).

Lock order, the same everywhere: the hold row first, then accounts in sorted id order.
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

from billing.ledger import (
    InsufficientFunds,
    Leg,
    Transfer,
    adjust_held_txn,
    idempotency_conflict,
    lock_owned_txn,
    net_legs,
    post_transfer,
)
from core.errors import Conflict, NotFound
from db.pool import Conn, Executor

# How many expired holds one sweep transaction closes; the sweep loops until none is left.
EXPIRE_BATCH = 500


@dataclass(frozen=True)
class Hold:
    id: uuid.UUID
    key: str
    account_id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    currency: str
    reason: str
    consultation_id: uuid.UUID | None
    status: str  # open | captured | released | expired
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    capture_transfer_id: uuid.UUID | None
    replayed: bool = False  # True when `place_hold` found this key already placed


class HoldNotOpen(Conflict):
    code, message = "hold_not_open", "this hold was already captured, released or expired"


HOLD_COLUMNS = """
id, idempotency_key, request_hash, account_id, user_id, amount, currency, reason, consultation_id,
status, expires_at, created_at, closed_at, close_reason, capture_transfer_id
"""
GET_WALLET = """
SELECT id FROM accounts WHERE kind = 'user_wallet' AND owner_id = $1 AND currency = $2
"""
GET_HOLD_BY_KEY = f"SELECT {HOLD_COLUMNS} FROM holds WHERE idempotency_key = $1"
LOCK_HOLD = f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1 FOR UPDATE"
INSERT_HOLD = f"""
INSERT INTO holds (idempotency_key, request_hash, account_id, user_id, amount, currency, reason,
                   consultation_id, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {HOLD_COLUMNS}
"""
CLOSE_HOLD = f"""
UPDATE holds SET status = $2, closed_at = now(), close_reason = $3, capture_transfer_id = $4
 WHERE id = $1 AND status = 'open'
RETURNING {HOLD_COLUMNS}
"""
GET_TRANSFER_BY_ID = "SELECT id, idempotency_key, kind, created_at FROM transfers WHERE id = $1"
DUE_HOLDS = """
SELECT id, account_id, amount FROM holds
 WHERE status = 'open' AND expires_at <= $1
 ORDER BY id
 LIMIT $2
   FOR UPDATE SKIP LOCKED
"""
EXPIRE_HOLDS = """
UPDATE holds SET status = 'expired', closed_at = now(), close_reason = 'expired'
 WHERE id = ANY($1::uuid[]) AND status = 'open'
"""


def _hold(row: asyncpg.Record, replayed: bool = False) -> Hold:
    return Hold(
        id=row["id"],
        key=row["idempotency_key"],
        account_id=row["account_id"],
        user_id=row["user_id"],
        amount=row["amount"],
        currency=row["currency"].strip(),
        reason=row["reason"],
        consultation_id=row["consultation_id"],
        status=row["status"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
        close_reason=row["close_reason"],
        capture_transfer_id=row["capture_transfer_id"],
        replayed=replayed,
    )


def _hold_hash(
    user_id: uuid.UUID, amount: int, currency: str, consultation_id: uuid.UUID | None
) -> str:
    canonical = json.dumps(
        [str(user_id), amount, currency, str(consultation_id)], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def place_hold(
    conn: Conn,
    *,
    key: str,
    user_id: uuid.UUID,
    amount: int,
    currency: str,
    reason: str,
    expires_at: datetime,
    consultation_id: uuid.UUID | None = None,
) -> Hold:
    """Reserve `amount` of the user's wallet until `expires_at`, once per `key`.

    The same key with the same user, amount, currency and consultation returns the first hold
    (`replayed=True`, whatever its status now); other content raises `idempotency_conflict`.
    Raises `InsufficientFunds` when available (balance - held) is below `amount`."""
    if amount <= 0:
        raise ValueError("a hold reserves a positive amount")
    digest = _hold_hash(user_id, amount, currency, consultation_id)
    async with conn.transaction():
        wallet = await conn.fetchval(GET_WALLET, user_id, currency)
        locked: dict[uuid.UUID, tuple[int, int]] = {}
        if wallet is not None:
            locked = await lock_owned_txn(conn, [wallet])
        existing = await conn.fetchrow(GET_HOLD_BY_KEY, key)
        if existing is not None:
            if existing["request_hash"] != digest:
                raise idempotency_conflict()
            return _hold(existing, replayed=True)
        if wallet is None:
            raise InsufficientFunds(details={"available": 0})
        balance, held = locked[wallet]
        if balance - held < amount:
            raise InsufficientFunds(details={"available": balance - held})
        row = await conn.fetchrow(
            INSERT_HOLD,
            key,
            digest,
            wallet,
            user_id,
            amount,
            currency,
            reason,
            consultation_id,
            expires_at,
        )
        if row is None:  # the key is another wallet's hold, placed meanwhile
            raise idempotency_conflict()
        await adjust_held_txn(conn, wallet, amount)
        return _hold(row)


async def get_hold(conn: Executor, hold_id: uuid.UUID) -> Hold | None:
    row = await conn.fetchrow(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1", hold_id)
    return _hold(row) if row else None


async def capture_hold(
    conn: Conn,
    hold_id: uuid.UUID,
    *,
    key: str,
    kind: str,
    legs: Sequence[Leg],
    actor_id: uuid.UUID | None = None,
    reason: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Transfer:
    """Capture an open hold, at most once: the hold's amount stops being held and `legs` are
    posted as one transfer (key `key`) in the same transaction. The legs may take from the hold's
    wallet at most the held amount (what is not taken simply becomes available again).

    Calling again with the same key returns the capture transfer (`replayed=True`); capturing a
    hold that was captured under another key, released or expired raises `hold_not_open`."""
    async with conn.transaction():
        row = await conn.fetchrow(LOCK_HOLD, hold_id)
        if row is None:
            raise NotFound("no such hold")
        hold = _hold(row)
        if hold.status == "captured":
            first = await conn.fetchrow(GET_TRANSFER_BY_ID, hold.capture_transfer_id)
            assert first is not None
            if first["idempotency_key"] == key:
                return Transfer(first["id"], key, first["kind"], first["created_at"], True)
            raise HoldNotOpen()
        if hold.status != "open":
            raise HoldNotOpen()
        by_account = net_legs(legs)
        taken = -by_account.get(hold.account_id, 0)
        if taken < 0 or taken > hold.amount:
            raise ValueError("a capture takes between 0 and the held amount from the wallet")
        await lock_owned_txn(conn, [*by_account, hold.account_id])
        await adjust_held_txn(conn, hold.account_id, -hold.amount)
        transfer = await post_transfer(
            conn,
            key=key,
            kind=kind,
            legs=legs,
            consultation_id=hold.consultation_id,
            actor_id=actor_id,
            reason=reason,
            metadata=metadata,
        )
        try:
            closed = await conn.fetchrow(CLOSE_HOLD, hold_id, "captured", reason, transfer.id)
        except asyncpg.UniqueViolationError as exc:
            # The key named a transfer that already captured another hold.
            raise idempotency_conflict() from exc
        assert closed is not None  # we hold the row lock and saw it open
        return transfer


async def release_hold(conn: Conn, hold_id: uuid.UUID, reason: str) -> Hold:
    """Release an open hold (booking cancelled): its amount becomes available again. A hold that
    is no longer open is returned as it is, so a repeated release is harmless."""
    async with conn.transaction():
        row = await conn.fetchrow(LOCK_HOLD, hold_id)
        if row is None:
            raise NotFound("no such hold")
        if row["status"] != "open":
            return _hold(row)
        await lock_owned_txn(conn, [row["account_id"]])
        await adjust_held_txn(conn, row["account_id"], -row["amount"])
        closed = await conn.fetchrow(CLOSE_HOLD, hold_id, "released", reason, None)
        assert closed is not None
        return _hold(closed)


async def expire_holds(conn: Conn, now: datetime) -> int:
    """Expire every open hold due at `now`, in batches of `EXPIRE_BATCH` (one transaction each;
    SKIP LOCKED: a hold being captured or released right now is left to that caller).
    Returns how many expired."""
    total = 0
    while True:
        async with conn.transaction():
            due = await conn.fetch(DUE_HOLDS, now, EXPIRE_BATCH)
            if not due:
                return total
            per_wallet: dict[uuid.UUID, int] = {}
            for r in due:
                per_wallet[r["account_id"]] = per_wallet.get(r["account_id"], 0) + r["amount"]
            await lock_owned_txn(conn, list(per_wallet))
            for wallet in sorted(per_wallet):
                await adjust_held_txn(conn, wallet, -per_wallet[wallet])
            await conn.execute(EXPIRE_HOLDS, [r["id"] for r in due])
        total += len(due)
        if len(due) < EXPIRE_BATCH:
            return total


# Issue 17 (helper C): a rescheduled booking's hold moves with it. Only an open hold moves; its
# amount and wallet stay, so nothing about the money changes.
MOVE_HOLD = "UPDATE holds SET expires_at = $2 WHERE id = $1 AND status = 'open'"


async def move_hold_txn(conn: Conn, hold_id: uuid.UUID, expires_at: datetime) -> bool:
    """Change when an open hold expires (its booking moved); False when it is not open."""
    return bool(await conn.execute(MOVE_HOLD, hold_id, expires_at) == "UPDATE 1")
