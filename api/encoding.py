"""The one JSON encoding of every REST response, success or error: compact, UTF-8, non-ASCII as
itself (Hindi messages arrive as Devanagari, never `\\u` escapes). pydantic models are written by
pydantic-core (`model_dump_json`), which produces the same bytes as `dumps` of their JSON dump."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

CONTENT_TYPE = "application/json"


def dumps(obj: Any) -> str:
    """Compact JSON with non-ASCII characters as themselves; datetimes and UUIDs as strings."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def json_response(
    payload: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response of `payload` (a pydantic model, or data `dumps` takes)."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json().encode()
    else:
        body = dumps(payload).encode()
    return web.Response(
        body=body, status=status, headers=headers, content_type=CONTENT_TYPE, charset="utf-8"
    )
