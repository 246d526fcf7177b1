"""`/v1/openapi.json`, generated from the routes' declared request and response models."""

from __future__ import annotations

import re
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
    429: "rate limited; see Retry-After",
}


def _schema(tp: Any, components: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(tp).json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    title = schema.get("title")
    if isinstance(tp, type) and title and schema.get("type") == "object":
        components.setdefault(title, schema)
        return {"$ref": REF.format(model=title)}
    return schema


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str) -> str:
    """Component names allow [A-Za-z0-9._-]: `Page[AstrologerOut]` becomes `Page_AstrologerOut`."""
    return _UNSAFE.sub("_", name).strip("_")


def _rename_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(prefix):
                out[key] = prefix + _safe_name(value[len(prefix) :])
            else:
                out[key] = _rename_refs(value, prefix)
        return out
    if isinstance(node, list):
        return [_rename_refs(item, prefix) for item in node]
    return node


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
        doc = (spec.handler.__doc__ or "").strip()
        if doc:
            op["description"] = doc
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
                    "description": "same key and body within 24 h returns the first response",
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
            responses["204"] = {"description": "no content"}
        else:
            ok: dict[str, Any] = {"description": "success"}
            if spec.response is not None:
                ok["content"] = {"application/json": {"schema": _schema(spec.response, components)}}
            responses[str(spec.status)] = ok
        codes = {422} if (spec.body or spec.query) else set()
        if spec.body:
            codes |= {400, 413}
        if roles is not None:
            codes |= {401}
            if roles != ("user", "astrologer", "admin"):
                codes |= {403}
        if "{" in spec.path:
            codes |= {404}
        if spec.idempotent:
            codes |= {409}
        for code, text in spec.extra_responses.items():
            responses[str(code)] = {
                "description": text,
                "content": {"application/json": {"schema": error_ref}},
            }
        for code in sorted(codes):
            responses.setdefault(
                str(code),
                {
                    "description": _ERROR_TEXT[code],
                    "content": {"application/json": {"schema": error_ref}},
                },
            )
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
            "description": "Paid live consultations: phone sign-in, per-minute wallet billing, "
            "chat, voice and video. Real-time events go over Socket.IO at /socket.io.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
