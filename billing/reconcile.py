"""Reconciliation: check the ledger's invariants and report every break.

Checks (each a read-only query, at most `MAX_FINDINGS` findings each):
- `transfers_balanced`: every transfer's entries sum to zero;
- `ledger_zero_sum`: per currency, all entries together sum to zero;
- `owned_balances`: every wallet / earnings balance equals the sum of its entries;
- `balance_after`: each owned entry's balance_after = the previous one + its amount, and the last
  one equals the account's balance;
- `system_balances`: a system account's balance + its queued deltas = the sum of its entries;
- `no_negative_wallet`: no wallet has balance < 0 or balance - held < 0;
- `held_matches_holds`: every wallet's held = the sum of its open holds;
- plus checks other modules register with `@reconcile_check(name)` (the payments module adds
  "gateway successes = credited recharges"); list such a module in `CHECK_MODULES` so the cron
  and the CLI import it.

`reconcile(conn)` returns a `Report`; it logs each break at error. Metrics are the caller's:
`ReconcileMetrics(registry)` registers its series on the caller's CollectorRegistry (the web app
has one per app) and `record(report)` updates them.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from billing import rules
from db.pool import Conn

log = logging.getLogger(__name__)

MAX_FINDINGS = 100  # per check: enough to act on, never a flood of log lines
# Modules that register extra checks with @reconcile_check; imported by `load_checks`.
CHECK_MODULES: tuple[str, ...] = ("billing.recharges",)


@dataclass(frozen=True)
class Finding:
    check: str
    subject: str  # what is broken: a transfer id, an account id, a currency
    details: dict[str, Any]


@dataclass
class Report:
    checks: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        """Breaks per check, every check that ran included (0 when clean)."""
        out = dict.fromkeys(self.checks, 0)
        for finding in self.findings:
            out[finding.check] = out.get(finding.check, 0) + 1
        return out


Check = Callable[[Conn], Awaitable[list[Finding]]]
CHECKS: dict[str, Check] = {}


def reconcile_check(name: str) -> Callable[[Check], Check]:
    """Register a check: an async function of a connection returning its findings."""

    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return register


def load_checks() -> dict[str, Check]:
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return dict(CHECKS)


def _query_check(name: str, sql: str, subject: str) -> Check:
    async def run(conn: Conn) -> list[Finding]:
        rows = await conn.fetch(sql, MAX_FINDINGS)
        return [
            Finding(name, str(r[subject]), {k: _plain(v) for k, v in r.items() if k != subject})
            for r in rows
        ]

    run.__name__ = f"check_{name}"
    return reconcile_check(name)(run)


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | str | float | None) else str(value)


TRANSFERS_BALANCED = """
SELECT transfer_id, sum(amount)::bigint AS total FROM entries
 GROUP BY transfer_id HAVING sum(amount) <> 0
 LIMIT $1
"""
LEDGER_ZERO_SUM = """
SELECT a.currency, sum(e.amount)::bigint AS total
  FROM entries e JOIN accounts a ON a.id = e.account_id
 GROUP BY a.currency HAVING sum(e.amount) <> 0
 LIMIT $1
"""
OWNED_BALANCES = """
SELECT a.id, a.kind, a.balance, coalesce(s.total, 0)::bigint AS entries_total
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) s
         ON s.account_id = a.id
 WHERE a.owner_id IS NOT NULL AND a.balance <> coalesce(s.total, 0)
 LIMIT $1
"""
BALANCE_AFTER = """
WITH owned AS (
    SELECT e.id, e.account_id, e.amount, e.balance_after, a.balance,
           lag(e.balance_after) OVER w AS previous,
           row_number() OVER (PARTITION BY e.account_id ORDER BY e.id DESC) AS from_last
      FROM entries e JOIN accounts a ON a.id = e.account_id
     WHERE a.owner_id IS NOT NULL
    WINDOW w AS (PARTITION BY e.account_id ORDER BY e.id)
)
SELECT id AS entry_id, account_id, amount, balance_after, previous, balance
  FROM owned
 WHERE balance_after IS NULL
    OR balance_after <> coalesce(previous, 0) + amount
    OR (from_last = 1 AND balance_after <> balance)
 LIMIT $1
"""
SYSTEM_BALANCES = """
SELECT a.id, a.kind, a.balance,
       coalesce(d.total, 0)::bigint AS queued, coalesce(s.total, 0)::bigint AS entries_total
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) s
         ON s.account_id = a.id
  LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_system_deltas
              GROUP BY account_id) d
         ON d.account_id = a.id
 WHERE a.owner_id IS NULL AND a.balance + coalesce(d.total, 0) <> coalesce(s.total, 0)
 LIMIT $1
"""
NO_NEGATIVE_WALLET = """
SELECT id, balance, held FROM accounts
 WHERE kind = 'user_wallet' AND (balance < 0 OR held < 0 OR balance - held < 0)
 LIMIT $1
"""
HELD_MATCHES_HOLDS = """
SELECT a.id, a.held, coalesce(h.total, 0)::bigint AS open_holds
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(amount) AS total FROM holds WHERE status = 'open'
              GROUP BY account_id) h
         ON h.account_id = a.id
 WHERE a.held <> coalesce(h.total, 0)
 LIMIT $1
"""

# --- Money checks (issue 13) -----------------------------------------------------------------

# How long a card refund may stay requested/submitted, a payout approved, a recharge pending
# before reconciliation calls it stuck: the payment sweep (every minute, items stale after 3-5
# minutes) should have finished it long before.
STUCK_SECONDS = 3600
# Charges whose price and split are checked against the frozen terms: the recent ones (each run
# reads every charge in this window; older ones were checked by earlier runs).
CHARGE_CHECK_DAYS = 7

EARNINGS_NOT_NEGATIVE = """
SELECT id, owner_id, balance FROM accounts
 WHERE kind = 'astrologer_earnings' AND balance < 0
 LIMIT $1
"""
# A consultation's and its meter's totals against its `charge:{id}:{n}` transfers: minutes,
# what the wallet paid, what promotions funded (the ledger is the truth; finalization copies it).
CONSULTATION_TOTALS = """
WITH per_charge AS (
    SELECT t.consultation_id,
           coalesce(sum(-e.amount) FILTER (WHERE a.kind = 'user_wallet'), 0) AS paid,
           coalesce(sum(-e.amount) FILTER (WHERE a.kind = 'promotions'), 0) AS promo
      FROM transfers t
      LEFT JOIN entries e ON e.transfer_id = t.id
      LEFT JOIN accounts a ON a.id = e.account_id
     WHERE t.kind IN ('consultation_charge', 'free_minute') AND t.idempotency_key LIKE 'charge:%'
     GROUP BY t.id, t.consultation_id
), ledger AS (
    SELECT consultation_id, count(*)::int AS minutes, sum(paid)::bigint AS paid,
           sum(promo)::bigint AS promo
      FROM per_charge GROUP BY consultation_id
)
SELECT c.id, c.status, c.billed_minutes, c.total_charged,
       m.charged_minutes AS meter_minutes, m.charged_amount AS meter_charged,
       m.free_amount AS meter_promo,
       coalesce(l.minutes, 0) AS ledger_minutes, coalesce(l.paid, 0)::bigint AS ledger_paid,
       coalesce(l.promo, 0)::bigint AS ledger_promo
  FROM consultations c
  LEFT JOIN meters m ON m.consultation_id = c.id
  LEFT JOIN ledger l ON l.consultation_id = c.id
 WHERE (c.status = 'completed'
        AND (c.billed_minutes <> coalesce(l.minutes, 0)
             OR c.total_charged <> coalesce(l.paid, 0)))
    OR (m.consultation_id IS NOT NULL
        AND (m.charged_minutes <> coalesce(l.minutes, 0)
             OR m.charged_amount <> coalesce(l.paid, 0)
             OR m.free_amount <> coalesce(l.promo, 0)))
    OR (c.status NOT IN ('active', 'completed') AND l.minutes IS NOT NULL)
 LIMIT $1
"""
# Every recent charge with its consultation's frozen terms and its legs by account kind.
CHARGES_WITH_TERMS = """
SELECT t.id, t.idempotency_key, c.id AS consultation_id, c.astrologer_id,
       c.rate, c.list_rate, c.share_percent, c.free_minutes, c.promo_credit, c.currency,
       c.max_minutes,
       coalesce(sum(-e.amount) FILTER (WHERE a.kind = 'user_wallet'), 0)::bigint AS user_paid,
       coalesce(sum(-e.amount) FILTER (WHERE a.kind = 'promotions'), 0)::bigint AS promotions,
       coalesce(sum(e.amount) FILTER (WHERE a.kind = 'astrologer_earnings'
                                       AND a.owner_id = c.astrologer_id), 0)::bigint AS astrologer,
       coalesce(sum(e.amount) FILTER (WHERE a.kind = 'platform_revenue'), 0)::bigint AS platform,
       count(e.id) FILTER (WHERE a.kind NOT IN ('user_wallet', 'promotions', 'platform_revenue')
                            AND NOT (a.kind = 'astrologer_earnings'
                                     AND a.owner_id = c.astrologer_id)) AS strangers
  FROM transfers t
  JOIN consultations c ON c.id = t.consultation_id
  LEFT JOIN entries e ON e.transfer_id = t.id
  LEFT JOIN accounts a ON a.id = e.account_id
 WHERE t.kind IN ('consultation_charge', 'free_minute') AND t.idempotency_key LIKE 'charge:%'
   AND t.created_at > now() - make_interval(days => $1)
 GROUP BY t.id, c.id
"""
# Answered questions (issue 16): the captured charge is the price, split like a minute.
QUESTION_CHARGES = """
SELECT q.id, q.price, q.share_percent, q.astrologer_id,
       coalesce(sum(-e.amount) FILTER (WHERE a.kind = 'user_wallet'), 0)::bigint AS user_paid,
       coalesce(sum(e.amount) FILTER (WHERE a.kind = 'astrologer_earnings'
                                       AND a.owner_id = q.astrologer_id), 0)::bigint AS astrologer,
       coalesce(sum(e.amount) FILTER (WHERE a.kind = 'platform_revenue'), 0)::bigint AS platform
  FROM questions q
  LEFT JOIN entries e ON e.transfer_id = q.charge_transfer_id
  LEFT JOIN accounts a ON a.id = e.account_id
 WHERE q.status = 'answered' AND q.answered_at > now() - make_interval(days => $1)
 GROUP BY q.id
"""
STUCK_CARD_REFUNDS = """
SELECT id, status, amount, updated_at FROM card_refunds
 WHERE status IN ('requested', 'submitted') AND updated_at < now() - make_interval(secs => $2)
 ORDER BY updated_at LIMIT $1
"""
STUCK_PAYOUTS = """
SELECT id, astrologer_id, amount, approved_at FROM payouts
 WHERE status = 'approved' AND approved_at < now() - make_interval(secs => $2)
 ORDER BY approved_at LIMIT $1
"""
STUCK_RECHARGES = """
SELECT id, gateway, total, created_at FROM recharges
 WHERE status = 'pending' AND gateway_order_id IS NOT NULL
   AND created_at < now() - make_interval(secs => $2)
   AND EXISTS (SELECT 1 FROM payment_events e WHERE e.recharge_id = recharges.id)
 ORDER BY created_at LIMIT $1
"""
PAYMENT_ANOMALIES = """
SELECT id, gateway, payment_id, recharge_id, kind, amount, currency, status, note
  FROM payment_anomalies
 WHERE status <> 'resolved'
 ORDER BY created_at LIMIT $1
"""


def _row_details(row: Any, skip: str) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row.items() if k != skip}


@reconcile_check("charge_terms")
async def check_charge_terms(conn: Conn) -> list[Finding]:
    """Each recent charge's price and split against its consultation's frozen terms and the money
    rules: the wallet paid the minute's user price, promotions exactly the discount, the
    astrologer their share of the list rate, the platform the rest, and nobody else anything."""
    findings: list[Finding] = []
    parts = ("user", "promotions", "astrologer", "platform", "others")
    for row in await conn.fetch(CHARGES_WITH_TERMS, CHARGE_CHECK_DAYS):
        got = (row["user_paid"], row["promotions"], row["astrologer"], row["platform"])
        paid = dict(zip(parts, (*got, row["strangers"]), strict=True))
        details: dict[str, Any] = {"consultation_id": str(row["consultation_id"]), "paid": paid}
        try:
            minute = int(row["idempotency_key"].rsplit(":", 1)[1])
            p = rules.minute_price(rules.Terms.from_record(row), minute)
        except (ValueError, IndexError) as exc:
            details["error"] = str(exc)
        else:
            want = (p.user, p.promotions, p.astrologer, p.platform, 0)
            expected = dict(zip(parts, want, strict=True))
            if expected == paid:
                continue
            details |= {"minute": minute, "expected": expected}
        findings.append(Finding("charge_terms", str(row["id"]), details))
        if len(findings) >= MAX_FINDINGS:
            break
    return findings


@reconcile_check("question_charges")
async def check_question_charges(conn: Conn) -> list[Finding]:
    """Answered questions (issue 16): the charge is the price, split like a minute by the money
    rules. Skipped (no findings) on a database without the questions table."""
    if not await conn.fetchval("SELECT to_regclass('questions') IS NOT NULL"):
        return []  # the hook for questions: nothing to check before migration 0016
    findings: list[Finding] = []
    for row in await conn.fetch(QUESTION_CHARGES, CHARGE_CHECK_DAYS):
        split = rules.question_split(row["price"], row["share_percent"])
        want = (row["price"], split.astrologer, split.platform)
        got = (row["user_paid"], row["astrologer"], row["platform"])
        if want != got:
            findings.append(
                Finding("question_charges", str(row["id"]), {"expected": want, "paid": got})
            )
            if len(findings) >= MAX_FINDINGS:
                break
    return findings


def _stuck_check(name: str, sql: str) -> Check:
    async def run(conn: Conn) -> list[Finding]:
        rows = await conn.fetch(sql, MAX_FINDINGS, STUCK_SECONDS)
        return [Finding(name, str(r["id"]), _row_details(r, "id")) for r in rows]

    run.__name__ = f"check_{name}"
    return reconcile_check(name)(run)


_query_check("transfers_balanced", TRANSFERS_BALANCED, "transfer_id")
_query_check("ledger_zero_sum", LEDGER_ZERO_SUM, "currency")
_query_check("owned_balances", OWNED_BALANCES, "id")
_query_check("balance_after", BALANCE_AFTER, "entry_id")
_query_check("system_balances", SYSTEM_BALANCES, "id")
_query_check("no_negative_wallet", NO_NEGATIVE_WALLET, "id")
_query_check("held_matches_holds", HELD_MATCHES_HOLDS, "id")
_query_check("earnings_not_negative", EARNINGS_NOT_NEGATIVE, "id")
_query_check("consultation_totals", CONSULTATION_TOTALS, "id")
_query_check("payment_anomalies", PAYMENT_ANOMALIES, "id")
_stuck_check("card_refunds_stuck", STUCK_CARD_REFUNDS)
_stuck_check("payouts_stuck", STUCK_PAYOUTS)
_stuck_check("recharges_stuck", STUCK_RECHARGES)


async def reconcile(conn: Conn, *, skip: Collection[str] = ()) -> Report:
    """Run every check (but those named in `skip`) in one REPEATABLE READ snapshot (so postings
    that commit meanwhile cannot look like breaks); log each break at error; return the report."""
    started = time.monotonic()
    report = Report()
    checks = {name: check for name, check in load_checks().items() if name not in skip}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, check in checks.items():
            report.checks.append(name)
            report.findings.extend(await check(conn))
    report.seconds = time.monotonic() - started
    for finding in report.findings:
        log.error(
            "ledger reconciliation break",
            extra={"check": finding.check, "subject": finding.subject, "details": finding.details},
        )
    level = logging.INFO if report.ok else logging.ERROR
    log.log(level, "ledger reconciliation done", extra={"breaks": report.counts()})
    return report


class ReconcileMetrics:
    """Prometheus series for reconciliation, on the caller's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("ledger_reconcile_runs_total", "Reconciliation runs", registry=registry)
        self.breaks_total = Counter(
            "ledger_reconcile_breaks_total",
            "Invariant breaks found, by check (should stay 0)",
            ["check"],
            registry=registry,
        )
        self.breaks = Gauge(
            "ledger_reconcile_last_breaks",
            "Invariant breaks found by the last run, by check",
            ["check"],
            registry=registry,
        )
        self.last_run = Gauge(
            "ledger_reconcile_last_run_timestamp_seconds",
            "When reconciliation last finished",
            registry=registry,
        )

    def record(self, report: Report) -> None:
        self.runs.inc()
        for check, count in report.counts().items():
            self.breaks.labels(check).set(count)
            if count:
                self.breaks_total.labels(check).inc(count)
        self.last_run.set_to_current_time()
