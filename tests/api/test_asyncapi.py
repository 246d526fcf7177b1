"""The AsyncAPI document: generated from core/events.py, complete, consistent, and committed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import pytest
from aiohttp.test_utils import TestClient

from api import asyncapi
from core import events

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "asyncapi.json"
SOURCES = ["api", "billing", "consultations", "core", "live", "notify", "questions", "realtime",
           "support", "workers", "auth"]  # fmt: skip
# How the code names an event it sends: emit("x", ...), deliver("x", ...), X_EVENT = "x", a
# batch item append(("x", ...)), and the namespace's signalling relays rtc_relay("x").
EMITTED = re.compile(
    r"""(?:\.(?:emit|deliver)\(\s*|_EVENT\s*=\s*|rtc_relay\(\s*|append\(\(\s*)"([a-z_]+:[a-z_:]+|presence)\""""
)


def test_committed_document_is_up_to_date() -> None:
    """Regenerate with `.venv/bin/python -m api.asyncapi > docs/asyncapi.json` when this fails."""
    assert DOC.read_text() == asyncapi.dumps(asyncapi.build())


async def test_served_document_matches(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/asyncapi.json")
    assert response.status == 200
    assert await response.json() == asyncapi.build()


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_event_has_a_message_and_a_send_operation_and_refs_resolve() -> None:
    doc = asyncapi.build()
    assert doc["asyncapi"] == "3.0.0"
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == set(events.BY_NAME)
    assert len(doc["operations"]) == len(events.CATALOGUE)
    assert all(op["action"] == "send" for op in doc["operations"].values())
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc))
    assert refs
    for ref in refs:
        _resolve(doc, ref)  # KeyError when dangling


def test_every_event_the_code_sends_is_in_the_catalogue() -> None:
    sent: set[str] = set()
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            sent.update(EMITTED.findall(path.read_text()))
    assert EMITTED.findall('await self.emit(\n  "chat:read", {})') == ["chat:read"]  # it finds
    missing = sorted(sent - set(events.BY_NAME) - {"rtc:echo:stop"})
    assert missing == [], f"add these events to core/events.py: {missing}"


SAMPLES: list[events.ServerEvent] = [
    events.ChatMessage(
        id="6f1c1f7e-8a55-4a4c-9d4f-0b7d1c0a9e11",
        consultation_id="0b7d1c0a-9e11-4a4c-9d4f-6f1c1f7e8a55",
        seq=3,
        sender_id="9d4f0b7d-1c0a-4a4c-9e11-6f1c1f7e8a55",
        text="namaste",
        sent_at="2026-11-29T17:00:00.123Z",
    ),
    events.RtcIce.model_validate({"consultation_id": "c", "candidate": None, "from": "u"}),
    events.SessionTick(
        consultation_id="c",
        minute=2,
        charged=200,
        amount=100,
        free=False,
        balance=800,
        minutes_left=8,
    ),
    events.Presence(astrologer_id="a", status="busy"),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda e: e.name)
def test_payloads_match_their_published_schema(sample: events.ServerEvent) -> None:
    doc = asyncapi.build()
    schema = {**_resolve(doc, f"#/components/schemas/{type(sample).__name__}")}
    schema["components"] = doc["components"]  # so that nested $refs resolve
    jsonschema.validate(sample.payload(), schema)
    assert "attachment" not in sample.payload()  # unset optional fields are absent


def test_bad_payloads_are_refused_where_they_are_built() -> None:
    with pytest.raises(ValueError, match="status"):
        events.Presence(astrologer_id="a", status="away")  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(ValueError, match="sent_at"):
        events.ChatMessage(
            id="i", consultation_id="c", seq=1, sender_id="s", text="t", sent_at="yesterday"
        )
    with pytest.raises(ValueError, match="extra"):
        events.ChatTyping(consultation_id="c", user_id="u", balance=5)  # type: ignore[call-arg]  # the point of the test
