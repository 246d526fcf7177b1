"""Birth profiles on consultations: `profile_ids` freezes a copy; its astrologer sees it in
`consultation:requested`, GET /v1/consultations/{id} and the join ack until PROFILE_VISIBLE_DAYS
after the end; the user, strangers, and everybody after that window see no `profiles` at all.
A real server and real Socket.IO clients."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.framework import SERVICES
from astrolive.app import create_app
from consultations import presence
from tests.conftest import make_settings
from tests.factories import fund, make_astrologer, make_user, token_for
from tests.realtime.support import Peer

SPOUSE = {
    "name": "Meera",
    "relation": "spouse",
    "birth_date": "1992-05-06",
    "birth_place": "Nashik",
}


async def test_profiles_reach_only_the_astrologer_and_only_for_a_while(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(database_url, redis_url, tmp_path / "data"))
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    services = app[SERVICES]
    db = services.db
    astrologer = await make_astrologer(db)
    user = await make_user(db, name="Asha")
    await fund(db, user.id, 100_000)
    user_token = await token_for(db, services.settings, user)
    astro_token = await token_for(db, services.settings, astrologer)
    uh = {"Authorization": f"Bearer {user_token}"}
    ah = {"Authorization": f"Bearer {astro_token}"}
    astro_peer, user_peer = Peer(), Peer()
    await astro_peer.connect(url, astro_token)
    await user_peer.connect(url, user_token)
    # Online once the sockets are up (the Socket.IO Redis manager then has its connections).
    await presence.set_status(services, astrologer.id, "online")
    try:
        async with aiohttp.ClientSession(url) as http:
            await http.patch(
                "/v1/me", json={"birth_date": "1990-04-21", "birth_place": "Pune"}, headers=uh
            )
            spouse = await (await http.post("/v1/me/profiles", json=SPOUSE, headers=uh)).json()
            stranger = await make_user(db)
            stranger_token = await token_for(db, services.settings, stranger)
            theirs = await (
                await http.post(
                    "/v1/me/profiles",
                    json=SPOUSE,
                    headers={"Authorization": f"Bearer {stranger_token}"},
                )
            ).json()
            body = {"astrologer_id": str(astrologer.id), "type": "chat"}
            # Another person's profile: 404; three: 422; nothing is created.
            resp = await http.post(
                "/v1/consultations", json={**body, "profile_ids": [theirs["id"]]}, headers=uh
            )
            assert resp.status == 404
            resp = await http.post(
                "/v1/consultations",
                json={**body, "profile_ids": [spouse["id"], theirs["id"], str(uuid.uuid4())]},
                headers=uh,
            )
            assert resp.status == 422
            assert await db.fetchval("SELECT count(*) FROM consultations") == 0
            resp = await http.post(
                "/v1/consultations", json={**body, "profile_ids": [spouse["id"]]}, headers=uh
            )
            assert resp.status == 201, await resp.text()
            created = await resp.json()
            cid = created["id"]
            assert "profiles" not in created
            [requested] = await astro_peer.wait_for("consultation:requested", lambda e: len(e) >= 1)
            [shown] = requested["consultation"]["profiles"]
            assert (shown["id"], shown["name"], shown["birth_place"]) == (
                spouse["id"],
                "Meera",
                "Nashik",
            )
            await user_peer.wait_for("consultation:updated", lambda e: len(e) >= 1)
            assert all(
                "profiles" not in e["consultation"]
                for e in user_peer.events["consultation:updated"]
            )
            # The profile edited afterwards: the consultation keeps the frozen copy.
            await http.patch(
                f"/v1/me/profiles/{spouse['id']}", json={"birth_place": "Elsewhere"}, headers=uh
            )
            got = await (await http.get(f"/v1/consultations/{cid}", headers=ah)).json()
            assert [p["birth_place"] for p in got["profiles"]] == ["Nashik"]
            got = await (await http.get(f"/v1/consultations/{cid}", headers=uh)).json()
            assert "profiles" not in got
            ack = await astro_peer.call("consultation:join", {"consultation_id": cid})
            assert ack["ok"], ack
            assert [p["name"] for p in ack["consultation"]["profiles"]] == ["Meera"]
            ack = await user_peer.call("consultation:join", {"consultation_id": cid})
            assert ack["ok"], ack
            assert "profiles" not in ack["consultation"]
            # Ended within PROFILE_VISIBLE_DAYS (7): still shown; past it: gone for everyone.
            await db.execute(
                "UPDATE consultations SET status = 'cancelled', "
                "updated_at = now() - interval '6 days' WHERE id = $1",
                uuid.UUID(cid),
            )
            got = await (await http.get(f"/v1/consultations/{cid}", headers=ah)).json()
            assert len(got["profiles"]) == 1
            await db.execute(
                "UPDATE consultations SET updated_at = now() - interval '8 days' WHERE id = $1",
                uuid.UUID(cid),
            )
            got = await (await http.get(f"/v1/consultations/{cid}", headers=ah)).json()
            assert "profiles" not in got
            # Default: the self profile (it has a birth date).
            await db.execute(
                "UPDATE consultations SET status = 'cancelled' WHERE astrologer_id = $1",
                astrologer.id,
            )
            resp = await http.post("/v1/consultations", json=body, headers=uh)
            assert resp.status == 201, await resp.text()
            got = await (
                await http.get(f"/v1/consultations/{(await resp.json())['id']}", headers=ah)
            ).json()
            assert [(p["relation"], p["birth_place"]) for p in got["profiles"]] == [
                ("self", "Pune")
            ]
    finally:
        await astro_peer.close()
        await user_peer.close()
    # The frozen copies are ciphertext in the table.
    for sealed in await db.fetch("SELECT profiles_enc FROM consultations"):
        assert bytes(sealed["profiles_enc"]).startswith(b"v1:")
        assert b"Meera" not in bytes(sealed["profiles_enc"])


async def test_profiles_on_questions_follow_the_same_rules(
    client: Any, db: Any, settings: Any
) -> None:
    from tests.factories import auth
    from tests.questions.support import question_pair

    user, astrologer = await question_pair(db)
    uh = await auth(db, settings, user)
    ah = await auth(db, settings, astrologer)
    spouse = await (await client.post("/v1/me/profiles", json=SPOUSE, headers=uh)).json()
    resp = await client.post(
        "/v1/questions",
        json={"astrologer_id": str(astrologer.id), "text": "Match?", "profile_ids": [spouse["id"]]},
        headers=uh,
    )
    assert resp.status == 201
    qid = (await resp.json())["id"]
    got = await (await client.get(f"/v1/questions/{qid}", headers=ah)).json()
    assert [p["name"] for p in got["profiles"]] == ["Meera"]
    inbox = await (await client.get("/v1/questions", headers=ah)).json()
    assert [p["name"] for p in inbox["items"][0]["profiles"]] == ["Meera"]
    got = await (await client.get(f"/v1/questions/{qid}", headers=uh)).json()
    assert "profiles" not in got
    await client.post(f"/v1/questions/{qid}/answer", json={"text": "Yes"}, headers=ah)
    await db.execute("UPDATE questions SET closed_at = now() - interval '8 days'")
    got = await (await client.get(f"/v1/questions/{qid}", headers=ah)).json()
    assert "profiles" not in got
    # No profile ids and no self profile: nothing attached.
    resp = await client.post(
        "/v1/questions", json={"astrologer_id": str(astrologer.id), "text": "Plain"}, headers=uh
    )
    got = await (await client.get(f"/v1/questions/{(await resp.json())['id']}", headers=ah)).json()
    assert got["profiles"] == []
