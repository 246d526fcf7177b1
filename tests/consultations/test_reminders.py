"""Booking notifications, reminders (durable jobs plus a sweep, exactly once even when a booking
moves) and rescheduling within the cancellation rules, the hold moving with it (issue 17)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq.worker import Retry

from api.framework import SERVICES
from consultations import booking, reminders
from tests.factories import auth, fund, make_bookable_astrologer, make_user, slot_in
from tests.payments.support import job_ctx
from workers.bookings import bookings_sweep, send_booking_reminder

Client = TestClient[Any, Any]


def _z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def _book(client: Client, headers: dict[str, str], a: Any, at: datetime) -> dict[str, Any]:
    resp = await client.post(
        "/v1/consultations",
        json={"astrologer_id": str(a.id), "type": "chat", "scheduled_at": _z(at)},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def _time_passes(
    db: asyncpg.Pool[Any],
    cid: uuid.UUID,
    *,
    left: timedelta,
    booked_ago: timedelta = timedelta(days=2),
) -> datetime:
    """Move the booking (and the moment it was made) so that `left` remains before it, as if
    the clock had advanced."""
    at: datetime = await db.fetchval(
        "UPDATE consultations SET scheduled_at = date_trunc('second', now()) + $2,"
        " booked_slot = tstzrange(date_trunc('second', now()) + $2,"
        "                         date_trunc('second', now()) + $2 + interval '30 minutes'),"
        " reminders_from = now() - $3::interval WHERE id = $1 RETURNING scheduled_at",
        cid,
        left,
        booked_ago,
    )
    return at


async def _events(db: asyncpg.Pool[Any], event: str) -> list[tuple[uuid.UUID, str]]:
    rows = await db.fetch("SELECT user_id, key FROM notifications WHERE event = $1", event)
    return sorted((r["user_id"], r["key"]) for r in rows)


async def test_booking_confirmed_and_reminded_once(
    client: Client, db: asyncpg.Pool[Any], settings: Any
) -> None:
    services = client.app[SERVICES]
    a, user = await make_bookable_astrologer(db), await make_user(db)
    await fund(db, user.id, 100_000)
    headers = await auth(db, settings, user)
    out = await _book(client, headers, a, slot_in(30))
    cid = uuid.UUID(out["id"])
    # Both sides are told it is confirmed; both reminders are queued as delayed jobs.
    confirmed = await _events(db, "booking_confirmed")
    assert {who for who, _ in confirmed} == {user.id, a.id}
    jobs = [j for j in await services.arq.queued_jobs() if j.function == "send_booking_reminder"]
    assert sorted(j.args[1] for j in jobs) == ["15m", "24h"]
    # 23 hours later: the 24 h reminder is due, the 15 min one not.
    at = await _time_passes(db, cid, left=timedelta(hours=23))
    ctx = job_ctx(services)
    assert await send_booking_reminder(ctx, str(cid), "24h", at.isoformat()) == "sent"
    # A second run of the job, the sweep, and a job racing them: sent once.
    assert await send_booking_reminder(ctx, str(cid), "24h", at.isoformat()) != "sent"
    assert (await bookings_sweep(ctx))["reminders_sent"] == 0
    with pytest.raises(Retry):  # the 15 min reminder's job came early: it retries later
        await send_booking_reminder(ctx, str(cid), "15m", at.isoformat())
    sent = await _events(db, "booking_reminder")
    assert len(sent) == 2
    assert {who for who, _ in sent} == {user.id, a.id}
    # It moved to 10 minutes from now (booked an hour ago), its 15 min job lost: the sweep sends
    # that reminder once; the 24 h one of the new time was due before it was booked: never.
    await _time_passes(db, cid, left=timedelta(minutes=10), booked_ago=timedelta(hours=1))
    assert (await bookings_sweep(ctx))["reminders_sent"] == 1
    assert (await bookings_sweep(ctx))["reminders_sent"] == 0
    assert len(await _events(db, "booking_reminder")) == 4
    kinds = await db.fetch("SELECT kind FROM booking_reminders ORDER BY kind")
    assert [r["kind"] for r in kinds] == ["15m", "24h"]


async def test_a_booking_made_late_gets_no_early_reminder(
    client: Client, db: asyncpg.Pool[Any], settings: Any
) -> None:
    services = client.app[SERVICES]
    a, user = await make_bookable_astrologer(db), await make_user(db)
    await fund(db, user.id, 100_000)
    out = await _book(client, await auth(db, settings, user), a, slot_in(13))
    jobs = [j for j in await services.arq.queued_jobs() if j.function == "send_booking_reminder"]
    assert [j.args[1] for j in jobs] == ["15m"]
    assert (await bookings_sweep(job_ctx(services)))["reminders_sent"] == 0
    assert out["status"] == "scheduled"


async def test_reschedule_moves_the_hold_and_the_reminders(
    client: Client, db: asyncpg.Pool[Any], settings: Any
) -> None:
    services = client.app[SERVICES]
    a, user = await make_bookable_astrologer(db), await make_user(db)
    await fund(db, user.id, 100_000)
    headers = await auth(db, settings, user)
    first = slot_in(30)
    out = await _book(client, headers, a, first)
    cid = uuid.UUID(out["id"])
    new = first + timedelta(hours=10)
    resp = await client.post(
        f"/v1/consultations/{cid}/reschedule", json={"scheduled_at": _z(new)}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    moved = await resp.json()
    assert moved["scheduled_at"] == _z(new)
    assert moved["status"] == "scheduled"
    hold = await db.fetchrow("SELECT amount, expires_at, status FROM holds")
    assert hold is not None
    assert hold["status"] == "open"
    assert hold["expires_at"] == new + timedelta(minutes=30) + booking.HOLD_GRACE
    assert {who for who, _ in await _events(db, "booking_rescheduled")} == {user.id, a.id}
    # The old slot is free again; the reminders of the new time are queued.
    slots = await (await client.get(f"/v1/astrologers/{a.id}/slots?date={first.date()}")).json()
    assert _z(first) in [s["start"] for s in slots["slots"]]
    ids = {j.job_id for j in await services.arq.queued_jobs()}
    assert reminders.reminder_job_id(cid, "24h", new) in ids
    # The old time's reminder, when its moment comes, sends nothing (the booking moved).
    await db.execute(
        "UPDATE consultations SET reminders_from = now() - interval '2 days' WHERE id = $1", cid
    )
    assert await reminders.send(services, cid, "24h", first) is False
    assert await db.fetchval("SELECT count(*) FROM booking_reminders") == 0


async def test_bad_reschedules_change_nothing(
    client: Client, db: asyncpg.Pool[Any], settings: Any
) -> None:
    a, user = await make_bookable_astrologer(db), await make_user(db)
    await fund(db, user.id, 200_000)
    headers = await auth(db, settings, user)
    at = slot_in(30)
    out = await _book(client, headers, a, at)
    cid = out["id"]
    other_booking = await _book(client, headers, a, at + timedelta(hours=2))

    async def move(to: Any, h: dict[str, str] = headers, target: str = cid) -> Any:
        return await client.post(
            f"/v1/consultations/{target}/reschedule", json={"scheduled_at": to}, headers=h
        )

    # Someone else's booking: 404; an astrologer: 403.
    stranger = await auth(db, settings, await make_user(db))
    assert (await move(_z(at + timedelta(hours=4)), stranger)).status == 404
    assert (await move(_z(at + timedelta(hours=4)), target=str(uuid.uuid4()))).status == 404
    assert (await move(_z(at), await auth(db, settings, a))).status == 403
    # Not a slot, in the past, no time zone, the same time: 422.
    for bad in (
        _z(at + timedelta(minutes=7)),
        _z(slot_in(-5)),
        (at + timedelta(hours=4)).replace(tzinfo=None).isoformat(),
        _z(at),
        "tomorrow",
    ):
        assert (await move(bad)).status == 422, bad
    # A taken slot: 409 slot_taken.
    resp = await move(other_booking["scheduled_at"])
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "slot_taken"
    # Past the cut-off (CANCEL_FULL_REFUND_HOURS, 12 h): 409 reschedule_too_late.
    late = await _book(client, headers, a, slot_in(6))
    resp = await move(_z(at + timedelta(hours=4)), target=late["id"])
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "reschedule_too_late"
    # A cancelled booking cannot move; cancelling tells both sides.
    resp = await client.post(f"/v1/consultations/{cid}/cancel", json={}, headers=headers)
    assert resp.status == 200
    assert {who for who, _ in await _events(db, "booking_cancelled")} == {user.id, a.id}
    resp = await move(_z(at + timedelta(hours=4)))
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "invalid_state"
    # Nothing moved.
    rows = await db.fetch("SELECT scheduled_at FROM consultations ORDER BY scheduled_at")
    assert [r["scheduled_at"] for r in rows] == sorted([at, at + timedelta(hours=2), slot_in(6)])
