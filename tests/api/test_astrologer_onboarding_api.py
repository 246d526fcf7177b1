"""Astrologer onboarding and admin verification: profile, documents, the review queue, decisions,
roles, and other people's resources."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient

from tests.auth.support import bearer, sign_in
from tests.factories import auth, make_user

Client = TestClient[Any, Any]

PROFILE = {
    "display_name": "Acharya Test",
    "bio": "Vedic astrology for ten years.",
    "skills": ["Vedic", "kundli", "vedic"],
    "languages": ["hi", "en"],
    "experience_years": 10,
    "rates": {"chat": 1500, "voice": 2000, "video": None},
}


def _local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_new_astrologer_is_pending_and_unlisted_until_approved(
    client: Client, db: Any, settings: Any
) -> None:
    # Signs up as an astrologer through the OTP flow.
    tokens = await sign_in(client, "+919000000002", role="astrologer")
    me = bearer(tokens)
    resp = await client.put("/v1/astrologer/profile", json=PROFILE, headers=me)
    assert resp.status == 200, await resp.text()
    profile = await resp.json()
    assert profile["verification"] == "pending"
    assert profile["skills"] == ["vedic", "kundli"]
    # `question` (issue 16): null when written questions are not offered.
    assert profile["rates"] == {"chat": 1500, "voice": 2000, "video": None, "question": None}
    astrologer_id = profile["id"]
    assert astrologer_id == tokens["user"]["id"]

    async def approved_ids() -> set[str]:
        rows = await db.fetch(
            "SELECT user_id FROM astrologer_profiles WHERE verification = 'approved'"
        )
        return {str(r["user_id"]) for r in rows}

    assert astrologer_id not in await approved_ids()

    # A document for the review.
    pdf = b"%PDF-1.4 fake"
    resp = await client.post(
        "/v1/astrologer/documents",
        json={"kind": "id_proof", "content_type": "application/pdf", "size": len(pdf)},
        headers=me,
    )
    assert resp.status == 200, await resp.text()
    up = await resp.json()
    assert up["key"].startswith(f"documents/{astrologer_id}/")
    resp = await client.put(_local(up["upload_url"]), data=pdf, headers=up["headers"])
    assert resp.status == 200

    # The admin queue shows it with a working document link.
    admin = await make_user(db, role="admin")
    admin_h = await auth(db, settings, admin)
    resp = await client.get("/v1/admin/astrologers?verification=pending", headers=admin_h)
    assert resp.status == 200, await resp.text()
    queue = await resp.json()
    (item,) = [i for i in queue["items"] if i["id"] == astrologer_id]
    assert item["phone"] == "+919000000002"
    (doc,) = item["documents"]
    assert doc["kind"] == "id_proof"
    assert doc["id"] == up["document_id"]
    got = await client.get(_local(doc["download_url"]))
    assert got.status == 200
    assert await got.read() == pdf

    # A rejection needs a reason, which the astrologer sees; saving again resubmits.
    resp = await client.post(
        f"/v1/admin/astrologers/{astrologer_id}/verification",
        json={"decision": "reject"},
        headers=admin_h,
    )
    assert resp.status == 422
    resp = await client.post(
        f"/v1/admin/astrologers/{astrologer_id}/verification",
        json={"decision": "reject", "reason": "ID proof unreadable"},
        headers=admin_h,
    )
    assert resp.status == 200
    mine = await (await client.get("/v1/astrologer/profile", headers=me)).json()
    assert mine["verification"] == "rejected"
    assert mine["verification_reason"] == "ID proof unreadable"
    assert astrologer_id not in await approved_ids()
    resp = await client.put("/v1/astrologer/profile", json=PROFILE, headers=me)
    assert (await resp.json())["verification"] == "pending"

    resp = await client.post(
        f"/v1/admin/astrologers/{astrologer_id}/verification",
        json={"decision": "approve"},
        headers=admin_h,
    )
    assert resp.status == 200
    assert (await resp.json())["verification"] == "approved"
    assert astrologer_id in await approved_ids()
    queue = await (await client.get("/v1/admin/astrologers", headers=admin_h)).json()
    assert astrologer_id not in {i["id"] for i in queue["items"]}
    approved = await (
        await client.get("/v1/admin/astrologers?verification=approved", headers=admin_h)
    ).json()
    assert astrologer_id in {i["id"] for i in approved["items"]}

    # Editing an approved profile keeps it approved.
    resp = await client.put(
        "/v1/astrologer/profile", json={**PROFILE, "bio": "Updated."}, headers=me
    )
    assert (await resp.json())["verification"] == "approved"

    audit = await db.fetch(
        "SELECT actor_id, action, target_id, reason FROM audit_log "
        "WHERE target_type = 'astrologer' ORDER BY id"
    )
    assert [(a["action"], a["reason"]) for a in audit] == [
        ("astrologer.reject", "ID proof unreadable"),
        ("astrologer.approve", None),
    ]
    assert all(a["actor_id"] == admin.id for a in audit)
    assert all(a["target_id"] == astrologer_id for a in audit)


async def test_rates_must_be_within_bounds(client: Client, db: Any, settings: Any) -> None:
    headers = await auth(db, settings, await make_user(db, role="astrologer"))
    cases = [
        ({"chat": settings.min_rate - 1, "voice": None, "video": None}, "rates.chat"),
        ({"chat": 1000, "voice": settings.max_rate + 1, "video": None}, "rates.voice"),
        ({"chat": None, "voice": None, "video": None}, "rates"),
        ({"chat": 1000, "voice": None, "video": None, "audio": 5}, "rates.audio"),
    ]
    for rates, field in cases:
        resp = await client.put(
            "/v1/astrologer/profile", json={**PROFILE, "rates": rates}, headers=headers
        )
        assert resp.status == 422, rates
        assert field in (await resp.json())["error"]["details"]["fields"], rates
    resp = await client.put(
        "/v1/astrologer/profile", json={**PROFILE, "experience_years": 99}, headers=headers
    )
    assert resp.status == 422


async def test_documents_are_pdf_or_image_up_to_10_mib(
    client: Client, db: Any, settings: Any
) -> None:
    headers = await auth(db, settings, await make_user(db, role="astrologer"))
    for body in [
        {"kind": "id_proof", "content_type": "application/zip", "size": 10},
        {"kind": "id_proof", "content_type": "application/pdf", "size": 10 * 1024 * 1024 + 1},
        {"kind": "selfie", "content_type": "image/png", "size": 10},
    ]:
        resp = await client.post("/v1/astrologer/documents", json=body, headers=headers)
        assert resp.status == 422, body
    ok = {"kind": "certificate", "content_type": "image/png", "size": 10 * 1024 * 1024}
    assert (await client.post("/v1/astrologer/documents", json=ok, headers=headers)).status == 200


async def test_roles_are_enforced(client: Client, db: Any, settings: Any) -> None:
    user_h = await auth(db, settings, await make_user(db))
    astro_h = await auth(db, settings, await make_user(db, role="astrologer"))
    resp = await client.put("/v1/astrologer/profile", json=PROFILE, headers=user_h)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    doc = {"kind": "id_proof", "content_type": "application/pdf", "size": 10}
    assert (await client.post("/v1/astrologer/documents", json=doc, headers=user_h)).status == 403
    assert (await client.get("/v1/admin/astrologers", headers=astro_h)).status == 403
    assert (await client.get("/v1/admin/astrologers", headers=user_h)).status == 403
    some_id = "00000000-0000-0000-0000-000000000001"
    resp = await client.post(
        f"/v1/admin/astrologers/{some_id}/verification",
        json={"decision": "approve"},
        headers=astro_h,
    )
    assert resp.status == 403
    resp = await client.post(
        f"/v1/admin/users/{some_id}/block", json={"reason": "x"}, headers=user_h
    )
    assert resp.status == 403
    assert (await client.get("/v1/admin/astrologers")).status == 401


async def test_another_astrologers_document_is_404(client: Client, db: Any, settings: Any) -> None:
    owner_h = await auth(db, settings, await make_user(db, role="astrologer"))
    other_h = await auth(db, settings, await make_user(db, role="astrologer"))
    doc = {"kind": "id_proof", "content_type": "application/pdf", "size": 10}
    up = await (await client.post("/v1/astrologer/documents", json=doc, headers=owner_h)).json()
    doc_id = up["document_id"]
    assert (await client.get(f"/v1/astrologer/documents/{doc_id}", headers=owner_h)).status == 200
    resp = await client.get(f"/v1/astrologer/documents/{doc_id}", headers=other_h)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    listed = await (await client.get("/v1/astrologer/documents", headers=other_h)).json()
    assert listed["items"] == []
    assert (await client.get("/v1/astrologer/documents/not-a-uuid", headers=owner_h)).status == 404


async def test_unknown_astrologer_decision_is_404(client: Client, db: Any, settings: Any) -> None:
    admin_h = await auth(db, settings, await make_user(db, role="admin"))
    resp = await client.post(
        "/v1/admin/astrologers/00000000-0000-0000-0000-000000000001/verification",
        json={"decision": "approve"},
        headers=admin_h,
    )
    assert resp.status == 404


async def test_queue_is_paginated_oldest_first(client: Client, db: Any, settings: Any) -> None:
    from tests.factories import make_astrologer

    made = [(await make_astrologer(db, verification="pending")).id for _ in range(5)]
    admin_h = await auth(db, settings, await make_user(db, role="admin"))
    seen: list[str] = []
    url = "/v1/admin/astrologers?limit=2"
    while True:
        page = await (await client.get(url, headers=admin_h)).json()
        seen += [i["id"] for i in page["items"]]
        if not page["next_cursor"]:
            break
        url = f"/v1/admin/astrologers?limit=2&cursor={page['next_cursor']}"
    assert seen == [str(i) for i in made]
    resp = await client.get("/v1/admin/astrologers?cursor=garbage", headers=admin_h)
    assert resp.status == 422
