"""Base request/response models, the error shape and pagination, shared by every route."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core import inputs
from core.errors import ValidationFailed

T = TypeVar("T")


class Input(BaseModel):
    """A request body or query: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(Output):
    code: str = Field(examples=["insufficient_balance"])
    message: str
    details: dict[str, Any] | None = None


class ErrorResponse(Output):
    error: ErrorBody


class Money(Output):
    amount: int = Field(description="integer count of the currency's minor unit (paise)")
    currency: str = Field(examples=["INR"])


class ListQuery(Input):
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


class Page(Output, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def time_id_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """A `(created_at, id)` keyset cursor, the most common kind; None for the first page."""
    if cursor is None:
        return None
    at, last = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(str(at)), uuid.UUID(str(last))
    except (TypeError, ValueError) as exc:
        raise ValidationFailed({"cursor": "invalid cursor"}) from exc


def int_cursor(cursor: str | None) -> int | None:
    """A cursor holding one integer (an entry id, a seq); None for the first page."""
    if cursor is None:
        return None
    (value,) = decode_cursor(cursor, 1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed({"cursor": "invalid cursor"})
    return value


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The values of an opaque keyset cursor; 422 `cursor` when it was not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValidationFailed({"cursor": "invalid cursor"}) from exc
    if not isinstance(values, list) or len(values) != arity or inputs.problems(values):
        # Issue 14: a forged cursor must not carry what no input may (an int beyond int64, NUL).
        raise ValidationFailed({"cursor": "invalid cursor"})
    return values


class RatesOut(Output):
    """An astrologer's rates a minute, minor units; null where they do not offer that type."""

    chat: int | None
    voice: int | None
    video: int | None
    question: int | None = None  # issue 16: a fixed price per written question
