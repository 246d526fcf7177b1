"""Promo codes and the free first consultation: what a consultation costs, frozen on it.

Redemption is counted by one conditional UPDATE of the promo row (`used_count < max_uses`), which
also locks that row until the caller's transaction ends, so the per-user count read right after is
exact: two users racing for the last use leave one redemption, the other gets 422 invalid_promo.
A consultation that closes without ever starting gives its redemption and its free-consultation
claims back (`release_txn`), in the transaction of that transition.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from billing import rules
from core.errors import AppError, Conflict
from core.settings import Settings
from db.pool import Conn

PromoKind = Literal["percent", "flat", "free_minutes"]


class InvalidPromo(AppError):
    status, code, message = 422, "invalid_promo", "this promo code cannot be used"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason


class PromoExists(Conflict):
    code, message = "promo_exists", "a promo code with this code already exists"


@dataclass(frozen=True)
class Promo:
    id: uuid.UUID
    code: str
    kind: str
    value: int
    max_uses: int | None
    per_user: int
    valid_from: datetime
    valid_until: datetime | None
    first_consultation_only: bool
    used_count: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Promo:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "code": self.code,
            "kind": self.kind,
            "value": self.value,
            "max_uses": self.max_uses,
            "per_user": self.per_user,
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "first_consultation_only": self.first_consultation_only,
            "used_count": self.used_count,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Terms:
    """What a consultation costs, frozen on it when it is requested or booked."""

    list_rate: int  # the astrologer's rate a minute
    rate: int  # what the user pays a minute (after a percent promo)
    free_minutes: int
    promo_credit: int  # a flat promo: paid by the promotions account first
    promo_id: uuid.UUID | None
    free_claims: tuple[str, ...]  # free-first-consultation claims to record, if granted

    def money(
        self, share_percent: int, currency: str, max_minutes: int | None = None
    ) -> rules.Terms:
        """The money rules' view of these terms (billing/rules.py prices every minute from it)."""
        return rules.Terms(
            self.list_rate, self.rate, share_percent, self.free_minutes, self.promo_credit,
            currency, max_minutes,
        )  # fmt: skip


PROMO_COLUMNS = (
    "id, code, kind, value, max_uses, per_user, valid_from, valid_until, "
    "first_consultation_only, used_count, created_at"
)
INSERT_PROMO = f"""
INSERT INTO promo_codes (code, kind, value, max_uses, per_user, valid_from, valid_until,
                         first_consultation_only, created_by)
VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), $7, $8, $9)
RETURNING {PROMO_COLUMNS}
"""
AUDIT_PROMO = """
INSERT INTO audit_log (actor_id, action, target_type, target_id, details)
VALUES ($1, 'create_promo', 'promo_code', $2, $3)
"""
# The one statement that counts a use: valid now and not exhausted, or no row.
CLAIM_PROMO = f"""
UPDATE promo_codes SET used_count = used_count + 1
 WHERE code = $1 AND valid_from <= now() AND (valid_until IS NULL OR valid_until > now())
   AND (max_uses IS NULL OR used_count < max_uses)
RETURNING {PROMO_COLUMNS}
"""
GET_PROMO_BY_CODE = f"SELECT {PROMO_COLUMNS} FROM promo_codes WHERE code = $1"
USER_REDEMPTIONS = "SELECT count(*) FROM promo_redemptions WHERE promo_id = $1 AND user_id = $2"
# A "first consultation" is the first that ever started (accepted requests that never started and
# cancelled bookings do not count).
HAS_STARTED_ONE = """
SELECT EXISTS (SELECT 1 FROM consultations WHERE user_id = $1 AND started_at IS NOT NULL)
"""
INSERT_REDEMPTION = """
INSERT INTO promo_redemptions (promo_id, user_id, consultation_id) VALUES ($1, $2, $3)
"""
RELEASE_REDEMPTION = """
WITH gone AS (DELETE FROM promo_redemptions WHERE consultation_id = $1 RETURNING promo_id)
UPDATE promo_codes SET used_count = used_count - 1 WHERE id IN (SELECT promo_id FROM gone)
"""
USER_PHONE = "SELECT phone FROM users WHERE id = $1"
USER_DEVICE_TOKENS = "SELECT push_token FROM devices WHERE user_id = $1"
ANY_CLAIMED = "SELECT EXISTS (SELECT 1 FROM free_consultation_claims WHERE claim = ANY($1::text[]))"
INSERT_CLAIMS = """
INSERT INTO free_consultation_claims (claim, consultation_id)
SELECT unnest($1::text[]), $2
"""
RELEASE_CLAIMS = "DELETE FROM free_consultation_claims WHERE consultation_id = $1"


def normalise_code(code: str) -> str:
    return code.strip().upper()


async def create(
    conn: Conn,
    *,
    code: str,
    kind: PromoKind,
    value: int,
    max_uses: int | None,
    per_user: int,
    valid_from: datetime | None,
    valid_until: datetime | None,
    first_consultation_only: bool,
    created_by: uuid.UUID,
) -> Promo:
    """Create a code (admin); the creation is written to the audit log in the same transaction."""
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                INSERT_PROMO,
                normalise_code(code),
                kind,
                value,
                max_uses,
                per_user,
                valid_from,
                valid_until,
                first_consultation_only,
                created_by,
            )
        except asyncpg.UniqueViolationError as exc:
            raise PromoExists() from exc
        assert row is not None
        promo = Promo.from_row(row)
        await conn.execute(
            AUDIT_PROMO,
            created_by,
            str(promo.id),
            {"code": promo.code, "kind": kind, "value": value},
        )
    return promo


async def _why_not(conn: Conn, code: str) -> InvalidPromo:
    row = await conn.fetchrow(GET_PROMO_BY_CODE, code)
    if row is None:
        return InvalidPromo("unknown", "no such promo code")
    promo = Promo.from_row(row)
    now = await conn.fetchval("SELECT now()")
    if promo.valid_from > now:
        return InvalidPromo("not_yet_valid", "this promo code is not valid yet")
    if promo.valid_until is not None and promo.valid_until <= now:
        return InvalidPromo("expired", "this promo code has expired")
    return InvalidPromo("exhausted", "this promo code has been used up")


async def claim_txn(conn: Conn, code: str, user_id: uuid.UUID) -> Promo:
    """Count one use of `code` by `user_id`, or raise InvalidPromo. Must run inside the caller's
    transaction (a raise rolls the count back); `record_txn` then ties it to the consultation."""
    code = normalise_code(code)
    row = await conn.fetchrow(CLAIM_PROMO, code)
    if row is None:
        raise await _why_not(conn, code)
    promo = Promo.from_row(row)
    if await conn.fetchval(USER_REDEMPTIONS, promo.id, user_id) >= promo.per_user:
        raise InvalidPromo("per_user_limit", "you have already used this promo code")
    if promo.first_consultation_only and await conn.fetchval(HAS_STARTED_ONE, user_id):
        raise InvalidPromo("first_consultation_only", "this code is for a first consultation")
    return promo


async def _free_claims(conn: Conn, user_id: uuid.UUID) -> tuple[str, ...]:
    phone = await conn.fetchval(USER_PHONE, user_id)
    tokens = [r["push_token"] for r in await conn.fetch(USER_DEVICE_TOKENS, user_id)]
    claims = [f"user:{user_id}", f"phone:{phone}"]
    claims += ["device:" + hashlib.sha256(t.encode()).hexdigest() for t in tokens]
    return tuple(claims)


async def terms_txn(
    conn: Conn,
    settings: Settings,
    *,
    user_id: uuid.UUID,
    list_rate: int,
    promo_code: str | None,
) -> Terms:
    """Price a new consultation: the promo (claimed now, inside the caller's transaction) and the
    free first consultation when the policy grants one and nobody claimed it for this person,
    phone or device before."""
    rate, free_minutes, credit, promo_id = list_rate, 0, 0, None
    if promo_code:
        promo = await claim_txn(conn, promo_code, user_id)
        promo_id = promo.id
        if promo.kind == "percent":
            rate = rules.discounted_rate(list_rate, promo.value)
        elif promo.kind == "flat":
            credit = promo.value
        else:
            free_minutes += promo.value
    claims: tuple[str, ...] = ()
    if settings.free_first_consultation_minutes > 0 and not await conn.fetchval(
        HAS_STARTED_ONE, user_id
    ):
        candidate = await _free_claims(conn, user_id)
        if not await conn.fetchval(ANY_CLAIMED, list(candidate)):
            claims = candidate
            free_minutes += settings.free_first_consultation_minutes
    return Terms(list_rate, rate, free_minutes, credit, promo_id, claims)


async def record_txn(
    conn: Conn, terms: Terms, *, user_id: uuid.UUID, consultation_id: uuid.UUID
) -> None:
    """Tie the promo use and the free claims to the new consultation row (same transaction).
    A claim taken meanwhile by a concurrent request is a unique violation: the caller's
    transaction fails and the request can simply be retried (it will then be priced without)."""
    if terms.promo_id is not None:
        await conn.execute(INSERT_REDEMPTION, terms.promo_id, user_id, consultation_id)
    if terms.free_claims:
        await conn.execute(INSERT_CLAIMS, list(terms.free_claims), consultation_id)


async def release_txn(conn: Conn, consultation_id: uuid.UUID) -> None:
    """Give back the promo use and the free claims of a consultation that never started."""
    await conn.execute(RELEASE_REDEMPTION, consultation_id)
    await conn.execute(RELEASE_CLAIMS, consultation_id)
