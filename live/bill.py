"""The bill of a live session, line by line: a read-only view of `meter_events`."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg

from db.pool import Conn

Audience = Literal["user", "astrologer", "admin"]

BREAKDOWN = """
SELECT kind, minute, due_at, at, amount, free_amount, astrologer_share, balance_after,
       minutes_left, reason
  FROM meter_events WHERE consultation_id = $1 ORDER BY id
"""


async def breakdown(
    conn: Conn | asyncpg.Pool[Any], consultation_id: uuid.UUID, audience: Audience = "admin"
) -> list[dict[str, Any]]:
    """Every meter event of a consultation in order: start, each charged minute (due time, when
    it was charged, amount, free part, balance after), warnings, the end and its reason, refunds.
    The astrologer does not see the user's balance; the user does not see the astrologer's
    share."""
    lines = []
    for r in await conn.fetch(BREAKDOWN, consultation_id):
        line: dict[str, Any] = {
            "kind": r["kind"],
            "minute": r["minute"],
            "due_at": r["due_at"],
            "at": r["at"],
            "amount": r["amount"],
            "free_amount": r["free_amount"],
            "astrologer_share": r["astrologer_share"],
            "balance_after": r["balance_after"],
            "minutes_left": r["minutes_left"],
            "reason": r["reason"],
        }
        if audience == "astrologer":
            line["balance_after"] = line["minutes_left"] = None
        elif audience == "user":
            line["astrologer_share"] = None
        lines.append(line)
    return lines
