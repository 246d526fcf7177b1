"""One error hierarchy. REST maps it to `{"error": {code, message, details}}` in one middleware,
Socket.IO to `{ok: false, error}` in one wrapper. Expected errors log at info."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status: int = 400
    code: str = "bad_request"
    message: str = "bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or type(self).message
        self.code = code or type(self).code
        self.status = status or type(self).status
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(AppError):
    status, code, message = 400, "bad_request", "bad request"


class Unauthorized(AppError):
    status, code, message = 401, "unauthorized", "authentication required"


class Forbidden(AppError):
    status, code, message = 403, "forbidden", "not allowed"


class NotFound(AppError):
    status, code, message = 404, "not_found", "not found"


class MethodNotAllowed(AppError):
    status, code, message = 405, "method_not_allowed", "method not allowed"


class Conflict(AppError):
    status, code, message = 409, "conflict", "conflict"


class PayloadTooLarge(AppError):
    status, code, message = 413, "payload_too_large", "request body too large"


class PaymentRequired(AppError):
    status, code, message = 402, "insufficient_balance", "insufficient balance"


class ValidationFailed(AppError):
    status, code, message = 422, "validation_error", "invalid input"

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        super().__init__(message, details={"fields": fields})
        self.fields = fields


class RateLimited(AppError):
    status, code, message = 429, "rate_limited", "too many requests"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(
            message,
            details={"retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class ServiceUnavailable(AppError):
    status, code, message = 503, "unavailable", "service unavailable"


def fields_from_pydantic(errors: list[Any]) -> dict[str, str]:
    """`{"field.path": "what is wrong"}` from a pydantic `ValidationError.errors()` list."""
    fields: dict[str, str] = {}
    for err in errors:
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__") or "body"
        fields.setdefault(loc, str(err.get("msg", "invalid")))
    return fields
