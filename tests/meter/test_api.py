"""POST /v1/consultations/{id}/end and the per-minute breakdown over HTTP."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from core.services import Services
from core.settings import Settings
from db.identity import get_user
from tests.factories import auth, make_user
from tests.meter.support import accepted_consultation, start


async def _headers(db: asyncpg.Pool[Any], settings: Settings, user_id: Any) -> dict[str, str]:
    user = await get_user(db, user_id)
    assert user is not None
    return await auth(db, settings, user)


async def test_end_over_rest_and_the_breakdown(
    client: TestClient[Any, Any], services: Services, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=1_000)
    services.settings.billing_minute_seconds = 30.0  # one minute, even on a slow machine
    user_h = await _headers(db, settings, s.user_id)
    astro_h = await _headers(db, settings, s.astrologer_id)
    stranger = await make_user(db)
    stranger_h = await auth(db, settings, stranger)
    admin = await make_user(db, role="admin")
    admin_h = await auth(db, settings, admin)

    # A requested consultation cannot be ended (it can be cancelled): 409 not_active.
    await db.execute("UPDATE consultations SET status = 'requested' WHERE id = $1", s.id)
    resp = await client.post(f"/v1/consultations/{s.id}/end", headers=user_h)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "not_active"
    await db.execute("UPDATE consultations SET status = 'accepted' WHERE id = $1", s.id)

    await start(services, s)
    resp = await client.post(f"/v1/consultations/{s.id}/end", headers=stranger_h)
    assert resp.status == 404
    resp = await client.post(f"/v1/consultations/{s.id}/end", headers=admin_h)
    assert resp.status == 403
    resp = await client.post("/v1/consultations/not-a-uuid/end", headers=user_h)
    assert resp.status == 404
    resp = await client.post(f"/v1/consultations/{s.id}/end")
    assert resp.status == 401

    resp = await client.post(f"/v1/consultations/{s.id}/end", headers=user_h)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["status"], body["end_reason"], body["billed_minutes"]) == (
        "completed",
        "user_ended",
        1,
    )
    again = await client.post(f"/v1/consultations/{s.id}/end", headers=astro_h)
    assert again.status == 200
    assert (await again.json())["end_reason"] == "user_ended"

    lines = (await (await client.get(f"/v1/consultations/{s.id}/meter", headers=user_h)).json())[
        "lines"
    ]
    assert [line["kind"] for line in lines] == ["start", "charge", "end"]
    charge = lines[1]
    assert (charge["minute"], charge["amount"], charge["balance_after"]) == (1, 100, 900)
    assert charge["astrologer_share"] is None  # not the user's business
    astro_lines = (
        await (await client.get(f"/v1/consultations/{s.id}/meter", headers=astro_h)).json()
    )["lines"]
    assert astro_lines[1]["balance_after"] is None
    assert astro_lines[1]["astrologer_share"] == 60
    admin_lines = (
        await (await client.get(f"/v1/consultations/{s.id}/meter", headers=admin_h)).json()
    )["lines"]
    assert admin_lines[1]["balance_after"] == 900
    assert admin_lines[1]["astrologer_share"] == 60
    resp = await client.get(f"/v1/consultations/{s.id}/meter", headers=stranger_h)
    assert resp.status == 404


async def test_get_consultation_carries_the_breakdown(
    client: TestClient[Any, Any], services: Services, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=1_000)
    services.settings.billing_minute_seconds = 30.0  # one minute, even on a slow machine
    user_h = await _headers(db, settings, s.user_id)
    await start(services, s)
    await client.post(f"/v1/consultations/{s.id}/end", headers=user_h)
    body = await (await client.get(f"/v1/consultations/{s.id}", headers=user_h)).json()
    assert [line["kind"] for line in body["breakdown"]] == ["start", "charge", "end"]
    assert body["breakdown"][-1]["reason"] == "user_ended"
    listed = await (await client.get("/v1/consultations", headers=user_h)).json()
    assert listed["items"][0]["breakdown"] is None  # only the single view carries it
