"""Questions over REST: ask (price held, Idempotency-Key), list, read, answer (charge split),
cancel (released), review, and who may see what."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from billing import rules
from tests.factories import auth, make_astrologer, make_user
from tests.questions.support import PRICE, earnings, question_pair, wallet

Client = TestClient[Any, Any]


async def _code(resp: Any) -> str:
    return str((await resp.json())["error"]["code"])


async def _ask(client: Client, headers: dict[str, str], astrologer_id: Any, **extra: Any) -> Any:
    body = {"astrologer_id": str(astrologer_id), "text": "Will I change jobs this year?", **extra}
    return await client.post("/v1/questions", json=body, headers=headers)


async def _events(db: Any, user_id: Any) -> list[str]:
    rows = await db.fetch(
        "SELECT event FROM notifications WHERE user_id = $1 ORDER BY created_at", user_id
    )
    return [r["event"] for r in rows]


async def test_ask_holds_the_price_and_honours_the_idempotency_key(
    client: Client, db: Any, settings: Any
) -> None:
    user, astrologer = await question_pair(db)
    headers = {**await auth(db, settings, user), "Idempotency-Key": "q-1"}
    resp = await _ask(client, headers, astrologer.id)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert (body["status"], body["price"], body["currency"]) == ("open", PRICE, "INR")
    assert body["answer"] is None
    assert body["answer_due_at"].endswith("Z")
    assert "profiles" not in body  # the asker never gets the astrologer's copy
    assert await wallet(db, user.id) == (20_000, PRICE)
    # The same key and question: the first question, nothing held twice.
    again = await _ask(client, headers, astrologer.id)
    assert again.status == 201
    assert (await again.json())["id"] == body["id"]
    assert await wallet(db, user.id) == (20_000, PRICE)
    # The same key with another question: 409, nothing changes.
    other = await _ask(client, headers, astrologer.id, text="Another question")
    assert (other.status, await _code(other)) == (409, "idempotency_conflict")
    assert await db.fetchval("SELECT count(*) FROM questions") == 1
    assert await _events(db, astrologer.id) == ["question_received"]


async def test_refusals_change_nothing(client: Client, db: Any, settings: Any) -> None:
    user, astrologer = await question_pair(db, funds=PRICE - 1)
    headers = await auth(db, settings, user)
    resp = await _ask(client, headers, astrologer.id)
    assert (resp.status, await _code(resp)) == (402, "insufficient_balance")
    _, no_questions = await question_pair(db, price=None)
    resp = await _ask(client, headers, no_questions.id)
    assert (resp.status, await _code(resp)) == (409, "questions_not_offered")
    resp = await _ask(client, headers, astrologer.id, text="x" * 2001)
    assert resp.status == 422
    assert "text" in (await resp.json())["error"]["details"]["fields"]
    resp = await _ask(client, headers, user.id)
    assert resp.status == 422  # yourself
    resp = await _ask(client, headers, (await make_user(db)).id)  # not an astrologer
    assert resp.status == 404
    astro_headers = await auth(db, settings, astrologer)
    assert (await _ask(client, astro_headers, no_questions.id)).status == 403
    assert await db.fetchval("SELECT count(*) FROM questions") == 0
    assert await db.fetchval("SELECT count(*) FROM holds") == 0
    assert await wallet(db, user.id) == (PRICE - 1, 0)


async def test_answer_charges_the_split_and_tells_the_user(
    client: Client, db: Any, settings: Any
) -> None:
    user, astrologer = await question_pair(db)
    qid = (await (await _ask(client, await auth(db, settings, user), astrologer.id)).json())["id"]
    other_astrologer = await make_astrologer(db)
    resp = await client.post(
        f"/v1/questions/{qid}/answer",
        json={"text": "Yes, after June."},
        headers=await auth(db, settings, other_astrologer),
    )
    assert resp.status == 404  # another astrologer's question does not exist for them
    astro = await auth(db, settings, astrologer)
    resp = await client.post(
        f"/v1/questions/{qid}/answer", json={"text": "Yes, after June."}, headers=astro
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["status"], body["answer"]) == ("answered", "Yes, after June.")
    share = rules.question_split(PRICE, 60)
    assert await wallet(db, user.id) == (20_000 - PRICE, 0)
    assert await earnings(db, astrologer.id) == share.astrologer
    assert await db.fetchval("SELECT status FROM holds") == "captured"
    assert await _events(db, user.id) == ["question_answered"]
    again = await client.post(f"/v1/questions/{qid}/answer", json={"text": "Again"}, headers=astro)
    assert (again.status, await _code(again)) == (409, "invalid_state")
    assert await wallet(db, user.id) == (20_000 - PRICE, 0)
    # The user reads the answer; a stranger gets 404; an admin may read it.
    got = await client.get(f"/v1/questions/{qid}", headers=await auth(db, settings, user))
    assert (await got.json())["answer"] == "Yes, after June."
    stranger = await make_user(db)
    resp = await client.get(f"/v1/questions/{qid}", headers=await auth(db, settings, stranger))
    assert resp.status == 404
    admin = await make_user(db, role="admin")
    resp = await client.get(f"/v1/questions/{qid}", headers=await auth(db, settings, admin))
    assert resp.status == 200


async def test_cancel_releases_and_only_its_user_may(
    client: Client, db: Any, settings: Any
) -> None:
    user, astrologer = await question_pair(db)
    headers = await auth(db, settings, user)
    qid = (await (await _ask(client, headers, astrologer.id)).json())["id"]
    stranger = await make_user(db)
    resp = await client.post(
        f"/v1/questions/{qid}/cancel", headers=await auth(db, settings, stranger)
    )
    assert resp.status == 404
    resp = await client.post(f"/v1/questions/{qid}/cancel", headers=headers)
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"
    assert await wallet(db, user.id) == (20_000, 0)
    assert await db.fetchval("SELECT status FROM holds") == "released"
    resp = await client.post(f"/v1/questions/{qid}/cancel", headers=headers)
    assert (resp.status, await _code(resp)) == (409, "invalid_state")
    resp = await client.post(
        f"/v1/questions/{qid}/answer",
        json={"text": "too late"},
        headers=await auth(db, settings, astrologer),
    )
    assert resp.status == 409
    assert await wallet(db, user.id) == (20_000, 0)


async def test_lists_newest_first_with_status_filter_and_pages(
    client: Client, db: Any, settings: Any
) -> None:
    user, astrologer = await question_pair(db, funds=100_000)
    headers = await auth(db, settings, user)
    ids = []
    for n in range(5):
        resp = await _ask(client, headers, astrologer.id, text=f"question {n}")
        ids.append((await resp.json())["id"])
    await client.post(f"/v1/questions/{ids[0]}/cancel", headers=headers)
    resp = await client.get("/v1/questions?limit=2", headers=headers)
    page = await resp.json()
    assert [q["id"] for q in page["items"]] == [ids[4], ids[3]]
    seen = [q["id"] for q in page["items"]]
    while page["next_cursor"]:
        resp = await client.get(
            f"/v1/questions?limit=2&cursor={page['next_cursor']}", headers=headers
        )
        page = await resp.json()
        seen += [q["id"] for q in page["items"]]
    assert seen == ids[::-1]
    resp = await client.get("/v1/questions?status=cancelled", headers=headers)
    assert [q["id"] for q in (await resp.json())["items"]] == [ids[0]]
    inbox = await client.get(
        "/v1/questions?status=open", headers=await auth(db, settings, astrologer)
    )
    assert [q["id"] for q in (await inbox.json())["items"]] == ids[:0:-1]
    other = await make_user(db)
    resp = await client.get("/v1/questions", headers=await auth(db, settings, other))
    assert (await resp.json())["items"] == []
    assert (await client.get("/v1/questions?status=nope", headers=headers)).status == 422
    assert (await client.get("/v1/questions?cursor=garbage", headers=headers)).status == 422


async def test_reviews_of_answered_questions_count_toward_the_rating(
    client: Client, db: Any, settings: Any
) -> None:
    user, astrologer = await question_pair(db)
    headers = await auth(db, settings, user)
    qid = (await (await _ask(client, headers, astrologer.id)).json())["id"]
    resp = await client.post(f"/v1/questions/{qid}/review", json={"rating": 5}, headers=headers)
    assert (resp.status, await _code(resp)) == (409, "invalid_state")  # not answered yet
    await client.post(
        f"/v1/questions/{qid}/answer",
        json={"text": "Yes."},
        headers=await auth(db, settings, astrologer),
    )
    resp = await client.post(
        f"/v1/questions/{qid}/review", json={"rating": 4, "comment": "clear"}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"/v1/questions/{qid}/review", json={"rating": 1}, headers=headers)
    assert (resp.status, await _code(resp)) == (409, "already_reviewed")
    row = await db.fetchrow(
        "SELECT rating_sum, rating_count FROM astrologer_profiles WHERE user_id = $1", astrologer.id
    )
    assert (row["rating_sum"], row["rating_count"]) == (4, 1)
    listed = await client.get(f"/v1/astrologers/{astrologer.id}/reviews")
    [item] = (await listed.json())["items"]
    assert item["question_id"] == qid
    assert item["consultation_id"] is None


async def test_rates_question_on_the_astrologer_profile(
    client: Client, db: Any, settings: Any
) -> None:
    astrologer = await make_user(db, role="astrologer")
    headers = await auth(db, settings, astrologer)
    profile = {
        "display_name": "Pandit Rao",
        "rates": {"chat": 1000, "voice": None, "video": None, "question": 499},
    }
    resp = await client.put("/v1/astrologer/profile", json=profile, headers=headers)
    assert resp.status == 422
    assert "rates.question" in (await resp.json())["error"]["details"]["fields"]
    profile["rates"]["question"] = 2500  # type: ignore[index]  # a dict literal above
    resp = await client.put("/v1/astrologer/profile", json=profile, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["rates"]["question"] == 2500
    assert (
        await db.fetchval(
            "SELECT rate_question FROM astrologer_profiles WHERE user_id = $1", astrologer.id
        )
        == 2500
    )
