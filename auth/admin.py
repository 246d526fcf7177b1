"""Admin actions of sign-in and onboarding: the verification queue and its decisions, blocking and
unblocking people. Every action writes `audit_log` (who, what, when, why) in its own transaction.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from auth.authenticator import mark_user_blocked
from auth.keys import cognito_user
from auth.profiles import PROFILE_COLUMNS, AstrologerProfile
from auth.sessions import mark_sessions_revoked, revoke_user_sessions_txn
from core.errors import Conflict, NotFound, ValidationFailed
from core.services import Services
from db.pool import Conn, Executor

Verification = Literal["pending", "approved", "rejected"]

INSERT_AUDIT = """
INSERT INTO audit_log (actor_id, action, target_type, target_id, reason, details)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
"""
# The review queue, oldest submission first, keyset-paginated on (updated_at, user_id).
QUEUE = f"""
SELECT {", ".join("p." + c for c in PROFILE_COLUMNS.split(", "))}, u.phone
  FROM astrologer_profiles p JOIN users u ON u.id = p.user_id
 WHERE p.verification = $1
   AND ($2::timestamptz IS NULL OR (p.updated_at, p.user_id) > ($2, $3::uuid))
 ORDER BY p.updated_at, p.user_id
 LIMIT $4
"""
DECIDE = f"""
UPDATE astrologer_profiles
   SET verification = $2, verification_reason = $3,
       verified_at = CASE WHEN $2 = 'approved' THEN now() END, updated_at = now()
 WHERE user_id = $1
RETURNING {PROFILE_COLUMNS}
"""
SET_STATUS = """
UPDATE users SET status = $2, updated_at = now() WHERE id = $1 AND role <> 'admin'
RETURNING cognito_sub
"""
USER_EXISTS = "SELECT role FROM users WHERE id = $1"


async def audit_txn(
    conn: Executor,
    actor_id: uuid.UUID,
    action: str,
    target_type: str,
    target_id: uuid.UUID | str,
    reason: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """One audit row; run it in the transaction of the action it records."""
    await conn.execute(
        INSERT_AUDIT,
        actor_id,
        action,
        target_type,
        str(target_id),
        reason,
        json.dumps(details or {}),
    )


@dataclass(frozen=True)
class QueueItem:
    profile: AstrologerProfile
    phone: str


async def verification_queue(
    conn: Executor,
    verification: Verification,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[QueueItem]:
    rows = await conn.fetch(
        QUEUE, verification, after[0] if after else None, after[1] if after else None, limit
    )
    return [QueueItem(AstrologerProfile.from_row(r), r["phone"]) for r in rows]


async def decide_verification(
    services: Services,
    actor_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    decision: Literal["approve", "reject"],
    reason: str | None,
) -> AstrologerProfile:
    """Approve or reject an astrologer (a rejection needs a reason the astrologer will read)."""
    if decision == "reject" and not reason:
        raise ValidationFailed({"reason": "a rejection needs a reason"})
    state = "approved" if decision == "approve" else "rejected"
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(DECIDE, astrologer_id, state, reason)
        if row is None:
            raise NotFound("no such astrologer profile")
        await audit_txn(
            conn, actor_id, f"astrologer.{decision}", "astrologer", astrologer_id, reason
        )
    return AstrologerProfile.from_row(row)


async def _set_status_txn(
    conn: Conn, actor_id: uuid.UUID, user_id: uuid.UUID, status: str, reason: str
) -> tuple[str | None, list[uuid.UUID]]:
    if actor_id == user_id:
        raise Conflict("admins cannot block themselves", code="cannot_block_self")
    role = await conn.fetchval(USER_EXISTS, user_id)
    if role is None:
        raise NotFound("no such user")
    if role == "admin":
        raise Conflict("admins are managed from the command line", code="cannot_block_admin")
    row = await conn.fetchrow(SET_STATUS, user_id, status)
    assert row is not None
    revoked = (
        await revoke_user_sessions_txn(conn, user_id, "blocked") if status == "blocked" else []
    )
    action = "user.block" if status == "blocked" else "user.unblock"
    await audit_txn(
        conn, actor_id, action, "user", user_id, reason, {"revoked_logins": len(revoked)}
    )
    return row["cognito_sub"], revoked


async def set_user_blocked(
    services: Services, actor_id: uuid.UUID, user_id: uuid.UUID, blocked: bool, reason: str
) -> None:
    """Block (every login revoked, tokens refused at once) or unblock a person."""
    async with services.db.acquire() as conn, conn.transaction():
        sub, revoked = await _set_status_txn(
            conn, actor_id, user_id, "blocked" if blocked else "active", reason
        )
    await mark_sessions_revoked(services, revoked)
    await mark_user_blocked(services, user_id, blocked)
    if sub:
        await services.redis.delete(cognito_user(sub))
