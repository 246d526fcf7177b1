"""Periodic ledger jobs: roll up system balances, expire holds, reconcile.

Each is safe to run twice or concurrently (arq delivers at least once): the roll-up moves each
queued delta once, the expiry closes each hold once, reconciliation only reads.
"""

from __future__ import annotations

import json
import time
import weakref
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from billing import keys
from billing.holds import expire_holds
from billing.ledger import rollup_system_balances
from billing.reconcile import ReconcileMetrics, reconcile
from workers.context import JobContext, services_of


async def rollup_system_balances_job(ctx: JobContext) -> int:
    """Fold queued system-account deltas into their balances; returns accounts moved."""
    async with services_of(ctx).db.acquire() as conn:
        return len(await rollup_system_balances(conn))


async def expire_holds_job(ctx: JobContext) -> int:
    """Expire every hold past its expiry; returns how many."""
    async with services_of(ctx).db.acquire() as conn:
        return await expire_holds(conn, datetime.now(UTC))


# The reconciliation series of each worker registry, registered once (a second registration of
# the same names on one registry raises).
_RECONCILE_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ReconcileMetrics] = (
    weakref.WeakKeyDictionary()
)


async def reconcile_ledger_job(ctx: JobContext) -> dict[str, int]:
    """Check the ledger's invariants (breaks are logged at error), count them per check in the
    worker's Prometheus metrics (`ledger_reconcile_last_breaks{check=...}`, served on
    WORKER_METRICS_PORT) and keep a summary in Redis."""
    services = services_of(ctx)
    async with services.db.acquire() as conn:
        await rollup_system_balances(conn)
        report = await reconcile(conn)
    worker_metrics = ctx.get("metrics")
    if worker_metrics is not None:
        registry = worker_metrics.registry
        if registry not in _RECONCILE_METRICS:
            _RECONCILE_METRICS[registry] = ReconcileMetrics(registry)
        _RECONCILE_METRICS[registry].record(report)
    counts = report.counts()
    summary = {"at": time.time(), "ok": report.ok, "breaks": counts}
    await services.redis.set(
        keys.RECONCILE_LAST, json.dumps(summary), ex=keys.RECONCILE_LAST_TTL_SECONDS
    )
    return counts
