"""`/v1/openapi.json`, generated from the routes' declared request and response models."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from api.framework import RouteSpec
from api.models import ErrorResponse

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{(\w+)}")

_ERROR_TEXT = {
    400: "malformed request (bad JSON)",
    401: "missing, expired, forged or revoked token",
    403: "the caller's role may not do this",
    404: "not found, or another person's resource",
    409: "conflict with the current state",
    413: "request body too large",
    422: "validation error; details.fields says what is wrong",
    429: "rate limited; wait Retry-After seconds",
}
# The codes the framework itself answers with, per status (core/errors.py, api/framework.py,
# auth/authenticator.py); a route adds its own in `errors={status: "code, code (why)"}`.
_FRAMEWORK_CODES: dict[int, list[str]] = {
    400: ["bad_request"],
    401: ["unauthorized", "invalid_token", "token_expired", "session_revoked", "account_blocked"],
    402: ["insufficient_balance"],
    403: ["forbidden"],
    404: ["not_found"],
    413: ["payload_too_large"],
    422: ["validation_error"],
    429: ["rate_limited"],
    502: ["gateway_unavailable", "gateway_error"],  # billing/gateways/base.py
    503: ["unavailable"],
}
_IDEMPOTENCY_CODES = ["idempotency_conflict", "request_in_progress"]
# A code at the start of a comma-separated part of a route's error text: `not_active: why`,
# `invalid_state (not ended)`, `insufficient_balance`; plain prose ("not a participant") is none.
_CODE = re.compile(r"^(?:or\s+)?([a-z][a-z0-9]*(?:_[a-z0-9]+)+|conflict)(?=$|[:;.]|\s\()")
_HEADERS = {
    "X-Request-ID": {
        "description": "the request's id: the client's own X-Request-ID when it sent a safe one "
        "(letters, digits, `._:-`, up to 128), else a new one; logs carry it",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    },
}
_RETRY_AFTER = {"$ref": "#/components/headers/Retry-After"}


def _request_id() -> dict[str, Any]:
    return {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}


INFO_DESCRIPTION = """\
Paid live consultations: phone sign-in, per-minute wallet billing, chat, voice and video.
Real-time events go over Socket.IO at `/socket.io` (see `/v1/asyncapi.json`).

- JSON in and out, UTF-8. Ids are UUIDs; times are RFC 3339 UTC (`2026-11-25T14:03:00Z`); money
  is an integer count of the currency's minor unit (paise).
- `Authorization: Bearer <access_token>` from `POST /v1/auth/verify`.
- Errors: `{"error": {"code", "message", "details"}}`; each response below lists its codes
  (`x-error-codes`). Any operation may answer `500 internal` with `details.request_id`.
- Every response carries `X-Request-ID` (echoed when the client sent one).
- Lists: `?limit=` (default 20, max 100) and `?cursor=`; answers `{items, next_cursor}`.
- POSTs that move money or book honour `Idempotency-Key`: the same key and body within 24 h
  return the first response; another body is `409 idempotency_conflict`."""


def error_codes(status: int, text: str) -> list[str]:
    """The error codes a route's `errors={status: text}` names (see `_CODE`)."""
    found = [m.group(1) for part in text.split(",") if (m := _CODE.match(part.strip()))]
    return list(dict.fromkeys(found))


def summarise(description: str, fallback: str) -> str:
    """An operation's one-line summary: the first sentence of its description's first paragraph
    (a docstring's sentence often runs over two lines)."""
    paragraph = " ".join(description.split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
    return (sentence if 0 < len(sentence) <= 160 else fallback).rstrip(".:;")


def describe_handler(doc: str | None) -> str:
    """A view's docstring as an operation description: dedented, without its route line."""
    lines = inspect.cleandoc(doc or "").splitlines()
    if lines and re.match(r"^(GET|POST|PUT|PATCH|DELETE) /", lines[0]):
        lines = lines[1:]
    return "\n".join(lines).strip()


def _schema(tp: Any, components: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(tp).json_schema(ref_template=REF)
    defs: dict[str, Any] = schema.pop("$defs", {})
    title = schema.get("title")
    top = isinstance(tp, type) and isinstance(title, str) and schema.get("type") == "object"
    if top:
        defs[str(title)] = schema
    defs, renames = _distinct_names(defs, components)
    for name, definition in defs.items():
        components.setdefault(name, definition)
    if top:
        return {"$ref": REF.format(model=renames.get(str(title), str(title)))}
    renamed: dict[str, Any] = _renamed(schema, renames)
    return renamed


def _distinct_names(
    defs: dict[str, Any], components: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """`defs` under names that do not clash with another definition already in `components`
    (issue 14: the two `UploadOut`s and two `ProfileOut`s used to share the first one's schema,
    so the document described the other route's answer wrongly). A taken name gets a number:
    `UploadOut2`. Returns the renamed definitions and the renames."""
    renames: dict[str, str] = {}
    while True:
        current = {renames.get(k, k): _renamed(v, renames) for k, v in defs.items()}
        clashes = [n for n, d in current.items() if n in components and components[n] != d]
        if not clashes:
            return current, renames
        for name in clashes:
            original = next(k for k in defs if renames.get(k, k) == name)
            number = 2
            while (
                f"{original}{number}" in components
                and components[f"{original}{number}"] != current[name]
            ):
                number += 1
            renames[original] = f"{original}{number}"


def _renamed(node: Any, renames: dict[str, str]) -> Any:
    """`node` with its component `$ref`s renamed."""
    if not renames:
        return node
    return _rename_refs(node, REF.format(model=""), lambda name: renames.get(name, name))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str) -> str:
    """Component names allow [A-Za-z0-9._-]: `Page[AstrologerOut]` becomes `Page_AstrologerOut`."""
    return _UNSAFE.sub("_", name).strip("_")


def _rename_refs(node: Any, prefix: str, rename: Callable[[str], str] | None = None) -> Any:
    """`node` with the names of its `$ref`s under `prefix` renamed (by default made safe)."""
    fn = rename or _safe_name
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(prefix):
                out[key] = prefix + fn(value[len(prefix) :])
            else:
                out[key] = _rename_refs(value, prefix, fn)
        return out
    if isinstance(node, list):
        return [_rename_refs(item, prefix, fn) for item in node]
    return node


def _with_codes(codes: list[str], text: str) -> str:
    """`text` with its codes in backticks, and the codes it does not name said first."""
    named = set(error_codes(0, text))
    for code in named:
        text = re.sub(rf"(?<![`\w]){code}(?![`\w])", f"`{code}`", text)
    others = ", ".join(f"`{c}`" for c in codes if c not in named)
    return f"{others}: {text}" if others else text


def _error_response(
    status: int, codes: list[str], text: str, error_ref: dict[str, Any]
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _with_codes(codes, text),
        "headers": _request_id(),
        "content": {"application/json": {"schema": error_ref}},
    }
    if codes:
        response["x-error-codes"] = codes
    if status in (429, 503):
        response["headers"]["Retry-After"] = _RETRY_AFTER
    return response


def build(specs: list[RouteSpec], *, version: str = "1.0.0") -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    error_ref = _schema(ErrorResponse, components)
    for spec in sorted(specs, key=lambda s: (s.path, s.method)):
        op: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": f"{spec.method.lower()}_{spec.handler.__name__}",
            "tags": [spec.tag] if spec.tag else [],
        }
        doc = describe_handler(spec.handler.__doc__)
        if doc:
            op["description"] = doc
            op["summary"] = summarise(doc, spec.summary)
        roles = spec.roles()
        if roles is not None:
            op["security"] = [{"bearer": []}]
            op["x-roles"] = list(roles)
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(spec.path)
        ]
        if spec.query is not None:
            qschema = spec.query.model_json_schema(ref_template=REF)
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                params.append(
                    {"name": name, "in": "query", "required": name in required, "schema": prop}
                )
        if spec.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "same key and body within 24 h returns the first response "
                    "(with `Idempotent-Replayed: true`); another body is 409 "
                    "`idempotency_conflict`",
                    "schema": {"type": "string", "maxLength": 255},
                }
            )
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(spec.body, components)}},
            }
        responses: dict[str, Any] = {}
        if spec.status == 204:
            responses["204"] = {
                "description": "no content",
                "headers": _request_id(),
            }
        else:
            ok: dict[str, Any] = {
                "description": "success",
                "headers": _request_id(),
            }
            if spec.response is not None:
                ok["content"] = {"application/json": {"schema": _schema(spec.response, components)}}
            responses[str(spec.status)] = ok
        codes: dict[int, list[str]] = {}

        def add(status: int, *names: str, into: dict[int, list[str]] = codes) -> None:
            into.setdefault(status, [])
            into[status] += [n for n in names if n not in into[status]]

        if spec.body or spec.query:
            add(422, *_FRAMEWORK_CODES[422])
        if spec.body:
            add(400, *_FRAMEWORK_CODES[400])
            add(413, *_FRAMEWORK_CODES[413])
        if roles is not None:
            add(401, *_FRAMEWORK_CODES[401])
            if roles != ("user", "astrologer", "admin"):
                add(403, *_FRAMEWORK_CODES[403])
        if "{" in spec.path:
            add(404, *_FRAMEWORK_CODES[404])
        if spec.idempotent:
            add(409, *_IDEMPOTENCY_CODES)
        if spec.rate_limit is not None:
            # Issue 14: the figures of the route's rate limit (core/ratelimit.py).
            add(429, *_FRAMEWORK_CODES[429])
            op["x-rate-limit"] = spec.rate_limit.openapi()
            op["description"] = (
                op.get("description", "") + f"\n\nRate limit: {spec.rate_limit.describe()}; "
                "past it `429 rate_limited` with `Retry-After`."
            ).strip()
        for status, text in spec.extra_responses.items():
            add(status, *(error_codes(status, text) or _FRAMEWORK_CODES.get(status, [])))
        for status in sorted(codes):
            if status in spec.extra_responses:
                text = spec.extra_responses[status]
                if status == 409 and spec.idempotent:
                    text += "; or the Idempotency-Key's first request differs or still runs"
            elif status == 409 and spec.idempotent:
                text = "the Idempotency-Key was used with another body, or its first request "
                text += "is still running"
            else:
                text = _ERROR_TEXT.get(status, "error")
            responses[str(status)] = _error_response(status, codes[status], text, error_ref)
        responses["500"] = {"$ref": "#/components/responses/Internal"}
        op["responses"] = responses
        paths.setdefault(spec.path, {})[spec.method.lower()] = op
    prefix = REF.format(model="")
    paths = _rename_refs(paths, prefix)
    components = {_safe_name(k): _rename_refs(v, prefix) for k, v in components.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "astrolive API",
            "version": version,
            "description": INFO_DESCRIPTION,
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": _HEADERS,
            "responses": {
                "Internal": _error_response(
                    500, ["internal"], "unexpected failure; details.request_id", error_ref
                )
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
