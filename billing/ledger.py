"""The double-entry ledger. `post_transfer` is the one function that posts a transfer;
`post_charges` is its batch form for the per-minute meter. Nothing else writes transfers, entries
or balances.

Rules (DESIGN.md, Money):
- Every transfer carries an idempotency key derived from its cause; posting the same key again
  returns the first transfer (same content, `replayed=True`) or raises `idempotency_conflict`
  (other content) and moves nothing.
- Owned accounts (wallets, earnings) are locked in sorted id order BEFORE the transfer row is
  written, and their balances move in the same transaction; each of their entries carries the
  balance right after it (`balance_after`). Locking first means two postings of one key queue on
  the account locks instead of deadlocking on the key.
- The database CHECK `wallet_not_negative` (balance - held >= 0) is the last word on funds.
- System accounts (platform revenue, promotions, ...) are hot: postings only append entries; a
  trigger queues one delta per statement and `rollup_system_balances` folds them into the balance.
- `accounts.held` is written by billing/holds.py through `adjust_held_txn` below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from core.errors import Conflict, PaymentRequired
from db.pool import Conn, custom_plans

log = logging.getLogger(__name__)

SYSTEM_KINDS = (
    "platform_revenue",
    "promotions",
    "tax_payable",
    "gateway_clearing",
    "refunds",
    "payouts_clearing",
)
OWNED_KINDS = ("user_wallet", "astrologer_earnings")

CHARGE_KIND = "consultation_charge"  # a paid minute (wallet -> earnings + platform)
FREE_MINUTE_KIND = "free_minute"  # a free minute (promotions -> earnings + platform)
WALLET_CHECK = "wallet_not_negative"
# A batch that lost a race on a key (another process committed it meanwhile) is retried whole;
# the retry sees that key as posted. Two retries are plenty: each loss needs a concurrent commit.
BATCH_ATTEMPTS = 3


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


def idempotency_conflict() -> Conflict:
    return Conflict(
        "this idempotency key was used for another request", code="idempotency_conflict"
    )


ENSURE_ACCOUNT = """
INSERT INTO accounts (kind, owner_id, currency) VALUES ($1, $2, $3)
ON CONFLICT (kind, owner_id, currency) DO NOTHING
"""
GET_ACCOUNT = """
SELECT id FROM accounts WHERE kind = $1 AND owner_id IS NOT DISTINCT FROM $2 AND currency = $3
"""
# Locks the owned accounts among $1 in id order (MATERIALIZED: the locking runs exactly once, in
# that order) and describes every account of the posting.
LOCK_ACCOUNTS = """
WITH locked AS MATERIALIZED (
    SELECT id FROM accounts
     WHERE id = ANY($1::uuid[]) AND owner_id IS NOT NULL
     ORDER BY id
       FOR UPDATE
)
SELECT a.id, a.currency, (l.id IS NOT NULL) AS owned
  FROM accounts a LEFT JOIN locked l ON l.id = a.id
 WHERE a.id = ANY($1::uuid[])
"""
# Writes the transfer and, only when its key is new, moves the owned balances and writes every
# entry (each owned one with its balance after) -- one statement, one round trip. The UPDATE reads
# `t`, so it runs after the insert and not at all for a key already posted.
POST = """
WITH t AS (
    INSERT INTO transfers
        (idempotency_key, request_hash, kind, consultation_id, actor_id, reason, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, created_at
), legs AS (
    SELECT * FROM unnest($8::uuid[], $9::bigint[]) AS l(account_id, amount)
), moved AS (
    UPDATE accounts a SET balance = a.balance + legs.amount, updated_at = now()
      FROM legs, t
     WHERE a.id = legs.account_id AND a.owner_id IS NOT NULL
    RETURNING a.id, a.balance
), entered AS (
    INSERT INTO entries (transfer_id, account_id, amount, balance_after)
    SELECT t.id, legs.account_id, legs.amount, moved.balance
      FROM t, legs LEFT JOIN moved ON moved.id = legs.account_id
)
SELECT id, created_at FROM t
"""
GET_TRANSFER = """
SELECT id, request_hash, kind, created_at FROM transfers WHERE idempotency_key = $1
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
    """Fingerprint of a transfer's content: kind, net amount per account, consultation."""
    canonical = json.dumps(
        [kind, sorted((str(leg.account_id), leg.amount) for leg in legs), str(consultation_id)],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def net_legs(legs: Sequence[Leg]) -> dict[uuid.UUID, int]:
    """Legs summed per account, accounts whose legs cancel out dropped."""
    by_account: dict[uuid.UUID, int] = {}
    for leg in legs:
        by_account[leg.account_id] = by_account.get(leg.account_id, 0) + leg.amount
    return {acc: amount for acc, amount in by_account.items() if amount != 0}


def _is_wallet_check(exc: asyncpg.CheckViolationError) -> bool:
    return getattr(exc, "constraint_name", None) == WALLET_CHECK


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
    the caller already has one, so a caller may catch `InsufficientFunds` and go on).

    Raises `InsufficientFunds` when a wallet would go below its held amount, `Conflict`
    (`idempotency_conflict`) when `key` was posted with other content, `ValueError` for legs that
    do not balance, name unknown accounts or mix currencies."""
    by_account = net_legs(legs)
    if any(leg.amount == 0 for leg in legs) or sum(by_account.values()) != 0:
        raise ValueError("a transfer needs non-zero legs that sum to zero")
    if len(by_account) < 2:
        raise ValueError("a transfer moves money between two or more accounts")
    digest = request_hash(kind, [Leg(a, m) for a, m in by_account.items()], consultation_id)
    ids = sorted(by_account)
    async with conn.transaction():
        await custom_plans(conn)  # issue 15: scoped to the ledger's transactions (db/pool.py)
        described = await conn.fetch(LOCK_ACCOUNTS, ids)
        if len(described) != len(ids):
            raise ValueError("a transfer names an account that does not exist")
        if len({r["currency"] for r in described}) != 1:
            raise ValueError("a transfer cannot mix currencies")
        try:
            row = await conn.fetchrow(
                POST, key, digest, kind, consultation_id, actor_id, reason, metadata or {},
                ids, [by_account[a] for a in ids],
            )  # fmt: skip
        except asyncpg.CheckViolationError as exc:
            if _is_wallet_check(exc):
                raise InsufficientFunds() from exc
            raise
        if row is None:
            existing = await conn.fetchrow(GET_TRANSFER, key)
            assert existing is not None  # the conflicting row is committed: we waited for it
            if existing["request_hash"] != digest:
                raise idempotency_conflict()
            return Transfer(existing["id"], key, existing["kind"], existing["created_at"], True)
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


# --- Holds support (billing/holds.py owns the holds table; the accounts row is written here) ----

LOCK_OWNED = """
SELECT id, balance, held FROM accounts
 WHERE id = ANY($1::uuid[]) AND owner_id IS NOT NULL
 ORDER BY id
   FOR UPDATE
"""
ADJUST_HELD = """
UPDATE accounts SET held = held + $2, updated_at = now() WHERE id = $1 RETURNING balance, held
"""


async def lock_owned_txn(conn: Conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    """Lock the owned accounts among `ids` in sorted id order (the one lock order of the service)
    inside the caller's transaction; {id: (balance, held)}."""
    rows = await conn.fetch(LOCK_OWNED, sorted(set(ids)))
    return {r["id"]: (r["balance"], r["held"]) for r in rows}


async def adjust_held_txn(conn: Conn, wallet_id: uuid.UUID, delta: int) -> tuple[int, int]:
    """Move a wallet's held amount by `delta` in the caller's transaction, after `lock_owned_txn`.
    Raises `InsufficientFunds` when the wallet cannot hold that much; returns (balance, held)."""
    try:
        row = await conn.fetchrow(ADJUST_HELD, wallet_id, delta)
    except asyncpg.CheckViolationError as exc:
        if _is_wallet_check(exc):
            raise InsufficientFunds() from exc
        raise
    assert row is not None
    return row["balance"], row["held"]


# --- The meter's batch path -----------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """One minute's transfer. Its value (`amount + free_amount`, the list rate: billing/rules.py)
    is funded by the wallet (`amount`, what the user pays) and the promotions account
    (`free_amount`, exactly the discount) -- either may be 0, so a minute can be paid partly by
    each -- and received by the astrologer (`astrologer_share`) and platform revenue (the rest)."""

    key: str  # "charge:{consultation_id}:{minute}"
    consultation_id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    amount: int  # what the user pays for this minute, from the wallet (0 for a free minute)
    astrologer_share: int  # what the astrologer earns for this minute
    free_amount: int = 0  # the part funded from the promotions account (the discount)
    currency: str = "INR"


@dataclass(frozen=True)
class ChargeResult:
    key: str
    status: Literal["posted", "duplicate", "insufficient"]
    balance_after: int  # the user's wallet balance after this charge (or now, if not posted)
    available_after: int = 0  # what the user can still spend: balance_after - held


class _LostRace(Exception):
    """A key of the batch was committed by another process after we looked: retry the batch."""


FIND_OWNED = """
SELECT kind, owner_id, currency, id FROM accounts
 WHERE kind = ANY($1::text[]) AND owner_id = ANY($2::uuid[])
"""
ENSURE_OWNED = """
INSERT INTO accounts (kind, owner_id, currency)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[])
ON CONFLICT (kind, owner_id, currency) DO NOTHING
"""
FIND_POSTED = """
SELECT idempotency_key, request_hash FROM transfers WHERE idempotency_key = ANY($1::text[])
"""
INSERT_TRANSFERS = """
INSERT INTO transfers (idempotency_key, request_hash, kind, consultation_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[])
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key, id
"""
INSERT_ENTRIES = """
INSERT INTO entries (transfer_id, account_id, amount, balance_after)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[])
"""
APPLY_OWNED = """
UPDATE accounts a SET balance = a.balance + d.amount, updated_at = now()
  FROM unnest($1::uuid[], $2::bigint[]) AS d(id, amount)
 WHERE a.id = d.id
RETURNING a.id, a.balance
"""


def _check_charge(charge: Charge) -> None:
    if charge.amount < 0 or charge.astrologer_share < 0 or charge.free_amount < 0:
        raise ValueError(f"{charge.key}: amounts must not be negative")
    if charge.astrologer_share > charge.amount + charge.free_amount:
        raise ValueError(f"{charge.key}: the share cannot exceed the minute's price")


async def post_charges(conn: Conn, charges: Sequence[Charge]) -> list[ChargeResult]:
    """Post many per-minute charges in ONE transaction, results in the order given.

    Each minute: wallet -amount, promotions -free_amount, astrologer earnings +share, platform
    revenue +(amount + free_amount - share); zero legs are left out. Its kind is
    `consultation_charge` when the wallet pays some of it, `free_minute` otherwise.
    Every wallet and earnings account involved is locked in sorted id order; a charge the wallet
    cannot cover (available = balance - held) is `insufficient` and moves nothing, without
    failing the others; a key already posted (or repeated in the batch) is `duplicate` and moves
    nothing again. A posted key with other content is also reported `duplicate` (the minute was
    charged once; the money stays as first posted) and logged as an error.
    Uses the caller's transaction when there is one (a savepoint)."""
    if not charges:
        return []
    for charge in charges:
        _check_charge(charge)
    for _ in range(BATCH_ATTEMPTS):
        try:
            async with conn.transaction():
                await custom_plans(conn)  # issue 15: scoped here, not per connection (db/pool.py)
                return await _post_charges_txn(conn, charges)
        except _LostRace:
            continue
    raise RuntimeError("post_charges kept losing races on its keys")


async def _resolve_owned(
    conn: Conn, charges: Sequence[Charge]
) -> dict[tuple[str, uuid.UUID, str], uuid.UUID]:
    """{(kind, owner, currency): account id} of the batch's wallets (existing ones only: a missing
    wallet has nothing to pay with) and earnings accounts (created when missing)."""
    owners = list({c.user_id for c in charges} | {c.astrologer_id for c in charges})
    kinds = list(OWNED_KINDS)
    found = {
        (r["kind"], r["owner_id"], r["currency"]): r["id"]
        for r in await conn.fetch(FIND_OWNED, kinds, owners)
    }
    missing = {
        ("astrologer_earnings", c.astrologer_id, c.currency)
        for c in charges
        if ("astrologer_earnings", c.astrologer_id, c.currency) not in found
    }
    if missing:
        rows = sorted(missing, key=str)
        await conn.execute(
            ENSURE_OWNED, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        )
        found = {
            (r["kind"], r["owner_id"], r["currency"]): r["id"]
            for r in await conn.fetch(FIND_OWNED, kinds, owners)
        }
    return found


async def _post_charges_txn(conn: Conn, charges: Sequence[Charge]) -> list[ChargeResult]:
    owned = await _resolve_owned(conn, charges)
    system: dict[tuple[str, str], uuid.UUID] = {}
    for currency in sorted({c.currency for c in charges}):
        for kind in ("platform_revenue", "promotions"):
            system[(kind, currency)] = await account_id(conn, kind, None, currency)

    locked = await lock_owned_txn(conn, list(owned.values()))
    balance = {acc: bal for acc, (bal, _) in locked.items()}
    held = {acc: h for acc, (_, h) in locked.items()}
    posted = {
        r["idempotency_key"]: r["request_hash"]
        for r in await conn.fetch(FIND_POSTED, [c.key for c in charges])
    }

    results: list[ChargeResult] = []
    t_keys: list[str] = []
    t_hashes: list[str] = []
    t_kinds: list[str] = []
    t_consultations: list[uuid.UUID] = []
    e_keys: list[str] = []
    e_accounts: list[uuid.UUID] = []
    e_amounts: list[int] = []
    e_after: list[int | None] = []
    deltas: dict[uuid.UUID, int] = {}
    for c in charges:
        wallet = owned.get(("user_wallet", c.user_id, c.currency))
        earnings = owned[("astrologer_earnings", c.astrologer_id, c.currency)]
        revenue = system[("platform_revenue", c.currency)]
        wallet_now = balance.get(wallet, 0) if wallet else 0
        wallet_held = held.get(wallet, 0) if wallet else 0
        kind = CHARGE_KIND if c.amount else FREE_MINUTE_KIND
        price = c.amount + c.free_amount
        legs: list[tuple[uuid.UUID | None, int]] = [
            (wallet, -c.amount),
            (system[("promotions", c.currency)], -c.free_amount),
            (earnings, c.astrologer_share),
            (revenue, price - c.astrologer_share),
        ]
        legs = [(acc, amount) for acc, amount in legs if amount != 0]
        if any(acc is None for acc, _ in legs):
            # Only a wallet can be missing: a user who never had money cannot pay a paid minute.
            # (A zero-priced minute has no legs: its transfer is recorded with no entries.)
            results.append(
                ChargeResult(c.key, "insufficient", wallet_now, wallet_now - wallet_held)
            )
            continue
        clean = [Leg(acc, amount) for acc, amount in legs if acc is not None]
        digest = request_hash(kind, clean, c.consultation_id)
        if c.key in posted:
            if posted[c.key] != digest:
                log.error(
                    "charge key reposted with other content; kept the first posting",
                    extra={"key": c.key},
                )
            results.append(ChargeResult(c.key, "duplicate", wallet_now, wallet_now - wallet_held))
            continue
        if c.amount and wallet is not None and wallet_now - wallet_held < c.amount:
            results.append(
                ChargeResult(c.key, "insufficient", wallet_now, wallet_now - wallet_held)
            )
            continue
        posted[c.key] = digest
        t_keys.append(c.key)
        t_hashes.append(digest)
        t_kinds.append(kind)
        t_consultations.append(c.consultation_id)
        for leg in clean:
            after: int | None = None
            if leg.account_id in balance:
                balance[leg.account_id] += leg.amount
                deltas[leg.account_id] = deltas.get(leg.account_id, 0) + leg.amount
                after = balance[leg.account_id]
            e_keys.append(c.key)
            e_accounts.append(leg.account_id)
            e_amounts.append(leg.amount)
            e_after.append(after)
        wallet_after = balance.get(wallet, 0) if wallet else wallet_now
        results.append(ChargeResult(c.key, "posted", wallet_after, wallet_after - wallet_held))

    if not t_keys:
        return results
    inserted = await conn.fetch(INSERT_TRANSFERS, t_keys, t_hashes, t_kinds, t_consultations)
    if len(inserted) != len(t_keys):
        raise _LostRace()
    transfer_ids = {r["idempotency_key"]: r["id"] for r in inserted}
    if e_keys:
        await conn.execute(
            INSERT_ENTRIES, [transfer_ids[k] for k in e_keys], e_accounts, e_amounts, e_after
        )
    moved = [acc for acc, delta in deltas.items() if delta != 0]
    if moved:
        try:
            rows = await conn.fetch(APPLY_OWNED, moved, [deltas[a] for a in moved])
        except asyncpg.CheckViolationError as exc:  # pragma: no cover - the plan checked funds
            if _is_wallet_check(exc):
                raise InsufficientFunds() from exc
            raise
        for r in rows:
            assert r["balance"] == balance[r["id"]], "batch balance drifted from its plan"
    return results


# --- System balances -------------------------------------------------------------------------

ROLLUP_SYSTEM = """
WITH moved AS (
    DELETE FROM ledger_system_deltas RETURNING account_id, amount
), sums AS (
    SELECT account_id, sum(amount)::bigint AS amount FROM moved GROUP BY account_id
)
UPDATE accounts a SET balance = a.balance + sums.amount, updated_at = now()
  FROM sums
 WHERE a.id = sums.account_id
RETURNING a.id, a.kind, a.currency, a.balance
"""


@dataclass(frozen=True)
class SystemBalance:
    account_id: uuid.UUID
    kind: str
    currency: str
    balance: int


async def rollup_system_balances(conn: Conn) -> list[SystemBalance]:
    """Fold the queued deltas of the system accounts into their balances, once each. Safe to run
    concurrently and at any time; returns the accounts it moved."""
    async with conn.transaction():
        rows = await conn.fetch(ROLLUP_SYSTEM)
    return [SystemBalance(r["id"], r["kind"], r["currency"].strip(), r["balance"]) for r in rows]


SYSTEM_BALANCES = """
SELECT a.id, a.kind, a.currency,
       a.balance + coalesce((SELECT sum(d.amount) FROM ledger_system_deltas d
                              WHERE d.account_id = a.id), 0)::bigint AS balance
  FROM accounts a
 WHERE a.owner_id IS NULL
 ORDER BY a.kind, a.currency
"""


async def system_balances(conn: Conn) -> list[SystemBalance]:
    """Current balances of the system accounts, including deltas not rolled up yet."""
    rows = await conn.fetch(SYSTEM_BALANCES)
    return [SystemBalance(r["id"], r["kind"], r["currency"].strip(), r["balance"]) for r in rows]
