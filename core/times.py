"""The one RFC 3339 formatter: every time the API, the Socket.IO events and the notifications show
is UTC with a `Z` (`2026-11-25T14:03:00Z`), as API.md promises."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def rfc3339(value: datetime, *, milliseconds: bool = False) -> str: ...


@overload
def rfc3339(value: None, *, milliseconds: bool = False) -> None: ...


@overload
def rfc3339(value: datetime | None, *, milliseconds: bool = False) -> str | None: ...


def rfc3339(value: datetime | None, *, milliseconds: bool = False) -> str | None:
    """`value` in UTC with a `Z`, to the second (or the millisecond: chat messages, whose order
    within a second matters to a reader); None stays None."""
    if value is None:
        return None
    utc = value.astimezone(UTC)
    if milliseconds:
        return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
