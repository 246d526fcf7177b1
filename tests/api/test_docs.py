"""The repository carries its contract: every relative link of README.md and docs/*.md resolves
inside the repository (anchors included); the OpenAPI document reads well and lists every error
code; every REST response, success or error, is encoded by the one JSON encoder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from api import encoding
from api.openapi import error_codes, summarise
from astrolive.cli import openapi_document

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)}


def _links(page: Path) -> list[str]:
    return _LINK.findall(_CODE_SPAN.sub("", _FENCE.sub("", page.read_text())))


def test_the_pages_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"README.md", "contract.md", "events.md", "guide.md"} <= names
    assert (ROOT / "docs" / "openapi.json").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no such heading")
    assert broken == []


def test_readme_sends_nobody_outside_the_clone() -> None:
    text = "\n".join(p.read_text() for p in PAGES)
    assert "../shared" not in text
    assert "DESIGN.md" not in text


def test_events_page_names_every_event_of_the_asyncapi_document() -> None:
    events = (ROOT / "docs" / "events.md").read_text()
    asyncapi = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    names = {m["name"] for m in asyncapi["components"]["messages"].values()}
    assert names
    assert sorted(n for n in names if f"`{n}`" not in events) == []


def test_the_link_checker_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n[a](nowhere.md) [b](#title) [c](#missing) `[d](x)`\n")
    assert _links(page) == ["nowhere.md", "#title", "#missing"]
    assert _anchors(page) == {"title"}


# --- the OpenAPI document ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(openapi_document())
    return doc


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, ms in document["paths"].items() for m, op in ms.items()]


def test_descriptions_are_dedented_prose(document: dict[str, Any]) -> None:
    for path, method, op in _operations(document):
        description = op.get("description", "")
        # Indented lines render as code blocks; the route line repeats the path.
        assert not re.search(r"^ {4}", description, re.MULTILINE), (method, path)
        assert not description.startswith(("GET /", "POST /", "PUT /", "PATCH /", "DELETE /"))
        assert "\n" not in op["summary"], (method, path)


def test_every_error_response_lists_its_codes(document: dict[str, Any]) -> None:
    missing = [
        (method, path, status)
        for path, method, op in _operations(document)
        for status, response in op["responses"].items()
        if status.startswith(("4", "5")) and "$ref" not in response
        if not response.get("x-error-codes")
    ]
    assert missing == []
    recharge = document["paths"]["/v1/wallet/recharges"]["post"]["responses"]
    assert recharge["409"]["x-error-codes"] == ["idempotency_conflict", "request_in_progress"]
    assert "idempotency_conflict" in recharge["409"]["description"]
    create = document["paths"]["/v1/consultations"]["post"]["responses"]
    assert {"astrologer_busy", "astrologer_offline"} <= set(create["409"]["x-error-codes"])
    assert create["402"]["x-error-codes"] == ["insufficient_balance"]


def test_headers_are_documented(document: dict[str, Any]) -> None:
    headers = document["components"]["headers"]
    assert {"X-Request-ID", "Retry-After"} <= set(headers)
    for path, method, op in _operations(document):
        for status, response in op["responses"].items():
            if "$ref" in response:
                continue
            assert "X-Request-ID" in response["headers"], (method, path, status)
            if status == "429":
                assert "Retry-After" in response["headers"], (method, path)
    internal = document["components"]["responses"]["Internal"]
    assert internal["x-error-codes"] == ["internal"]


def test_error_codes_are_read_from_a_routes_error_text() -> None:
    assert error_codes(409, "astrologer_busy, slot_taken, invalid_state (not ended)") == [
        "astrologer_busy",
        "slot_taken",
        "invalid_state",
    ]
    assert error_codes(409, "not_active: the session never started") == ["not_active"]
    assert error_codes(404, "not a participant") == []
    assert summarise("Start a recharge: a pending\nrecharge. Then more.", "x") == (
        "Start a recharge: a pending recharge"
    )


# --- one JSON encoder --------------------------------------------------------------------------


class _Sample(BaseModel):
    text: str
    n: int


def test_models_and_plain_data_encode_alike() -> None:
    data = {"text": "नमस्ते, ₹500", "n": 1}
    by_model = encoding.json_response(_Sample(text="नमस्ते, ₹500", n=1)).body
    by_data = encoding.json_response(data).body
    assert by_model == by_data == '{"text":"नमस्ते, ₹500","n":1}'.encode()


async def test_error_bodies_are_encoded_like_success_bodies(
    client: TestClient[Any, Any],
) -> None:
    ok = await client.get("/v1/recharge-packs")
    assert ok.status == 200
    ok_raw = await ok.read()
    # An unknown field named in Hindi comes back, in Hindi, in the 422's details.fields.
    refused = await client.post("/v1/auth/otp", json={"phone": "+919000000001", "नाम": "x"})
    assert refused.status == 422
    raw = await refused.read()
    assert "नाम".encode() in raw
    assert b"\\u" not in raw
    for body in (ok_raw, raw):
        assert json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")).encode() == (
            body
        )
    assert refused.headers["Content-Type"] == ok.headers["Content-Type"]
    assert refused.headers["X-Request-ID"]
    missing = await client.get("/v1/no-such-route")
    assert missing.status == 404
    assert (await missing.read()) == b'{"error":{"code":"not_found","message":"no such route"}}'
