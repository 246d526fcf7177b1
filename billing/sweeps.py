"""The shape every payment sweep shares (issue 13): claim the stuck rows of one kind with one
statement (`FOR UPDATE SKIP LOCKED` and a `checked_at` stamp, so several workers never take the
same row in one round), drive each forward, count how each ended."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from db.pool import Executor

log = logging.getLogger(__name__)


def claim_sql(table: str, stuck: str, order_by: str, returning: str = "t.id") -> str:
    """The one statement that claims up to $2 rows of `table` matching `stuck` and not looked at
    for $1 seconds: locked with SKIP LOCKED (another worker's claim is skipped, never waited for)
    and stamped `checked_at` at once, so each row goes to one worker per round."""
    return f"""
WITH due AS (
    SELECT id FROM {table}
     WHERE {stuck}
       AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $1))
     ORDER BY {order_by}
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
UPDATE {table} t SET checked_at = now() FROM due WHERE t.id = due.id
RETURNING {returning}
"""


async def sweep_claimed(
    db: Executor,
    claim_sql: str,
    args: Sequence[Any],
    drive: Callable[[uuid.UUID], Awaitable[str]],
    *,
    retry_on: tuple[type[BaseException], ...],
) -> dict[str, int]:
    """Claim rows with `claim_sql` (it returns their `id`), run `drive(id)` on each (it returns
    the row's status afterwards) and count the statuses. An error of `retry_on` leaves that row
    for the next round (counted `unreachable`); the others go on."""
    counts: dict[str, int] = {}
    for row in await db.fetch(claim_sql, *args):
        try:
            status = await drive(row["id"])
        except retry_on:
            log.warning(
                "sweep: will try again next round", exc_info=True, extra={"id": str(row["id"])}
            )
            status = "unreachable"
        counts[status] = counts.get(status, 0) + 1
    return counts
