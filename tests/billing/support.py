"""Helpers of the ledger tests: users with wallets, consultations to charge, money in and out.

Money enters a wallet as a real recharge does: a transfer from the gateway clearing account.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from billing.ledger import Charge, Leg, Transfer, account_id, post_transfer
from billing.reconcile import reconcile
from db.pool import Conn
from tests.factories import make_astrologer, make_user


async def recharge(conn: Conn, user_id: uuid.UUID, amount: int, key: str | None = None) -> Transfer:
    wallet = await account_id(conn, "user_wallet", user_id)
    clearing = await account_id(conn, "gateway_clearing", None)
    return await post_transfer(
        conn,
        key=key or f"recharge:test:{uuid.uuid4()}",
        kind="test_recharge",  # not "recharge": payments reconciles those against recharges
        legs=[Leg(clearing, -amount), Leg(wallet, amount)],
    )


async def make_consultation(
    db: asyncpg.Pool[Any], user_id: uuid.UUID, astrologer_id: uuid.UUID, rate: int = 100
) -> uuid.UUID:
    found = await db.fetchval(
        "INSERT INTO consultations (user_id, astrologer_id, type, status, rate, share_percent)"
        " VALUES ($1, $2, 'chat', 'requested', $3, 60) RETURNING id",
        user_id,
        astrologer_id,
        rate,
    )
    assert isinstance(found, uuid.UUID)
    return found


class Session:
    """A user with a funded wallet, an astrologer and a consultation between them."""

    def __init__(
        self, user: uuid.UUID, astrologer: uuid.UUID, consultation: uuid.UUID, wallet: uuid.UUID
    ) -> None:
        self.user, self.astrologer, self.consultation, self.wallet = (
            user,
            astrologer,
            consultation,
            wallet,
        )

    def charge(self, minute: int, amount: int = 100, share: int = 60, free: int = 0) -> Charge:
        return Charge(
            key=f"charge:{self.consultation}:{minute}",
            consultation_id=self.consultation,
            user_id=self.user,
            astrologer_id=self.astrologer,
            amount=amount,
            astrologer_share=share,
            free_amount=free,
        )


async def make_session(db: asyncpg.Pool[Any], funded: int = 0) -> Session:
    user = await make_user(db)
    astro = await make_astrologer(db)
    consultation = await make_consultation(db, user.id, astro.id)
    async with db.acquire() as conn:
        wallet = await account_id(conn, "user_wallet", user.id)
        if funded:
            await recharge(conn, user.id, funded)
    return Session(user.id, astro.id, consultation, wallet)


async def balance_of(db: asyncpg.Pool[Any], account: uuid.UUID) -> tuple[int, int]:
    row = await db.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account)
    assert row is not None
    return row["balance"], row["held"]


# Checks of what charges MEAN (their price against the consultation's terms, the consultation's
# totals): the ledger tests post synthetic charges on purpose, so only the ledger's own
# invariants apply to them. tests/billing/test_reconcile.py covers these checks.
SEMANTIC_CHECKS = ("charge_terms", "consultation_totals")


async def assert_ledger_ok(db: asyncpg.Pool[Any]) -> None:
    async with db.acquire() as conn:
        report = await reconcile(conn, skip=SEMANTIC_CHECKS)
    assert report.ok, report.findings
