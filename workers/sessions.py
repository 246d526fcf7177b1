"""Live-session jobs: finalize a stopped session, and the meters' recovery sweep (cron, and once
when a worker starts). Both are safe to run twice: the `meters` row lock and `finalized_at`, the
ledger keys and NX timers make a repeat change nothing."""

from __future__ import annotations

import uuid

from billing.meter import sweep
from billing.meter_finalize import finalize
from workers.context import JobContext, services_of


async def finalize_consultation(ctx: JobContext, consultation_id: str) -> str:
    """Complete a stopped session from the ledger: totals, refunds, receipts, waitlist."""
    done = await finalize(services_of(ctx), uuid.UUID(consultation_id))
    return "finalized" if done is not None else "nothing to do"


async def sweep_meters(ctx: JobContext) -> dict[str, int]:
    """Rebuild Redis meters of running sessions from PostgreSQL; queue unfinished finalizations."""
    return await sweep(services_of(ctx))
