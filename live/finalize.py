"""Finalizing a stopped session (the last step of `live/`): the consultation completed from
the ledger's totals, automatic refunds, receipts, the astrologer freed and the waitlist offered.
Safe to run any number of times and from any process (the arq job `finalize_consultation`, the
web process that stopped the meter, the recovery sweep): the `meters` row is locked and
`finalized_at` says it was done.

Automatic refund rules are configuration (`AUTO_REFUND_RULES`): `cause:max_billed_minutes:percent`
items, the first matching rule applies. Causes: `astrologer_ended`, `astrologer_disconnected`,
`user_ended`, `user_disconnected`, `insufficient_balance`, `max_duration`, `any`.
Default: a session the astrologer ended, or left, within its first minute is refunded in full.
After the stop the astrologer is offered to their waitlist through presence (going back online).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from billing.refunds import RefundExceedsCharged, refund_consultation
from billing.rules import refund_amount
from consultations.lifecycle import Consultation, complete, publish
from core.services import Services
from db.pool import Conn
from notify import enqueue_delivery, record_txn

log = logging.getLogger(__name__)

CAUSES = frozenset(
    {
        "astrologer_ended",
        "astrologer_disconnected",
        "user_ended",
        "user_disconnected",
        "insufficient_balance",
        "max_duration",
        "any",
    }
)


@dataclass(frozen=True)
class RefundRule:
    cause: str
    max_billed_minutes: int
    percent: int

    @property
    def name(self) -> str:
        return f"{self.cause}:{self.max_billed_minutes}:{self.percent}"


def parse_refund_rules(items: list[str]) -> list[RefundRule]:
    """`["astrologer_ended:1:100", ...]` as rules; ValueError names the first bad item."""
    rules = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in CAUSES:
            raise ValueError(f"AUTO_REFUND_RULES item {item!r} is not cause:minutes:percent")
        try:
            minutes, percent = int(parts[1]), int(parts[2])
        except ValueError as exc:
            raise ValueError(f"AUTO_REFUND_RULES item {item!r}: numbers expected") from exc
        if minutes < 0 or not 0 < percent <= 100:
            raise ValueError(f"AUTO_REFUND_RULES item {item!r}: minutes >= 0, 0 < percent <= 100")
        rules.append(RefundRule(parts[0], minutes, percent))
    return rules


def cause_of(reason: str, party: str | None) -> str:
    """The refund cause of a stop: who ended or who was gone, and how."""
    if reason == "disconnected":
        return f"{party}_disconnected"
    return reason


def matching_rule(rules: list[RefundRule], cause: str, billed_minutes: int) -> RefundRule | None:
    for rule in rules:
        if rule.cause in (cause, "any") and billed_minutes <= rule.max_billed_minutes:
            return rule
    return None


LOCK_METER = """
SELECT m.consultation_id, m.started_at, m.stopped_at, m.stop_reason, m.stop_party,
       m.charged_minutes, m.charged_amount, m.finalized_at,
       c.user_id, c.astrologer_id, c.type, c.currency, c.status
  FROM meters m JOIN consultations c ON c.id = m.consultation_id
 WHERE m.consultation_id = $1
   FOR UPDATE OF m
"""
# The ledger is the truth: the charged minutes are the consultation's `charge:{id}:{n}` transfers
# (a zero-priced minute has a transfer and no entries); the total is what the wallet paid; the
# earnings what the astrologer's account received from them. Only minutes up to the meter's
# `charged_minutes` count: a minute charged past the stop (it must not happen) was refunded by
# the stop (live.meter) and is not part of the bill.
LEDGER_TOTALS = """
SELECT count(*)::int AS minutes,
       coalesce(sum(w.paid), 0)::bigint AS charged,
       coalesce(sum(w.earned), 0)::bigint AS earned
  FROM transfers t
  LEFT JOIN LATERAL (
        SELECT sum(-e.amount) FILTER (WHERE a.kind = 'user_wallet') AS paid,
               sum(e.amount) FILTER (WHERE a.kind = 'astrologer_earnings') AS earned
          FROM entries e JOIN accounts a ON a.id = e.account_id
         WHERE e.transfer_id = t.id) w ON true
 WHERE t.consultation_id = $1 AND t.idempotency_key LIKE $2
   AND split_part(t.idempotency_key, ':', 3)::int <= $3
"""
MARK_FINALIZED = "UPDATE meters SET finalized_at = now() WHERE consultation_id = $1"
NAMES = """
SELECT (SELECT display_name FROM astrologer_profiles WHERE user_id = $2) AS astrologer_name,
       (SELECT name FROM users WHERE id = $1) AS user_name
"""
INSERT_REFUND_EVENT = """
INSERT INTO meter_events (consultation_id, kind, amount, reason, details)
VALUES ($1, 'refund', $2, $3, $4)
"""


@dataclass(frozen=True)
class Finalized:
    consultation: Consultation | None  # None when it had been completed before
    consultation_id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    billed_minutes: int
    total_charged: int
    refunded: int
    notifications: list[uuid.UUID]


async def finalize(services: Services, consultation_id: uuid.UUID) -> Finalized | None:
    """Complete a stopped session once. None when there is nothing to do (not stopped yet, or
    finalized before)."""
    rules = parse_refund_rules(services.settings.auto_refund_rules)
    async with services.db.acquire() as conn, conn.transaction():
        m = await conn.fetchrow(LOCK_METER, consultation_id)
        if m is None or m["stopped_at"] is None or m["finalized_at"] is not None:
            return None
        prefix = f"charge:{consultation_id}:%"
        totals = await conn.fetchrow(LEDGER_TOTALS, consultation_id, prefix, m["charged_minutes"])
        assert totals is not None
        billed, charged, earned = totals["minutes"], totals["charged"], totals["earned"]
        if billed != m["charged_minutes"] or charged != m["charged_amount"]:
            log.error(
                "meter and ledger disagree; the ledger wins",
                extra={
                    "id": str(consultation_id),
                    "meter": [m["charged_minutes"], m["charged_amount"]],
                    "ledger": [billed, charged],
                },
            )
        completed = None
        if m["status"] == "active":
            completed = await complete(
                conn,
                consultation_id,
                end_reason=m["stop_reason"],
                ended_at=m["stopped_at"],
                billed_minutes=billed,
                total_charged=charged,
            )
        refunded = await _auto_refund(conn, rules, m, billed, charged)
        await conn.execute(MARK_FINALIZED, consultation_id)
        names = await conn.fetchrow(NAMES, m["user_id"], m["astrologer_id"])
        assert names is not None
        currency = m["currency"].strip()
        notes = [
            await record_txn(
                conn,
                m["user_id"],
                "session_ended",
                {
                    "other_name": names["astrologer_name"] or "your astrologer",
                    "type": m["type"],
                    "minutes": billed,
                    "total": charged - refunded,
                    "currency": currency,
                    "consultation_id": str(consultation_id),
                    "refunded": refunded,
                    "review_prompt": True,  # the app opens the review screen from this receipt
                },
                key=f"session_ended:{consultation_id}",
            ),
            await record_txn(
                conn,
                m["astrologer_id"],
                "session_ended",
                {
                    "other_name": names["user_name"] or "a user",
                    "type": m["type"],
                    "minutes": billed,
                    "total": earned,  # the astrologer's receipt is their earnings
                    "currency": currency,
                    "consultation_id": str(consultation_id),
                },
                key=f"session_earnings:{consultation_id}",
            ),
        ]
    done = Finalized(
        completed,
        consultation_id,
        m["user_id"],
        m["astrologer_id"],
        billed,
        charged,
        refunded,
        [n for n in notes if n is not None],
    )
    await _after_finalize(services, done)
    return done


async def _auto_refund(
    conn: Conn, rules: list[RefundRule], m: Any, billed: int, charged: int
) -> int:
    cause = cause_of(m["stop_reason"], m["stop_party"])
    rule = matching_rule(rules, cause, billed)
    if rule is None or charged <= 0:
        return 0
    amount = refund_amount(charged, rule.percent)
    if amount <= 0:
        return 0
    reason = f"automatic refund ({rule.name}): {cause} after {billed} min"
    try:
        refund = await refund_consultation(
            conn,
            consultation_id=m["consultation_id"],
            amount=amount,
            reason=reason,
            actor_id=None,
            key=f"auto:{rule.cause}:{m['consultation_id']}",
        )
    except RefundExceedsCharged:
        return 0  # refunded by hand already
    await conn.execute(
        INSERT_REFUND_EVENT,
        m["consultation_id"],
        refund.amount,
        reason,
        {"rule": rule.name, "refund_id": str(refund.id)},
    )
    return refund.amount


async def _after_finalize(services: Services, done: Finalized) -> None:
    """After the commit: deliveries queued, both sides told (`consultation:updated`), and the
    astrologer free again: presence follows PostgreSQL, and going back online offers the
    astrologer to the next in their waitlist (consultations.presence). Best effort: a lost step
    is repaired by its owner's sweep (notifications, presence)."""
    for notification_id in done.notifications:
        await enqueue_delivery(services, notification_id)
    if done.consultation is None:
        return
    try:
        await publish(services, done.consultation)
    except Exception:
        log.exception("could not publish the completion", extra={"id": str(done.consultation_id)})
