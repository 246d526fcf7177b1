"""GET/PATCH /v1/me, the avatar upload, and the local file store's signed URLs."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient

from tests.factories import auth, make_user

Client = TestClient[Any, Any]


def _local(url: str) -> str:
    """The path and query of a URL made with PUBLIC_BASE_URL, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_get_me_shape(client: Client, db: Any, settings: Any) -> None:
    user = await make_user(db, name="Asha")
    resp = await client.get("/v1/me", headers=await auth(db, settings, user))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {
        "id", "phone", "role", "name", "gender", "birth_date", "birth_time", "birth_place",
        "languages", "avatar_url", "created_at", "email", "email_verified", "locale",
    }  # fmt: skip
    assert body["id"] == str(user.id)
    assert body["name"] == "Asha"
    assert body["created_at"].endswith("Z")
    assert (await client.get("/v1/me")).status == 401


async def test_patch_me_sets_and_clears_fields(client: Client, db: Any, settings: Any) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    resp = await client.patch(
        "/v1/me",
        json={
            "name": "Ravi Kumar",
            "gender": "male",
            "birth_date": "1990-04-21",
            "birth_time": "06:30",
            "birth_place": "Varanasi, India",
            "languages": ["hi", "EN", "hi"],
        },
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["birth_date"] == "1990-04-21"
    assert body["birth_time"] == "06:30"
    assert body["languages"] == ["hi", "en"]
    # Only what is sent changes; null clears.
    resp = await client.patch("/v1/me", json={"birth_time": None}, headers=headers)
    body = await resp.json()
    assert body["birth_time"] is None
    assert body["name"] == "Ravi Kumar"
    assert body["birth_date"] == "1990-04-21"


async def test_patch_me_validates_birth_details(client: Client, db: Any, settings: Any) -> None:
    headers = await auth(db, settings, await make_user(db))
    bad: list[dict[str, Any]] = [
        {"birth_date": "21-04-1990"},
        {"birth_date": "1990-02-30"},
        {"birth_date": "2999-01-01"},
        {"birth_date": "1850-01-01"},
        {"birth_time": "25:00"},
        {"birth_time": "6:30"},
        {"gender": "unknown"},
        {"languages": ["english"]},
        {"name": ""},
        {"phone": "+919999999999"},  # the phone is the identity: not editable here
        {"role": "admin"},
    ]
    for patch in bad:
        resp = await client.patch("/v1/me", json=patch, headers=headers)
        assert resp.status == 422, patch
        assert set((await resp.json())["error"]["details"]["fields"]) == set(patch), patch


async def test_avatar_upload_through_the_local_store(
    client: Client, db: Any, settings: Any
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    image = b"\xff\xd8\xff\xe0 jpeg bytes" * 10
    resp = await client.post(
        "/v1/me/avatar", json={"content_type": "image/jpeg", "size": len(image)}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    up = await resp.json()
    assert up["method"] == "PUT"
    assert up["key"].startswith(f"avatars/{user.id}/")
    assert up["headers"]["Content-Type"] == "image/jpeg"

    # Another content type or size is refused by the signature.
    wrong = await client.put(
        _local(up["upload_url"]), data=image, headers={"Content-Type": "text/html"}
    )
    assert wrong.status == 403
    assert (await wrong.json())["error"]["code"] == "invalid_signature"
    short = await client.put(
        _local(up["upload_url"]), data=image[:-1], headers={"Content-Type": "image/jpeg"}
    )
    assert short.status == 403
    tampered = _local(up["upload_url"]).replace("ct=image%2Fjpeg", "ct=text%2Fhtml")
    resp = await client.put(tampered, data=image, headers={"Content-Type": "text/html"})
    assert resp.status == 403

    ok = await client.put(_local(up["upload_url"]), data=image, headers=up["headers"])
    assert ok.status == 200, await ok.text()
    me = await (await client.get("/v1/me", headers=headers)).json()
    got = await client.get(_local(me["avatar_url"]))
    assert got.status == 200
    assert await got.read() == image
    assert got.headers["Content-Type"] == "image/jpeg"
    # A download URL does not upload, and a forged one reads nothing.
    assert (await client.put(_local(me["avatar_url"]), data=b"x")).status == 403
    forged = _local(me["avatar_url"]).replace("sig=", "sig=x")
    assert (await client.get(forged)).status == 403


async def test_avatar_must_be_a_small_image(client: Client, db: Any, settings: Any) -> None:
    headers = await auth(db, settings, await make_user(db))
    for body, field in [
        ({"content_type": "application/pdf", "size": 100}, "content_type"),
        ({"content_type": "text/html", "size": 100}, "content_type"),
        ({"content_type": "image/png", "size": 5 * 1024 * 1024 + 1}, "size"),
        ({"content_type": "image/png", "size": 0}, "size"),
    ]:
        resp = await client.post("/v1/me/avatar", json=body, headers=headers)
        assert resp.status == 422, body
        assert field in (await resp.json())["error"]["details"]["fields"]


async def test_large_upload_is_streamed_past_the_json_body_cap(
    client: Client, db: Any, settings: Any
) -> None:
    headers = await auth(db, settings, await make_user(db))
    image = b"p" * (3 * 1024 * 1024)  # over MAX_BODY_BYTES (1 MiB), under the 5 MiB avatar cap
    up = await (
        await client.post(
            "/v1/me/avatar", json={"content_type": "image/png", "size": len(image)}, headers=headers
        )
    ).json()
    resp = await client.put(_local(up["upload_url"]), data=io.BytesIO(image), headers=up["headers"])
    assert resp.status == 200, await resp.text()
