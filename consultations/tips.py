"""Tips: a user thanks the astrologer of a session with money from the wallet.

A tip is taken while the consultation is `active`, or up to TIP_WINDOW_HOURS (24) after it
completed; between 100 minor units and MAX_TIP; and a user's tips of the last 24 hours stay within
MAX_TIPS_PER_DAY. The money moves in ONE ledger transfer (wallet -> the astrologer's earnings and
platform revenue, split by TIP_SHARE_PERCENT through the money rules), in the same transaction as
the tip's row, with the key `tip:{user}:{Idempotency-Key}`: the request's key is its cause, so a
replay, a retry after a lost answer or two racing requests make one tip.

The wallet row is locked first (the ledger's lock order), so two tips of one user queue there:
the daily-limit check and the insert are one critical section, never a check then a write.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from redis.exceptions import RedisError

from billing import rules
from billing.ledger import (
    InsufficientFunds,
    Leg,
    account_id,
    idempotency_conflict,
    lock_owned_txn,
    post_transfer,
)
from consultations import lifecycle
from core import events
from core.errors import AppError, NotFound, ValidationFailed
from core.services import Services
from db.pool import Conn

log = logging.getLogger(__name__)

MIN_TIP = 100  # ₹1.00: smaller amounts cost more to handle than they give (API.md)
TIP_KIND = "tip"
SESSION_TIP_EVENT = events.SessionTip.name


class TipLimitReached(AppError):
    status, code, message = (
        409,
        "tip_limit_reached",
        "your tips of the last 24 hours reach the limit",
    )


@dataclass(frozen=True)
class Tip:
    id: uuid.UUID
    consultation_id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    amount: int
    astrologer_part: int
    currency: str
    transfer_id: uuid.UUID
    created_at: datetime
    replayed: bool = False

    @classmethod
    def from_row(cls, row: asyncpg.Record, replayed: bool = False) -> Tip:
        return cls(
            id=row["id"],
            consultation_id=row["consultation_id"],
            user_id=row["user_id"],
            astrologer_id=row["astrologer_id"],
            amount=row["amount"],
            astrologer_part=row["astrologer_part"],
            currency=row["currency"].strip(),
            transfer_id=row["transfer_id"],
            created_at=row["created_at"],
            replayed=replayed,
        )


_COLUMNS = """
id, consultation_id, user_id, astrologer_id, amount, astrologer_part, currency, transfer_id,
created_at
"""
GET_BY_KEY = f"SELECT {_COLUMNS} FROM tips WHERE user_id = $1 AND idempotency_key = $2"
TIPPED_LAST_DAY = """
SELECT coalesce(sum(amount), 0)::bigint FROM tips
 WHERE user_id = $1 AND created_at > now() - interval '24 hours'
"""
INSERT_TIP = f"""
INSERT INTO tips (id, consultation_id, user_id, astrologer_id, amount, astrologer_part, currency,
                  idempotency_key, transfer_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING {_COLUMNS}
"""
TIPS_OF = f"SELECT {_COLUMNS} FROM tips WHERE consultation_id = $1 ORDER BY created_at, id"


def ledger_key(user_id: uuid.UUID, idempotency_key: str) -> str:
    """The transfer's key: the request's Idempotency-Key is the tip's cause (hashed: the header
    may be 255 characters of anything)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"tip:{user_id}:{digest}"


def check_tippable(c: lifecycle.Consultation, now: datetime, window_hours: float) -> None:
    """A tip is taken while active, or within the window after completion (409 invalid_state)."""
    if c.status == "active":
        return
    if (
        c.status == "completed"
        and c.ended_at is not None
        and now - c.ended_at <= timedelta(hours=window_hours)
    ):
        return
    raise lifecycle.InvalidState(
        c.status, "tips are taken during a session or within a day after it"
    )


async def give_tip(
    services: Services,
    *,
    consultation_id: uuid.UUID,
    user_id: uuid.UUID,
    amount: int,
    idempotency_key: str,
) -> Tip:
    """The user of `consultation_id` tips its astrologer `amount` from the wallet, once per
    `idempotency_key`. 404 for a consultation that is not the caller's (as its user); 422 for an
    amount outside [100, MAX_TIP]; 409 invalid_state, tip_limit_reached, idempotency_conflict
    (the key was used for another tip); 402 insufficient_balance (spendable = balance - held)."""
    settings = services.settings
    if not MIN_TIP <= amount <= settings.max_tip:
        raise ValidationFailed({"amount": f"between {MIN_TIP} and {settings.max_tip}"})
    if not 1 <= len(idempotency_key) <= 200:
        raise ValidationFailed({"Idempotency-Key": "required, 1 to 200 characters"})
    c = await lifecycle.get(services.db, consultation_id)
    if c is None or c.user_id != user_id:
        raise NotFound("no such consultation")
    async with services.db.acquire() as conn, conn.transaction():
        wallet = await account_id(conn, "user_wallet", user_id, c.currency)
        await lock_owned_txn(conn, [wallet])
        existing = await conn.fetchrow(GET_BY_KEY, user_id, idempotency_key)
        if existing is not None:
            if existing["consultation_id"] != consultation_id or existing["amount"] != amount:
                raise idempotency_conflict()
            return Tip.from_row(existing, replayed=True)
        now = await conn.fetchval("SELECT now()")
        check_tippable(c, now, settings.tip_window_hours)
        if settings.max_tips_per_day:
            used = await conn.fetchval(TIPPED_LAST_DAY, user_id)
            if used + amount > settings.max_tips_per_day:
                raise TipLimitReached(
                    details={"limit": settings.max_tips_per_day, "used": used, "amount": amount}
                )
        tip = await _post_tip_txn(conn, services, c, wallet, amount, idempotency_key)
        notes = await _record_notifications_txn(conn, c, tip)
    await _after_commit(services, c, tip, notes)
    return tip


async def _post_tip_txn(
    conn: Conn,
    services: Services,
    c: lifecycle.Consultation,
    wallet: uuid.UUID,
    amount: int,
    idempotency_key: str,
) -> Tip:
    astro, platform = rules.tip_split(amount, services.settings.tip_share_percent)
    legs = [Leg(wallet, -amount)]
    if astro:
        legs.append(
            Leg(await account_id(conn, "astrologer_earnings", c.astrologer_id, c.currency), astro)
        )
    if platform:
        legs.append(Leg(await account_id(conn, "platform_revenue", None, c.currency), platform))
    tip_id = uuid.uuid4()
    try:
        transfer = await post_transfer(
            conn,
            key=ledger_key(c.user_id, idempotency_key),
            kind=TIP_KIND,
            legs=legs,
            consultation_id=c.id,
            actor_id=c.user_id,
            reason="tip",
            metadata={"tip_id": str(tip_id)},
        )
    except InsufficientFunds as exc:
        raise InsufficientFunds(
            "the wallet does not cover this tip", details={"amount": amount}
        ) from exc
    row = await conn.fetchrow(
        INSERT_TIP, tip_id, c.id, c.user_id, c.astrologer_id, amount, astro, c.currency,
        idempotency_key, transfer.id,
    )  # fmt: skip
    assert row is not None
    return Tip.from_row(row)


async def _record_notifications_txn(
    conn: Conn, c: lifecycle.Consultation, tip: Tip
) -> list[uuid.UUID]:
    """The astrologer's notification and the user's receipt, in the tip's transaction (an
    outbox: the worker's sweep delivers them even if the enqueue after the commit is lost)."""
    from notify import record_txn

    data = {"consultation_id": str(c.id), "currency": tip.currency, "tip_id": str(tip.id)}
    notes = [
        await record_txn(
            conn,
            c.astrologer_id,
            "tip_received",
            {**data, "amount": tip.astrologer_part, "user_name": c.user_name or "A user"},
            key=f"tip_received:{tip.id}",
        ),
        await record_txn(
            conn,
            c.user_id,
            "tip_sent",
            {
                **data,
                "amount": tip.amount,
                "astrologer_name": c.astrologer_name or "your astrologer",
            },
            key=f"tip_sent:{tip.id}",
        ),
    ]
    return [n for n in notes if n is not None]


async def _after_commit(
    services: Services, c: lifecycle.Consultation, tip: Tip, notes: list[uuid.UUID]
) -> None:
    from notify import enqueue_delivery

    try:
        await events.send(  # issue 15: typed events (core/events.py)
            services.emitter,
            events.SessionTip(
                consultation_id=str(c.id),
                amount=tip.amount,
                earned=tip.astrologer_part,
                currency=tip.currency,
            ),
            events.Room.user(c.astrologer_id),
        )
        for note in notes:
            await enqueue_delivery(services, note)
    except (RedisError, OSError):
        # The tip is committed; the inbox has it and the notification sweep delivers it.
        log.warning("tip event not sent", extra={"tip_id": str(tip.id)}, exc_info=True)


async def tips_of(conn: Conn, consultation_id: uuid.UUID) -> list[Tip]:
    return [Tip.from_row(r) for r in await conn.fetch(TIPS_OF, consultation_id)]
