"""Support tickets: the contract's routes and states, refund eligibility, the admin queue with the
bill and the chat, resolving with a refund in the status change's transaction, exactly once under
two admins at once, the author told of each change, texts encrypted at rest."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from api.framework import SERVICES
from billing.ledger import wallet_balance
from support import tickets
from tests.consultations.helpers import opened
from tests.factories import auth, fund, make_astrologer, make_user
from tests.payments.support import charged_consultation


async def _wallet(db: asyncpg.Pool[Any], user_id: uuid.UUID) -> int:
    async with db.acquire() as conn:
        balance, _ = await wallet_balance(conn, user_id)
    return balance


async def _setup(db: Any) -> tuple[Any, Any, Any, uuid.UUID]:
    """A user who paid 5 minutes at ₹10 (5000) to an astrologer, and an admin."""
    user, astro = await make_user(db), await make_astrologer(db)
    admin = await make_user(db, role="admin")
    await fund(db, user.id, 10_000)
    cid = await charged_consultation(db, user.id, astro.id, minutes=5, rate=1000)
    return user, astro, admin, cid


async def _forget_rate_limits(client: TestClient[Any, Any]) -> None:
    redis = client.app[SERVICES].redis
    keys = [k async for k in redis.scan_iter("rl:*")]
    if keys:
        await redis.delete(*keys)


async def _events(db: Any, user_id: uuid.UUID) -> list[str]:
    rows = await db.fetch(
        "SELECT event, data FROM notifications WHERE user_id = $1 ORDER BY created_at, id",
        user_id,
    )
    return [r["event"] for r in rows]


async def test_ticket_life_with_a_refund(
    client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    user, _astro, admin, cid = await _setup(db)
    uh, adh = await auth(db, settings, user), await auth(db, settings, admin)
    resp = await client.post(
        "/v1/support/tickets",
        json={"category": "refund", "consultation_id": str(cid), "text": "he left after 1 min"},
        headers=uh,
    )
    assert resp.status == 201, await resp.text()
    ticket = await resp.json()
    assert ticket["status"] == "open"
    assert ticket["text"] == "he left after 1 min"
    # Texts are stored encrypted: the row has no plaintext.
    raw = await db.fetchval(
        "SELECT text_enc FROM support_tickets WHERE id = $1", uuid.UUID(ticket["id"])
    )
    assert b"left after" not in bytes(raw)
    tid = ticket["id"]
    # The author writes; an admin replies: in review, the author is told twice.
    resp = await client.post(
        f"/v1/support/tickets/{tid}/messages", json={"text": "please"}, headers=uh
    )
    assert resp.status == 201
    resp = await client.post(
        f"/v1/support/tickets/{tid}/messages", json={"text": "looking"}, headers=adh
    )
    assert (await resp.json())["from_support"] is True
    got = await (await client.get(f"/v1/support/tickets/{tid}", headers=uh)).json()
    assert got["status"] == "in_review"
    assert [m["text"] for m in got["messages"]] == ["please", "looking"]
    listed = await (await client.get("/v1/support/tickets", headers=uh)).json()
    assert [t["id"] for t in listed["items"]] == [tid]
    # The admin queue: in review now, with the consultation's bill minute by minute.
    queue = await (await client.get("/v1/admin/tickets?status=in_review", headers=adh)).json()
    item = queue["items"][0]
    assert item["id"] == tid
    assert item["consultation"]["id"] == str(cid)
    assert item["chat"] == []
    assert item["chat_url"] == f"/v1/consultations/{cid}/messages"
    assert isinstance(item["breakdown"], list)
    # Resolve with a partial refund: the wallet gets it, in the same transaction.
    before = await _wallet(db, user.id)
    resp = await client.post(
        f"/v1/admin/tickets/{tid}/resolve",
        json={"outcome": "refund", "refund_amount": 2000, "note": "sorry"},
        headers=adh,
    )
    assert resp.status == 200, await resp.text()
    done = await resp.json()
    assert done["status"] == "resolved"
    assert done["outcome"] == "refund"
    assert done["refund_amount"] == 2000
    assert await _wallet(db, user.id) == before + 2000
    # Told of each change (notifications of one transaction share a time: compared sorted).
    assert sorted(await _events(db, user.id)) == [
        "refund_issued",
        "ticket_reply",
        "ticket_updated",
        "ticket_updated",
    ]
    # Closed: no more messages, no second resolve.
    resp = await client.post(f"/v1/support/tickets/{tid}/messages", json={"text": "x"}, headers=uh)
    assert resp.status == 409
    resp = await client.post(
        f"/v1/admin/tickets/{tid}/resolve", json={"outcome": "answered", "note": "n"}, headers=adh
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "ticket_closed"
    # A new refund ticket may be opened once the first is closed.
    resp = await client.post(
        f"/v1/consultations/{cid}/complaint", json={"reason": "still unhappy"}, headers=uh
    )
    assert resp.status == 201
    queue = await (await client.get("/v1/admin/tickets", headers=adh)).json()
    assert [t["id"] for t in queue["items"]] == [(await resp.json())["id"]]


async def test_bad_tickets_change_nothing(
    client: TestClient[Any, Any], db: Any, settings: Any
) -> None:
    user, astro, admin, cid = await _setup(db)
    other = await make_user(db)
    uh, oh = await auth(db, settings, user), await auth(db, settings, other)
    adh = await auth(db, settings, admin)

    async def open_(body: dict[str, Any], headers: dict[str, str] = uh) -> Any:
        await _forget_rate_limits(client)  # this test makes more calls than a person may
        return await client.post("/v1/support/tickets", json=body, headers=headers)

    refund = {"category": "refund", "consultation_id": str(cid), "text": "x"}
    # Someone else's consultation, or a made-up one: 404.
    assert (await open_(refund, oh)).status == 404
    assert (await open_({**refund, "consultation_id": str(uuid.uuid4())})).status == 404
    assert (await open_({**refund, "recharge_id": str(uuid.uuid4())})).status == 404
    # Invalid bodies.
    for bad in (
        {**refund, "category": "money"},
        {**refund, "text": ""},
        {"category": "refund", "text": "no consultation"},
        {**refund, "extra": 1},
    ):
        assert (await open_(bad)).status == 422, bad
    # Not ended yet; ended too long ago.
    live = await db.fetchval(
        "INSERT INTO consultations (user_id, astrologer_id, type, status, rate, share_percent)"
        " VALUES ($1, $2, 'chat', 'requested', 1000, 60) RETURNING id",
        user.id,
        (await make_astrologer(db)).id,
    )
    resp = await open_({**refund, "consultation_id": str(live)})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "invalid_state"
    await db.execute(
        "UPDATE consultations SET ended_at = now() - interval '8 days' WHERE id = $1", cid
    )
    resp = await open_(refund)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "refund_window_closed"
    await db.execute(
        "UPDATE consultations SET ended_at = now() - interval '6 days' WHERE id = $1", cid
    )
    # One open refund ticket per consultation.
    first = await open_(refund)
    assert first.status == 201
    resp = await open_(refund)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "ticket_exists"
    tid = (await first.json())["id"]
    # Another person's ticket is not found; a user may not resolve nor read the queue.
    assert (await client.get(f"/v1/support/tickets/{tid}", headers=oh)).status == 404
    resp = await client.post(f"/v1/support/tickets/{tid}/messages", json={"text": "hi"}, headers=oh)
    assert resp.status == 404
    resolve = {"outcome": "refund", "note": "n"}
    assert (
        await client.post(f"/v1/admin/tickets/{tid}/resolve", json=resolve, headers=uh)
    ).status == 403
    assert (await client.get("/v1/admin/tickets", headers=uh)).status == 403
    # The astrologer of the consultation may open a ticket about it, but not a refund one.
    ah = await auth(db, settings, astro)
    assert (await open_({**refund, "category": "behaviour"}, ah)).status == 201
    resp = await open_(refund, ah)
    assert resp.status == 404
    # More than was charged: refused, and the ticket stays open with nothing refunded.
    before = await _wallet(db, user.id)
    for body in (
        {"outcome": "refund", "refund_amount": 5001, "note": "n"},
        {"outcome": "answered", "refund_amount": 10, "note": "n"},
        {"outcome": "refund", "refund_amount": "10", "note": "n"},
        {"outcome": "later", "note": "n"},
    ):
        resp = await client.post(f"/v1/admin/tickets/{tid}/resolve", json=body, headers=adh)
        assert resp.status == (
            409
            if "refund_amount" in body
            and body["outcome"] == "refund"
            and isinstance(body["refund_amount"], int)
            else 422
        ), body
    assert await _wallet(db, user.id) == before
    got = await (await client.get(f"/v1/support/tickets/{tid}", headers=uh)).json()
    assert got["status"] == "open"
    # A rejected ticket refunds nothing.
    resp = await client.post(
        f"/v1/admin/tickets/{tid}/resolve", json={"outcome": "rejected", "note": "no"}, headers=adh
    )
    assert (await resp.json())["status"] == "rejected"
    assert await _wallet(db, user.id) == before
    assert (await client.get(f"/v1/support/tickets/{uuid.uuid4()}", headers=adh)).status == 404


async def test_two_admins_resolving_at_once_refund_once(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The interleaving is forced: a third transaction holds the ticket's row lock while both
    resolves start; once both wait on it (seen in pg_locks), it is released. One refund, one
    resolution; the other admin gets ticket_closed."""
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        user, _astro, admin, cid = await _setup(svc.db)
        admin2 = await make_user(svc.db, role="admin")
        t = await tickets.open_ticket(
            svc, author_id=user.id, category="refund", text="refund me", consultation_id=cid
        )
        before = await _wallet(svc.db, user.id)
        blocker = await svc.db.acquire()
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM support_tickets WHERE id = $1 FOR UPDATE", t.id)
        results: list[Any] = []

        async def resolve(who: uuid.UUID, amount: int) -> None:
            try:
                results.append(
                    await tickets.resolve(
                        svc,
                        ticket_id=t.id,
                        admin_id=who,
                        outcome="refund",
                        note="ok",
                        refund_amount=amount,
                    )
                )
            except tickets.TicketClosed as exc:
                results.append(exc)

        runs = [
            asyncio.create_task(resolve(admin.id, 3000)),
            asyncio.create_task(resolve(admin2.id, 4000)),
        ]
        # Both are waiting for the row lock (bounded: 5 s at most). The first waits on the
        # blocker's transaction, the second queues behind it on the tuple lock: count backends
        # of this database waiting on any lock, not one lock type.
        try:
            for _ in range(500):
                waiting = await svc.db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if waiting >= 2:
                    break
                await asyncio.sleep(0.01)
            assert waiting >= 2
        finally:
            await tx.rollback()
            await svc.db.release(blocker)
        await asyncio.gather(*runs)
        closed = [r for r in results if isinstance(r, tickets.TicketClosed)]
        done = [r for r in results if isinstance(r, tickets.Ticket)]
        assert len(closed) == 1
        assert len(done) == 1
        amount = done[0].refund_amount
        assert amount in (3000, 4000)
        assert await _wallet(svc.db, user.id) == before + amount
        assert await svc.db.fetchval("SELECT count(*) FROM consultation_refunds") == 1
        # The winner's refund rode the status change: replaying its refund key finds it.
        assert done[0].refund_id is not None
