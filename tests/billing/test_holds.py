"""Holds for scheduled bookings: reserve, capture at most once, release, expire, no over-commit."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import pytest

from billing.holds import (
    HoldNotOpen,
    capture_hold,
    expire_holds,
    get_hold,
    place_hold,
    release_hold,
)
from billing.ledger import InsufficientFunds, Leg, account_id, post_charges, post_transfer
from core.errors import Conflict, NotFound
from tests.billing.support import Session, assert_ledger_ok, balance_of, make_session

Pool: TypeAlias = "asyncpg.Pool[Any]"
SOON = timedelta(hours=1)


async def _hold(db: Pool, s: Session, amount: int, key: str = "booking:1", **kw: Any) -> Any:
    async with db.acquire() as conn:
        return await place_hold(
            conn,
            key=key,
            user_id=s.user,
            amount=amount,
            currency="INR",
            reason="scheduled booking",
            expires_at=kw.pop("expires_at", datetime.now(UTC) + SOON),
            consultation_id=kw.pop("consultation_id", s.consultation),
        )


async def _capture_legs(db: Pool, s: Session, amount: int, share: int) -> list[Leg]:
    async with db.acquire() as conn:
        earnings = await account_id(conn, "astrologer_earnings", s.astrologer)
        revenue = await account_id(conn, "platform_revenue", None)
    return [Leg(s.wallet, -amount), Leg(earnings, share), Leg(revenue, amount - share)]


async def test_place_hold_reserves_available_funds(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    hold = await _hold(db, s, 600)
    assert (hold.status, hold.amount, hold.replayed) == ("open", 600, False)
    assert await balance_of(db, s.wallet) == (1000, 600)
    # What is held cannot be spent by anything else.
    async with db.acquire() as conn:
        results = await post_charges(conn, [s.charge(m, 200, 120) for m in range(1, 4)])
    assert [r.status for r in results] == ["posted", "posted", "insufficient"]
    # What the meter's minutes-left and low-balance warning read: the spendable balance.
    assert [(r.balance_after, r.available_after) for r in results] == [
        (800, 200), (600, 0), (600, 0),
    ]  # fmt: skip
    assert await balance_of(db, s.wallet) == (600, 600)
    await assert_ledger_ok(db)


async def test_place_hold_is_idempotent_per_key(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    first = await _hold(db, s, 600)
    again = await _hold(db, s, 600)
    assert again.replayed
    assert again.id == first.id
    assert await balance_of(db, s.wallet) == (1000, 600)
    with pytest.raises(Conflict) as caught:
        await _hold(db, s, 500)
    assert caught.value.code == "idempotency_conflict"
    assert await balance_of(db, s.wallet) == (1000, 600)


async def test_place_hold_refuses_more_than_available(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    await _hold(db, s, 700, key="a")
    with pytest.raises(InsufficientFunds) as caught:
        await _hold(db, s, 301, key="b")
    assert caught.value.details == {"available": 300}
    assert (await _hold(db, s, 300, key="c")).status == "open"
    assert await balance_of(db, s.wallet) == (1000, 1000)
    empty = await make_session(db)
    with pytest.raises(InsufficientFunds):
        await _hold(db, empty, 1)
    with pytest.raises(ValueError, match="positive"):
        await _hold(db, s, 0, key="d")


async def test_concurrent_holds_never_over_commit(db: Pool) -> None:
    s = await make_session(db, funded=1000)

    async def one(i: int) -> bool:
        try:
            await _hold(db, s, 30, key=f"booking:{i}")
        except InsufficientFunds:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(60)))
    assert sum(results) == 33
    assert await balance_of(db, s.wallet) == (1000, 990)
    await assert_ledger_ok(db)


async def test_capture_moves_money_once(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    hold = await _hold(db, s, 500)
    legs = await _capture_legs(db, s, 400, 240)  # the session cost less than was held
    async with db.acquire() as conn:
        transfer = await capture_hold(conn, hold.id, key="capture:1", kind="booking", legs=legs)
        again = await capture_hold(conn, hold.id, key="capture:1", kind="booking", legs=legs)
        assert again.replayed
        assert again.id == transfer.id
        with pytest.raises(HoldNotOpen):
            await capture_hold(conn, hold.id, key="capture:2", kind="booking", legs=legs)
        # Releasing a captured hold changes nothing.
        assert (await release_hold(conn, hold.id, "too late")).status == "captured"
    captured = await get_hold(db, hold.id)
    assert captured is not None
    assert (captured.status, captured.capture_transfer_id) == ("captured", transfer.id)
    assert await balance_of(db, s.wallet) == (600, 0)
    await assert_ledger_ok(db)


async def test_concurrent_captures_move_money_once(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    hold = await _hold(db, s, 1000)
    legs = await _capture_legs(db, s, 1000, 600)

    async def capture(i: int) -> str:
        async with db.acquire() as conn:
            try:
                t = await capture_hold(conn, hold.id, key=f"capture:{i}", kind="booking", legs=legs)
            except HoldNotOpen:
                return "refused"
            return "replayed" if t.replayed else "captured"

    outcomes = await asyncio.gather(*(capture(i % 3) for i in range(12)))
    assert outcomes.count("captured") == 1
    assert await balance_of(db, s.wallet) == (0, 0)
    await assert_ledger_ok(db)


async def test_capture_cannot_take_more_than_held(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    hold = await _hold(db, s, 500)
    legs = await _capture_legs(db, s, 501, 300)
    async with db.acquire() as conn:
        with pytest.raises(ValueError, match="held amount"):
            await capture_hold(conn, hold.id, key="c", kind="booking", legs=legs)
        with pytest.raises(NotFound):
            await capture_hold(conn, uuid.uuid4(), key="c", kind="booking", legs=legs)
    assert await balance_of(db, s.wallet) == (1000, 500)


async def test_release_frees_the_amount_once(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    hold = await _hold(db, s, 500)
    async with db.acquire() as conn:
        released = await release_hold(conn, hold.id, "cancelled by user")
        assert (released.status, released.close_reason) == ("released", "cancelled by user")
        again = await release_hold(conn, hold.id, "cancelled again")
        assert again.close_reason == "cancelled by user"
        assert await balance_of(db, s.wallet) == (1000, 0)
        legs = await _capture_legs(db, s, 100, 60)
        with pytest.raises(HoldNotOpen):
            await capture_hold(conn, hold.id, key="late", kind="booking", legs=legs)
        with pytest.raises(NotFound):
            await release_hold(conn, uuid.uuid4(), "x")
    await assert_ledger_ok(db)


async def test_expire_holds_closes_only_due_holds(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    now = datetime.now(UTC)
    due = [await _hold(db, s, 100, key=f"due:{i}", expires_at=now - SOON) for i in range(3)]
    later = await _hold(db, s, 100, key="later", expires_at=now + SOON)
    assert await balance_of(db, s.wallet) == (1000, 400)
    async with db.acquire() as conn:
        assert await expire_holds(conn, now) == 3
        assert await expire_holds(conn, now) == 0
    for h in due:
        got = await get_hold(db, h.id)
        assert got is not None
        assert got.status == "expired"
    got = await get_hold(db, later.id)
    assert got is not None
    assert got.status == "open"
    assert await balance_of(db, s.wallet) == (1000, 100)
    await assert_ledger_ok(db)


async def test_spending_and_holding_race_without_over_commit(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    async with db.acquire() as conn:
        earnings = await account_id(conn, "astrologer_earnings", s.astrologer)

    async def hold(i: int) -> None:
        with contextlib.suppress(InsufficientFunds):
            await _hold(db, s, 100, key=f"h:{i}")

    async def spend(i: int) -> None:
        async with db.acquire() as conn:
            with contextlib.suppress(InsufficientFunds):
                await post_transfer(
                    conn, key=f"s:{i}", kind="x", legs=[Leg(s.wallet, -100), Leg(earnings, 100)]
                )

    await asyncio.gather(*(hold(i) for i in range(10)), *(spend(i) for i in range(10)))
    balance, held = await balance_of(db, s.wallet)
    assert balance - held == 0
    assert held >= 0
    await assert_ledger_ok(db)
