"""Scheduled consultations: weekly hours, free slots, booking with a hold, the exclusion
constraint against double booking, cancellation rules, and the booking becoming a request."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from api.framework import SERVICES
from billing.ledger import wallet_balance
from consultations import booking, lifecycle, presence
from core.errors import AppError
from tests.consultations.helpers import opened
from tests.factories import auth, fund, make_astrologer, make_user

KOLKATA = ZoneInfo("Asia/Kolkata")


def _next_weekday(weekday: int) -> date:
    today = datetime.now(KOLKATA).date()
    return today + timedelta(days=(weekday - today.weekday()) % 7 or 7)


async def test_availability_and_slots(client: TestClient[Any, Any], db: Any, settings: Any) -> None:
    a = await make_astrologer(db)
    ah = await auth(db, settings, a)
    windows = [
        {"weekday": 2, "start": "10:00", "end": "11:30"},
        {"weekday": 2, "start": "23:00", "end": "24:00"},
    ]
    body = {"timezone": "Asia/Kolkata", "slots": windows}
    resp = await client.put("/v1/astrologer/availability", json=body, headers=ah)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["slots"][1] == {"weekday": 2, "start": "23:00", "end": "24:00"}
    for bad in (
        {"timezone": "Mars/Olympus", "slots": []},
        {"timezone": "UTC", "slots": [{"weekday": 7, "start": "10:00", "end": "11:00"}]},
        {"timezone": "UTC", "slots": [{"weekday": 1, "start": "11:00", "end": "10:00"}]},
        {"timezone": "UTC", "slots": [{"weekday": 1, "start": "9:00", "end": "10:00"}]},
        {
            "timezone": "UTC",
            "slots": [
                {"weekday": 1, "start": "09:00", "end": "11:00"},
                {"weekday": 1, "start": "10:00", "end": "12:00"},
            ],
        },
    ):
        resp = await client.put("/v1/astrologer/availability", json=bad, headers=ah)
        assert resp.status == 422, bad
    wednesday = _next_weekday(2)
    resp = await client.get(f"/v1/astrologers/{a.id}/slots?date={wednesday}")
    slots = (await resp.json())["slots"]
    # 10:00, 10:30, 11:00 and 23:00, 23:30 IST = 04:30, 05:00, 05:30, 17:30, 18:00 UTC.
    assert [s["start"][11:16] for s in slots] == ["04:30", "05:00", "05:30", "17:30", "18:00"]
    assert slots[0]["start"].startswith(wednesday.isoformat())
    resp = await client.get(f"/v1/astrologers/{a.id}/slots?date={wednesday + timedelta(days=1)}")
    assert (await resp.json())["slots"] == []
    assert (await client.get(f"/v1/astrologers/{a.id}/slots?date=someday")).status == 422
    pending = await make_astrologer(db, verification="pending")
    assert (await client.get(f"/v1/astrologers/{pending.id}/slots?date={wednesday}")).status == 404


async def _always_open(svc: Any) -> Any:
    """An astrologer bookable every day, all day (UTC), at ₹10 a minute for chat."""
    a = await make_astrologer(svc.db, rates=(1000, 1500, 2000))
    async with svc.db.acquire() as conn:
        await booking.set_availability(
            conn, a.id, "UTC", [booking.Window(d, 0, 1440) for d in range(7)]
        )
    return a


def _slot_in(hours: float) -> datetime:
    """The start of a 30-minute slot about `hours` from now."""
    at = datetime.now(UTC) + timedelta(hours=hours)
    return at.replace(minute=0 if at.minute < 30 else 30, second=0, microsecond=0) + timedelta(
        minutes=30
    )


async def test_two_bookings_of_one_slot_one_wins(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await _always_open(svc)
        users = [await make_user(svc.db) for _ in range(4)]
        for u in users:
            await fund(svc.db, u.id, 100_000)
        start = _slot_in(24)

        async def book(u: Any) -> str:
            try:
                await booking.book(
                    svc, user_id=u.id, astrologer_id=a.id, type_="chat", scheduled_at=start
                )
            except AppError as err:
                return err.code
            return "ok"

        results = await asyncio.gather(*(book(u) for u in users))
        assert sorted(results) == ["ok"] + ["slot_taken"] * 3
        # The winner's wallet holds the slot's price (30 min x ₹10); the losers' hold nothing.
        held = {u.id: (await wallet_balance(svc.db, u.id))[1] for u in users}  # type: ignore[arg-type]  # a pool runs the query
        assert sorted(held.values()) == [0, 0, 0, 30_000]
        # An overlapping booking at another alignment is refused by the same constraint.
        slots = await booking.free_slots(
            svc.db, svc.settings, a.id, start.date(), datetime.now(UTC)
        )
        assert start not in [s.start for s in slots]


async def test_booking_rules_and_cancellation(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, _):
        a = await _always_open(svc)
        poor, rich = await make_user(svc.db), await make_user(svc.db)
        await fund(svc.db, poor.id, 29_999)
        await fund(svc.db, rich.id, 100_000)
        start = _slot_in(24)
        with pytest.raises(AppError) as refused:
            await booking.book(
                svc, user_id=poor.id, astrologer_id=a.id, type_="chat", scheduled_at=start
            )
        assert refused.value.code == "insufficient_balance"
        # The failed booking left nothing behind: the slot is still free.
        assert await svc.db.fetchval("SELECT count(*) FROM consultations") == 0
        for bad in (start + timedelta(minutes=7), datetime.now(UTC) - timedelta(hours=1)):
            with pytest.raises(AppError) as refused:
                await booking.book(
                    svc, user_id=rich.id, astrologer_id=a.id, type_="chat", scheduled_at=bad
                )
            assert refused.value.status == 422
        # Early cancellation (>= 12 h before): everything released.
        early = await booking.book(
            svc, user_id=rich.id, astrologer_id=a.id, type_="chat", scheduled_at=start
        )
        assert early.status == "scheduled"
        assert early.hold_id is not None
        assert await wallet_balance(svc.db, rich.id) == (100_000, 30_000)  # type: ignore[arg-type]  # a pool runs the query
        await lifecycle.cancel(svc, consultation_id=early.id, user_id=rich.id)
        assert await wallet_balance(svc.db, rich.id) == (100_000, 0)  # type: ignore[arg-type]  # a pool runs the query
        # Late cancellation (< 12 h before): half the hold is kept (CANCEL_LATE_FEE_PERCENT=50),
        # split 60/40 between the astrologer and the platform.
        late = await booking.book(
            svc, user_id=rich.id, astrologer_id=a.id, type_="chat", scheduled_at=_slot_in(2)
        )
        await lifecycle.cancel(svc, consultation_id=late.id, user_id=rich.id)
        assert await wallet_balance(svc.db, rich.id) == (85_000, 0)  # type: ignore[arg-type]  # a pool runs the query
        earned = await svc.db.fetchval(
            "SELECT balance FROM accounts WHERE kind = 'astrologer_earnings' AND owner_id = $1",
            a.id,
        )
        assert earned == 9_000
        # The astrologer declining a booking releases it in full, whenever.
        declined = await booking.book(
            svc, user_id=rich.id, astrologer_id=a.id, type_="chat", scheduled_at=_slot_in(1)
        )
        await lifecycle.reject(svc, consultation_id=declined.id, astrologer_id=a.id)
        assert await wallet_balance(svc.db, rich.id) == (85_000, 0)  # type: ignore[arg-type]  # a pool runs the query


async def test_booking_becomes_a_request_at_its_time(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with opened(database_url, redis_url, tmp_path) as (svc, em):
        a = await _always_open(svc)
        u = await make_user(svc.db)
        await fund(svc.db, u.id, 100_000)
        c = await booking.book(
            svc, user_id=u.id, astrologer_id=a.id, type_="chat", scheduled_at=_slot_in(3)
        )
        assert (await lifecycle.sweep(svc))["bookings_started"] == 0  # not yet
        # Its time comes (moved into the past instead of waiting hours).
        await svc.db.execute(
            "UPDATE consultations SET scheduled_at = now() - interval '1 second',"
            " booked_slot = tstzrange(now() - interval '1 second', now() + interval '30 minutes')"
            " WHERE id = $1",
            c.id,
        )
        done = await lifecycle.sweep(svc)
        assert done["bookings_started"] == 1
        assert (await lifecycle.sweep(svc))["bookings_started"] == 0
        requested = em.named("consultation:requested")
        assert [(d["consultation"]["id"], room) for d, room in requested] == [
            (str(c.id), f"user:{a.id}")
        ]
        await presence.set_status(svc, a.id, "online")
        accepted = await lifecycle.accept(svc, consultation_id=c.id, astrologer_id=a.id)
        assert accepted.status == "accepted"
        # The session starts: the hold is released in the same transaction (the meter charges);
        # live.session.start_session runs these two in one transaction (issue 12).
        async with svc.db.acquire() as conn, conn.transaction():
            active = await lifecycle.mark_active(conn, c.id, datetime.now(UTC))
            assert active is not None
            await booking.release_hold_txn(conn, active, "session started")
        assert active.status == "active"
        assert await wallet_balance(svc.db, u.id) == (100_000, 0)  # type: ignore[arg-type]  # a pool runs the query


async def test_book_over_rest(client: TestClient[Any, Any], db: Any, settings: Any) -> None:
    svc = client.app[SERVICES]
    a = await _always_open(svc)
    u = await make_user(db)
    await fund(db, u.id, 100_000)
    uh = await auth(db, settings, u)
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    slots = (await (await client.get(f"/v1/astrologers/{a.id}/slots?date={day}")).json())["slots"]
    assert len(slots) == 48
    body = {"astrologer_id": str(a.id), "type": "chat", "scheduled_at": slots[3]["start"]}
    resp = await client.post(
        "/v1/consultations", json=body, headers={**uh, "Idempotency-Key": "b1"}
    )
    assert resp.status == 201, await resp.text()
    c = await resp.json()
    assert (c["status"], c["scheduled_at"], c["scheduled_end"]) == (
        "scheduled",
        slots[3]["start"],
        slots[3]["end"],
    )
    replay = await client.post(
        "/v1/consultations", json=body, headers={**uh, "Idempotency-Key": "b1"}
    )
    assert replay.status == 201
    assert (await replay.json())["id"] == c["id"]
    other = await make_user(db)
    await fund(db, other.id, 100_000)
    resp = await client.post(
        "/v1/consultations", json=body, headers=await auth(db, settings, other)
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "slot_taken"
    slots_after = (await (await client.get(f"/v1/astrologers/{a.id}/slots?date={day}")).json())[
        "slots"
    ]
    assert len(slots_after) == 47
    assert slots[3] not in slots_after
