"""Account statements: the lines of one owned account (a wallet, an astrologer's earnings),
newest first, keyset-paginated on the entry id (stable under inserts)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from db.pool import Executor


@dataclass(frozen=True)
class Line:
    cursor: int  # the entry id: the keyset position
    id: uuid.UUID  # the transfer id
    kind: str
    amount: int  # signed: + into the account, - out of it
    balance_after: int | None
    consultation_id: uuid.UUID | None
    created_at: datetime


LINES = """
SELECT e.id AS cursor, t.id, t.kind, e.amount, e.balance_after, t.consultation_id, e.created_at
  FROM accounts a
  JOIN entries e ON e.account_id = a.id
  JOIN transfers t ON t.id = e.transfer_id
 WHERE a.kind = $1 AND a.owner_id = $2 AND a.currency = $3
   AND ($4::bigint IS NULL OR e.id < $4)
 ORDER BY e.id DESC
 LIMIT $5
"""


async def lines(
    conn: Executor,
    *,
    kind: str,
    owner_id: uuid.UUID,
    currency: str,
    before: int | None,
    limit: int,
) -> list[Line]:
    """Up to `limit` lines of the (kind, owner, currency) account older than entry `before`."""
    rows = await conn.fetch(LINES, kind, owner_id, currency, before, limit)
    return [Line(**dict(r)) for r in rows]
