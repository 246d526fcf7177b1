"""Live-session jobs: finalize a stopped session, the join timeout, and the meters' recovery
sweep (cron, and once when a worker starts). All are safe to run twice: the `meters` row lock and
`finalized_at`, the conditional transitions, the ledger keys and NX timers make a repeat change
nothing."""

from __future__ import annotations

import uuid

from arq.worker import Retry

from live import session
from live.finalize import finalize
from live.meter import sweep
from workers.context import JobContext, services_of

# A timer job that fires before its moment (the worker's clock ahead of PostgreSQL's) retries
# after this margin instead of waiting for the sweep.
EARLY_RETRY_SECONDS = 1.0


async def finalize_consultation(ctx: JobContext, consultation_id: str) -> str:
    """Complete a stopped session from the ledger: totals, refunds, receipts, waitlist."""
    done = await finalize(services_of(ctx), uuid.UUID(consultation_id))
    return "finalized" if done is not None else "nothing to do"


async def expire_unstarted(ctx: JobContext, consultation_id: str) -> str:
    """JOIN_TIMEOUT_SECONDS after an acceptance: `accepted → missed` unless the session started."""
    outcome = await session.expire_unstarted(services_of(ctx), uuid.UUID(consultation_id))
    if outcome == "not due":
        raise Retry(defer=EARLY_RETRY_SECONDS)
    return outcome


async def sweep_meters(ctx: JobContext) -> dict[str, int]:
    """Rebuild Redis meters of running sessions from PostgreSQL; queue unfinished finalizations."""
    return await sweep(services_of(ctx))
