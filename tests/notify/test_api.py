"""REST: the inbox (newest first, keyset pages, unread count, mark read), devices, follows."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

import notify
from core.services import Services
from core.settings import Settings
from notify import follows
from tests.factories import auth, make_astrologer, make_user


async def _fill_inbox(services: Services, user_id: uuid.UUID, n: int) -> None:
    for i in range(n):
        await notify.notify(
            services, user_id, "refund_issued", {"amount": 100 * (i + 1)}, key=f"refund:{i}"
        )


async def test_inbox_is_newest_first_paginated_with_unread_count(
    client: TestClient[Any, Any], services: Services, settings: Settings
) -> None:
    user = await make_user(services.db)
    other = await make_user(services.db)
    await _fill_inbox(services, user.id, 5)
    await _fill_inbox(services, other.id, 2)
    headers = await auth(services.db, settings, user)

    resp = await client.get("/v1/notifications?limit=2", headers=headers)
    assert resp.status == 200
    page1 = await resp.json()
    assert page1["unread_count"] == 5
    assert [i["data"]["amount"] for i in page1["items"]] == [500, 400]
    first = page1["items"][0]
    assert set(first) == {"id", "event", "title", "body", "data", "read", "created_at"}
    assert first["body"] == "₹5.00 was refunded to your wallet."
    assert first["read"] is False
    assert first["created_at"].endswith("Z")

    # A notification arriving between pages neither shifts nor repeats the older ones.
    await notify.notify(services, user.id, "refund_issued", {"amount": 9900}, key="refund:new")
    seen = [i["id"] for i in page1["items"]]
    cursor = page1["next_cursor"]
    body: dict[str, Any] = page1
    while cursor:
        resp = await client.get(f"/v1/notifications?limit=2&cursor={cursor}", headers=headers)
        body = await resp.json()
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 5
    assert body["unread_count"] == 6


async def test_mark_read_by_ids_and_up_to(
    client: TestClient[Any, Any], services: Services, settings: Settings
) -> None:
    user = await make_user(services.db)
    other = await make_user(services.db)
    await _fill_inbox(services, user.id, 4)
    await _fill_inbox(services, other.id, 1)
    headers = await auth(services.db, settings, user)
    items = (await (await client.get("/v1/notifications", headers=headers)).json())["items"]
    others = (
        await (
            await client.get("/v1/notifications", headers=await auth(services.db, settings, other))
        ).json()
    )["items"]

    resp = await client.post(
        "/v1/notifications/read", json={"ids": [items[0]["id"], others[0]["id"]]}, headers=headers
    )
    assert resp.status == 200
    assert await resp.json() == {"marked": 1, "unread_count": 3}  # another's id is ignored

    # up_to the second newest: it and everything older.
    resp = await client.post(
        "/v1/notifications/read", json={"up_to": items[1]["id"]}, headers=headers
    )
    assert await resp.json() == {"marked": 3, "unread_count": 0}
    listed = (await (await client.get("/v1/notifications", headers=headers)).json())["items"]
    assert all(i["read"] for i in listed)

    resp = await client.post(
        "/v1/notifications/read", json={"up_to": others[0]["id"]}, headers=headers
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    other_unread = await services.db.fetchval(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL", other.id
    )
    assert other_unread == 1


async def test_inbox_bad_inputs_are_422(
    client: TestClient[Any, Any], services: Services, settings: Settings
) -> None:
    headers = await auth(services.db, settings, await make_user(services.db))
    for query in ("limit=0", "limit=101", "limit=x", "cursor=garbage", "cursor=WyJ4Il0", "nope=1"):
        resp = await client.get(f"/v1/notifications?{query}", headers=headers)
        assert resp.status == 422, query
        assert (await resp.json())["error"]["code"] == "validation_error"
    bad: list[dict[str, Any]] = [
        {},
        {"ids": []},
        {"ids": ["not-a-uuid"]},
        {"ids": [str(uuid.uuid4())], "up_to": str(uuid.uuid4())},
        {"up_to": 5},
        {"extra": 1},
    ]
    for body in bad:
        resp = await client.post("/v1/notifications/read", json=body, headers=headers)
        assert resp.status == 422, body
    resp = await client.get("/v1/notifications")
    assert resp.status == 401


async def test_devices_register_idempotently_and_move_between_accounts(
    client: TestClient[Any, Any], services: Services, settings: Settings
) -> None:
    asha = await make_user(services.db)
    ravi = await make_user(services.db)
    h_asha = await auth(services.db, settings, asha)
    h_ravi = await auth(services.db, settings, ravi)
    body = {"platform": "android", "push_token": "fcm-token-1:APA91b"}

    first = await client.post("/v1/devices", json=body, headers=h_asha)
    assert first.status == 201
    again = await client.post("/v1/devices", json=body, headers=h_asha)
    assert again.status == 201
    assert (await first.json())["id"] == (await again.json())["id"]
    assert await services.db.fetchval("SELECT count(*) FROM devices") == 1

    # Ravi signs in on the same phone: the install's token is now his.
    moved = await client.post("/v1/devices", json=body, headers=h_ravi)
    assert (await moved.json())["id"] == (await first.json())["id"]
    owner = await services.db.fetchval(
        "SELECT user_id FROM devices WHERE push_token = $1", body["push_token"]
    )
    assert owner == ravi.id

    assert (await client.delete("/v1/devices/fcm-token-1:APA91b", headers=h_asha)).status == 404
    assert (await client.delete("/v1/devices/fcm-token-1:APA91b", headers=h_ravi)).status == 204
    assert await services.db.fetchval("SELECT count(*) FROM devices") == 0


async def test_device_bad_inputs_are_422(
    client: TestClient[Any, Any], services: Services, settings: Settings
) -> None:
    headers = await auth(services.db, settings, await make_user(services.db))
    bad = [
        {},
        {"platform": "android"},
        {"push_token": "t"},
        {"platform": "blackberry", "push_token": "t"},
        {"platform": "ios", "push_token": ""},
        {"platform": "ios", "push_token": "has space"},
        {"platform": "ios", "push_token": "x" * 4097},
        {"platform": "ios", "push_token": "t", "extra": True},
        {"platform": "ios", "push_token": 5},
    ]
    for body in bad:
        resp = await client.post("/v1/devices", json=body, headers=headers)
        assert resp.status == 422, body
        assert "fields" in (await resp.json())["error"]["details"]
    resp = await client.post(
        "/v1/devices", data="{nope", headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 400


async def test_follow_and_unfollow(
    client: TestClient[Any, Any], services: Services, settings: Settings
) -> None:
    user = await make_user(services.db)
    headers = await auth(services.db, settings, user)
    astrologer = await make_astrologer(services.db)
    pending = await make_astrologer(services.db, verification="pending")

    url = f"/v1/astrologers/{astrologer.id}/follow"
    assert (await client.post(url, headers=headers)).status == 204
    assert (await client.post(url, headers=headers)).status == 204  # again: no change
    assert await follows.is_following(services.db, user.id, astrologer.id)
    assert await services.db.fetchval("SELECT count(*) FROM follows") == 1

    for target in (pending.id, uuid.uuid4(), user.id, "not-a-uuid"):
        resp = await client.post(f"/v1/astrologers/{target}/follow", headers=headers)
        assert resp.status == 404, target
    # Astrologers and admins do not follow (role "user" only).
    h_astro = await auth(services.db, settings, pending)
    assert (await client.post(url, headers=h_astro)).status == 403
    assert (await client.post(url)).status == 401

    assert (await client.delete(url, headers=headers)).status == 204
    assert (await client.delete(url, headers=headers)).status == 204
    assert not await follows.is_following(services.db, user.id, astrologer.id)
