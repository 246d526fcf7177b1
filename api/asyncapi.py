"""The AsyncAPI 3.0 document of the Socket.IO events the server sends, generated from their
models (`core.events.CATALOGUE`). Served at `GET /v1/asyncapi.json` and committed in
docs/asyncapi.json (tests/api/test_asyncapi.py checks it is current). Regenerate with
`.venv/bin/python -m api.asyncapi > docs/asyncapi.json`.

AsyncAPI describes the application from its own side: the server `send`s these events. Socket.IO
has no AsyncAPI binding; each message says its Socket.IO event name (`name`) and the rooms it goes
to (`x-rooms`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic.json_schema import models_json_schema

from core.events import CATALOGUE, ServerEvent

REF = "#/components/schemas/{model}"
VERSION = "1.1.0"

DESCRIPTION = """\
Socket.IO (protocol 5, engine.io 4) at path `/socket.io`, default namespace `/`. Connect with
`auth: {token: <access_token>}`; a bad or missing token is refused at connect. Transports:
WebSocket, with HTTP long-polling as the fallback (behind a balancer, long-polling needs sticky
sessions). Client → server events and their acknowledgements are in API.md ("Real time").

Conventions: ids are UUID strings; money is an integer in minor units; timestamps are RFC 3339
in UTC with a `Z`; an optional field that does not apply is absent. Rooms: `user:{id}` (every
socket of a person), `consultation:{id}` (the participants' sockets that joined it),
`consultation:{id}:user:{id}` (one participant's sockets in it), `presence:{astrologer_id}`
(sockets that sent `presence:watch` for that astrologer)."""


def _message_id(event: type[ServerEvent]) -> str:
    return event.__name__


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, deterministic (sorted keys when serialised)."""
    _, schemas = models_json_schema(
        [(event, "serialization") for event in CATALOGUE], ref_template=REF
    )
    components_schemas: dict[str, Any] = schemas.get("$defs", {})
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel_messages: dict[str, Any] = {}
    for event in CATALOGUE:
        mid = _message_id(event)
        messages[mid] = {
            "name": event.name,
            "title": event.name,
            "summary": event.summary,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=mid)},
            "x-rooms": list(event.rooms),
        }
        channel_messages[mid] = {"$ref": f"#/components/messages/{mid}"}
        operations[f"send_{mid}"] = {
            "action": "send",
            "channel": {"$ref": "#/channels/default"},
            "summary": event.summary,
            "messages": [{"$ref": f"#/channels/default/messages/{mid}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "astrolive real time", "version": VERSION, "description": DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "pathname": "/socket.io",
                "description": "Socket.IO over WebSocket (or HTTP long-polling)",
            }
        },
        "channels": {
            "default": {
                "address": "/",
                "title": "the default Socket.IO namespace",
                "servers": [{"$ref": "#/servers/local"}],
                "messages": channel_messages,
            }
        },
        "operations": operations,
        "components": {"schemas": components_schemas, "messages": messages},
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dumps(build()))
