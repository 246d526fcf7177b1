"""Discovery: the astrologer listing (filters, sorts, keyset pages) and an astrologer's detail.

Only approved astrologers of active accounts that offer something are listed. Each sort orders by
(sort value, user_id) in one direction and the cursor carries both values, compared as a row:
`(value, user_id) < ($v, $id)`. A page is then a range scan of the sort's index (0005) that stops
after `limit` rows, and pages stay stable while ratings change: every astrologer whose sort value
did not change is listed exactly once; only one whose own value moved across the cursor may be
passed over or shown again (no offsets to shift, whatever else changes).

`online=true` semi-joins `astrologer_presence_listed`, the PostgreSQL mirror of presence's set of
astrologers published online or busy (see `consultations.presence`); the view then drops a page's
few that went offline since the last presence sweep.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from core.errors import NotFound, ValidationFailed
from db.pool import Executor

Sort = Literal["rating", "rate_asc", "rate_desc", "experience", "popular"]
DEFAULT_SORT: Sort = "popular"


@dataclass(frozen=True)
class Filters:
    skill: str | None = None
    language: str | None = None
    type: str | None = None
    online: bool = False  # only those presence last published online or busy
    min_rating: Decimal | None = None
    max_rate: int | None = None
    q: str | None = None


@dataclass(frozen=True)
class Astrologer:
    id: uuid.UUID
    display_name: str
    bio: str
    skills: list[str]
    languages: list[str]
    experience_years: int
    rate_chat: int | None
    rate_voice: int | None
    rate_video: int | None
    rating_avg: Decimal
    rating_count: int
    consultations_count: int
    min_rate: int | None
    avatar_key: str | None
    timezone: str
    rate_question: int | None = None  # issue 16: the price of a written question

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Astrologer:
        # COLUMNS selects exactly these fields in this order (test_columns_match_the_dataclass):
        # positional is twice as fast as by name, and a listing page builds 20 of these.
        return cls(*row)

    def rate(self, type_: str | None) -> int | None:
        return self.min_rate if type_ is None else getattr(self, f"rate_{type_}")


COLUMNS = """
p.user_id AS id, p.display_name, p.bio, p.skills, p.languages, p.experience_years, p.rate_chat,
p.rate_voice, p.rate_video, p.rating_avg, p.rating_count, p.consultations_count, p.min_rate,
u.avatar_key, p.timezone, p.rate_question
"""
FROM = """
FROM astrologer_profiles p JOIN users u ON u.id = p.user_id
WHERE p.verification = 'approved' AND u.status = 'active'
"""
# online=true: a semi-join with the presence mirror (0010), an index probe per scanned row (or,
# when few are online, the planner starts from the mirror); no id list travels with the query.
# Only this filter joins the mirror: a third relation costs every query ~0.13 ms more planning
# (plans are custom, db/pool.py), more than asking Redis for a page's 20 statuses.
ONLINE = "EXISTS (SELECT 1 FROM astrologer_presence_listed o WHERE o.astrologer_id = p.user_id)"
GET_ONE = f"SELECT {COLUMNS} {FROM} AND p.user_id = $1"

# Sort → (column, direction, SQL type of its cursor value). Columns come from this table only.
_SORT_COLUMNS: dict[str, tuple[str, str, str]] = {
    "rating": ("p.rating_avg", "DESC", "numeric"),
    "experience": ("p.experience_years", "DESC", "integer"),
    "popular": ("p.consultations_count", "DESC", "integer"),
    "rate_asc": ("{rate}", "ASC", "bigint"),
    "rate_desc": ("{rate}", "DESC", "bigint"),
}
_RATE_COLUMNS = {
    None: "p.min_rate",
    "chat": "p.rate_chat",
    "voice": "p.rate_voice",
    "video": "p.rate_video",
}


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def build_query(
    filters: Filters, sort: Sort, cursor: tuple[Any, uuid.UUID] | None, limit: int
) -> tuple[str, list[Any]]:
    """The listing SQL and its parameters (also used by the EXPLAIN test and the benchmark)."""
    rate_col = _RATE_COLUMNS[filters.type]
    column, direction, value_type = _SORT_COLUMNS[sort]
    column = column.format(rate=rate_col)
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = [f"{rate_col} IS NOT NULL"]
    if filters.skill:
        where.append(f"p.skills @> ARRAY[{arg(filters.skill)}::text]")
    if filters.language:
        where.append(f"p.languages @> ARRAY[{arg(filters.language)}::text]")
    if filters.online:
        where.append(ONLINE)
    if filters.min_rating is not None:
        where.append(f"p.rating_avg >= {arg(filters.min_rating)}")
    if filters.max_rate is not None:
        where.append(f"{rate_col} <= {arg(filters.max_rate)}")
    if filters.q:
        where.append(f"p.display_name ILIKE {arg(_like_pattern(filters.q))}")
    if cursor is not None:
        op = "<" if direction == "DESC" else ">"
        value, after_id = cursor
        where.append(
            f"({column}, p.user_id) {op} ({arg(value)}::{value_type}, {arg(after_id)}::uuid)"
        )
    sql = (
        f"SELECT {COLUMNS} {FROM} AND " + " AND ".join(where)
        + f" ORDER BY {column} {direction}, p.user_id {direction} LIMIT {arg(limit)}"
    )  # fmt: skip
    return sql, args


def sort_value(a: Astrologer, sort: Sort, type_: str | None) -> Any:
    if sort == "rating":
        return str(a.rating_avg)
    if sort == "experience":
        return a.experience_years
    if sort == "popular":
        return a.consultations_count
    return a.rate(type_)


def cursor_values(a: Astrologer, sort: Sort, type_: str | None) -> list[Any]:
    """What the next page's cursor carries: the sort, its value for `a`, and `a`'s id."""
    return [sort, sort_value(a, sort, type_), str(a.id)]


def parse_cursor(values: list[Any], sort: Sort) -> tuple[Any, uuid.UUID]:
    """The (value, id) of a decoded cursor; 422 `cursor` when it is not one of this sort's."""
    kind, value, raw_id = values
    if kind != sort:
        raise ValidationFailed({"cursor": "this cursor belongs to another sort"})
    try:
        after_id = uuid.UUID(str(raw_id))
        typed: Any = Decimal(str(value)) if sort == "rating" else int(value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValidationFailed({"cursor": "invalid cursor"}) from exc
    return typed, after_id


async def search(
    conn: Executor,
    filters: Filters,
    *,
    sort: Sort,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
) -> tuple[list[Astrologer], bool]:
    """One page of the listing, and whether more follow."""
    sql, args = build_query(filters, sort, after, limit + 1)
    rows = await conn.fetch(sql, *args)
    return [Astrologer.from_row(r) for r in rows[:limit]], len(rows) > limit


async def get(conn: Executor, astrologer_id: uuid.UUID) -> Astrologer:
    row = await conn.fetchrow(GET_ONE, astrologer_id)
    if row is None:
        raise NotFound("no such astrologer")
    return Astrologer.from_row(row)
