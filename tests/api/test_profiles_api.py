"""Birth profiles (/v1/me/profiles) and their place in /v1/me: CRUD, the limit of 20, another
person's profile is 404, the self profile and PATCH /v1/me stay one thing, legacy plaintext."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.factories import auth, make_user

Client = TestClient[Any, Any]

SPOUSE = {
    "name": "Meera",
    "relation": "spouse",
    "gender": "female",
    "birth_date": "1992-05-06",
    "birth_time": "21:10",
    "birth_place": "Nashik, India",
    "latitude": 19.99,
    "longitude": 73.79,
    "timezone": "Asia/Kolkata",
}


async def _code(resp: Any) -> str:
    return str((await resp.json())["error"]["code"])


async def test_crud_and_another_persons_profile_is_404(
    client: Client, db: Any, settings: Any
) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    resp = await client.post("/v1/me/profiles", json=SPOUSE, headers=headers)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert {k: created[k] for k in SPOUSE} == SPOUSE
    pid = created["id"]
    resp = await client.patch(
        f"/v1/me/profiles/{pid}", json={"birth_time": None, "name": "Meera R"}, headers=headers
    )
    assert resp.status == 200
    body = await resp.json()
    assert (body["name"], body["birth_time"], body["birth_place"]) == (
        "Meera R",
        None,
        "Nashik, India",
    )
    listed = await (await client.get("/v1/me/profiles", headers=headers)).json()
    assert [p["id"] for p in listed["items"]] == [pid]
    # Another person: not found, and nothing changes.
    stranger = await auth(db, settings, await make_user(db))
    assert (
        await client.patch(f"/v1/me/profiles/{pid}", json={"name": "x"}, headers=stranger)
    ).status == 404
    assert (await client.delete(f"/v1/me/profiles/{pid}", headers=stranger)).status == 404
    assert (await (await client.get("/v1/me/profiles", headers=stranger)).json())["items"] == []
    resp = await client.delete(f"/v1/me/profiles/{pid}", headers=headers)
    assert resp.status == 204
    assert (await client.delete(f"/v1/me/profiles/{pid}", headers=headers)).status == 404
    assert (
        await client.patch("/v1/me/profiles/not-a-uuid", json={}, headers=headers)
    ).status == 404


async def test_validation(client: Client, db: Any, settings: Any) -> None:
    headers = await auth(db, settings, await make_user(db))
    for bad in (
        {**SPOUSE, "relation": "cousin"},
        {**SPOUSE, "birth_date": "2999-01-01"},
        {**SPOUSE, "birth_time": "25:00"},
        {**SPOUSE, "latitude": 91},
        {**SPOUSE, "timezone": "not a zone"},
        {k: v for k, v in SPOUSE.items() if k != "birth_place"},
        {**SPOUSE, "extra": 1},
    ):
        resp = await client.post("/v1/me/profiles", json=bad, headers=headers)
        assert resp.status == 422, bad
    resp = await client.post(
        "/v1/me/profiles", json={**SPOUSE, "latitude": 10, "longitude": None}, headers=headers
    )
    assert resp.status == 422
    assert await db.fetchval("SELECT count(*) FROM birth_profiles") == 0


async def test_at_most_twenty(client: Client, db: Any, settings: Any) -> None:
    headers = await auth(db, settings, await make_user(db))
    for n in range(20):
        resp = await client.post(
            "/v1/me/profiles",
            json={**SPOUSE, "relation": "friend", "name": f"F{n}"},
            headers=headers,
        )
        assert resp.status == 201
    resp = await client.post("/v1/me/profiles", json=SPOUSE, headers=headers)
    assert (resp.status, await _code(resp)) == (409, "too_many_profiles")
    assert await db.fetchval("SELECT count(*) FROM birth_profiles") == 20


async def test_self_profile_is_the_accounts_birth_details(
    client: Client, db: Any, settings: Any
) -> None:
    user = await make_user(db, name="Asha")
    headers = await auth(db, settings, user)
    resp = await client.patch(
        "/v1/me",
        json={"birth_date": "1990-04-21", "birth_time": "06:30", "birth_place": "Varanasi"},
        headers=headers,
    )
    assert resp.status == 200
    [own] = (await (await client.get("/v1/me/profiles", headers=headers)).json())["items"]
    assert (own["relation"], own["name"], own["birth_date"], own["birth_place"]) == (
        "self",
        "Asha",
        "1990-04-21",
        "Varanasi",
    )
    # Editing the self profile shows in /v1/me, and the other way round.
    await client.patch(
        f"/v1/me/profiles/{own['id']}", json={"birth_place": "Kashi"}, headers=headers
    )
    me = await (await client.get("/v1/me", headers=headers)).json()
    assert (me["birth_date"], me["birth_time"], me["birth_place"]) == (
        "1990-04-21",
        "06:30",
        "Kashi",
    )
    await client.patch("/v1/me", json={"birth_time": None, "name": "Asha K"}, headers=headers)
    [own] = (await (await client.get("/v1/me/profiles", headers=headers)).json())["items"]
    assert (own["birth_time"], own["name"]) == (None, "Asha K")
    # One self profile; it stays self and nothing else becomes self.
    resp = await client.post(
        "/v1/me/profiles", json={**SPOUSE, "relation": "self"}, headers=headers
    )
    assert (resp.status, await _code(resp)) == (409, "self_profile_exists")
    resp = await client.patch(
        f"/v1/me/profiles/{own['id']}", json={"relation": "friend"}, headers=headers
    )
    assert resp.status == 422
    # Nothing of it is in the users row.
    row = await db.fetchrow(
        "SELECT birth_date, birth_time, birth_place FROM users WHERE id = $1", user.id
    )
    assert tuple(row) == (None, None, None)


async def test_legacy_plaintext_birth_details_move_into_the_self_profile(
    client: Client, db: Any, settings: Any
) -> None:
    import datetime as dt

    user = await make_user(db, name="Old", birth_date=dt.date(1980, 1, 2), birth_place="Agra")
    headers = await auth(db, settings, user)
    me = await (await client.get("/v1/me", headers=headers)).json()
    assert (me["birth_date"], me["birth_place"]) == ("1980-01-02", "Agra")
    row = await db.fetchrow("SELECT birth_date, birth_place FROM users WHERE id = $1", user.id)
    assert tuple(row) == (None, None)
    [own] = (await (await client.get("/v1/me/profiles", headers=headers)).json())["items"]
    assert (own["relation"], own["birth_place"]) == ("self", "Agra")


async def test_astrologers_and_anonymous_callers(client: Client, db: Any, settings: Any) -> None:
    assert (await client.get("/v1/me/profiles")).status == 401
    astrologer = await make_user(db, role="astrologer")
    resp = await client.get("/v1/me/profiles", headers=await auth(db, settings, astrologer))
    assert resp.status == 403
