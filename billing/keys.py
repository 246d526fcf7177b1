"""Every Redis key of the ledger, with its TTL and the reason for each number.

PostgreSQL is the ledger's only truth; Redis keeps only a summary for operators.
"""

from __future__ import annotations

# JSON summary of the last reconciliation run ({"at", "ok", "breaks": {check: count}}), for
# dashboards and the web process's metrics. Two days: the cron runs every few minutes, so a key
# that has expired itself says "reconciliation has not run for days".
RECONCILE_LAST = "ledger:reconcile:last"
RECONCILE_LAST_TTL_SECONDS = 2 * 24 * 3600
