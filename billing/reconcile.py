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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

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

_query_check("transfers_balanced", TRANSFERS_BALANCED, "transfer_id")
_query_check("ledger_zero_sum", LEDGER_ZERO_SUM, "currency")
_query_check("owned_balances", OWNED_BALANCES, "id")
_query_check("balance_after", BALANCE_AFTER, "entry_id")
_query_check("system_balances", SYSTEM_BALANCES, "id")
_query_check("no_negative_wallet", NO_NEGATIVE_WALLET, "id")
_query_check("held_matches_holds", HELD_MATCHES_HOLDS, "id")


async def reconcile(conn: Conn) -> Report:
    """Run every check in one REPEATABLE READ snapshot (so postings that commit meanwhile cannot
    look like breaks); log each break at error; return the report."""
    started = time.monotonic()
    report = Report()
    checks = load_checks()
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
