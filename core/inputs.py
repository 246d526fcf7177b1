"""What no input may carry, checked once for REST bodies and queries and for Socket.IO payloads.

Pydantic checks each field's type and bounds; these are the limits of what lies behind every field,
which a model cannot see unless each field repeats them:

- text PostgreSQL cannot store or we cannot encode: NUL characters, unpaired UTF-16 surrogates
  (JSON's `"\\ud800"` escapes decode to them, and UTF-8 has no encoding for them);
- integers a PostgreSQL `bigint` cannot hold (and numbers of thousands of digits);
- floats that are not numbers (`NaN`, `Infinity`, which Python's JSON and pydantic accept);
- nesting deeper than any request of this API (a cheap way to exhaust a parser or a walker).

Each problem is reported as `{"field.path": "what is wrong"}`, the contract's 422 details.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# No request of this API nests deeper than ~5 levels; 32 leaves room and stops pathological input.
MAX_DEPTH = 32
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be taken as text, or None."""
    match = _BAD_TEXT.search(value)
    if match is None:
        return None
    if match.group() == "\x00":
        return "must not contain NUL characters"
    return "must be valid Unicode (unpaired surrogate)"


def _walk(data: Any) -> Iterator[tuple[str, Any, int]]:
    """(path, value, depth) of every node, iteratively (no recursion to exhaust)."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        yield path, value, depth
        if depth >= MAX_DEPTH:
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((f"{path}.{key}" if path else str(key), item, depth + 1))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                stack.append((f"{path}.{index}" if path else str(index), item, depth + 1))


def problems(data: Any, root: str = "body") -> dict[str, str]:
    """`{field: problem}` for every value (and key) no input may carry; empty when all is well."""
    found: dict[str, str] = {}
    for path, value, depth in _walk(data):
        where = path or root
        if depth >= MAX_DEPTH and isinstance(value, dict | list | tuple) and value:
            found.setdefault(where, f"nested deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(value, str):
            problem = text_problem(value)
        elif isinstance(value, bool):
            problem = None
        elif isinstance(value, int):
            problem = None if INT64_MIN <= value <= INT64_MAX else "integer out of range"
        elif isinstance(value, float):
            problem = None if math.isfinite(value) else "must be a finite number"
        elif isinstance(value, dict):
            bad = next((k for k in value if isinstance(k, str) and text_problem(k)), None)
            problem = None if bad is None else "has a field name that is not valid text"
        else:
            problem = None
        if problem:
            found.setdefault(where, problem)
    return found
