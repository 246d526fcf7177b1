"""The minute meter against real PostgreSQL and Redis: sessions driven without sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from core.services import Services
from live import bill, session
from live import keys as keys
from live import meter as meter
from live.clock import RedisClock
from live.finalize import cause_of, matching_rule, parse_refund_rules
from tests.factories import fund
from tests.meter.conftest import GRACE, MINUTE, STALE
from tests.meter.support import (
    RecordingEmitter,
    accepted_consultation,
    assert_each_minute_once,
    consultation,
    earnings,
    heartbeats,
    meter_row,
    sleep_until,
    start,
    wait_for,
    wallet,
)


async def test_ten_minute_session_charges_exactly_ten(
    services: Services, db: asyncpg.Pool[Any], emitted: RecordingEmitter
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        row = await meter_row(db, s.id)
        started = row["started_at"].timestamp()
        # Minute 10 begins at 9 minutes; end half-way through it.
        await sleep_until(started + 9.5 * MINUTE)
        await session.end_by_participant(services, s.id, s.user_id)
        await asyncio.sleep(3 * MINUTE)  # nothing more may be charged after the end
    assert await assert_each_minute_once(db, s.id) == 10
    c = await consultation(db, s.id)
    assert (c["status"], c["end_reason"]) == ("completed", "user_ended")
    assert (c["billed_minutes"], c["total_charged"]) == (10, 1000)
    assert await wallet(db, s.user_id) == 9_000
    assert await earnings(db, s.astrologer_id) == 600
    started_events = emitted.of("session:started", s.user_id)
    assert started_events == [
        {
            "consultation_id": str(s.id),
            "started_at": started_events[0]["started_at"],
            "rate": 100,
            "balance": 10_000,
            "max_minutes": None,
        }
    ]
    ticks = emitted.of("session:tick", s.user_id)
    assert [t["minute"] for t in ticks] == list(range(1, 11))
    assert ticks[-1]["balance"] == 9_000
    assert ticks[-1]["charged"] == 1000
    assert ticks[-1]["minutes_left"] == 90
    assert emitted.of("session:ended", s.user_id) == [
        {
            "consultation_id": str(s.id),
            "reason": "user_ended",
            "billed_minutes": 10,
            "total_charged": 1000,
        }
    ]
    # Each charge was on time: the loop claims within its poll interval; the bound is a second
    # because the test host is shared (the tick lag itself is measured by tests/bench/).
    lags = await db.fetch(
        "SELECT extract(epoch FROM at - due_at) AS lag FROM meter_events"
        " WHERE consultation_id = $1 AND kind = 'charge'",
        s.id,
    )
    assert max(float(r["lag"]) for r in lags) < 1.0
    assert await services.redis.zscore(keys.DUE, str(s.id)) is None


async def test_wallet_for_three_minutes_ends_with_insufficient_balance(
    services: Services, db: asyncpg.Pool[Any], emitted: RecordingEmitter
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=350)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        await wait_for(lambda: _status_is(db, s.id, "completed"))
    assert await assert_each_minute_once(db, s.id) == 3
    c = await consultation(db, s.id)
    assert (c["end_reason"], c["billed_minutes"], c["total_charged"]) == (
        "insufficient_balance",
        3,
        300,
    )
    assert await wallet(db, s.user_id) == 50
    row = await meter_row(db, s.id)
    # The session ended when the unpaid minute 4 would have begun.
    assert row["stopped_at"].timestamp() == pytest.approx(
        row["started_at"].timestamp() + 3 * MINUTE, abs=0.002
    )
    assert [t["minutes_left"] for t in emitted.of("session:tick", s.user_id)] == [2, 1, 0]
    assert emitted.of("session:low_balance", s.user_id) == [
        {"consultation_id": str(s.id), "minutes_left": n} for n in (2, 1, 0)
    ]
    kinds = [r["kind"] for r in await bill.breakdown(db, s.id)]
    assert kinds == ["start", "charge", "low_balance", "charge", "low_balance", "charge",
                     "low_balance", "end"]  # fmt: skip


async def test_minute_one_unpaid_ends_at_once(services: Services, db: asyncpg.Pool[Any]) -> None:
    s = await accepted_consultation(db, rate=100, wallet=50)
    await start(services, s)
    c = await consultation(db, s.id)
    assert (c["status"], c["end_reason"], c["billed_minutes"]) == (
        "completed",
        "insufficient_balance",
        0,
    )
    assert await wallet(db, s.user_id) == 50


async def test_free_minutes_come_first_and_are_funded_by_promotions(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=100, free_minutes=2)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        await wait_for(lambda: _status_is(db, s.id, "completed"))
    assert await assert_each_minute_once(db, s.id) == 3
    c = await consultation(db, s.id)
    assert (c["end_reason"], c["total_charged"]) == ("insufficient_balance", 100)
    assert await wallet(db, s.user_id) == 0
    assert await earnings(db, s.astrologer_id) == 180  # 60 % of three minutes, free ones too
    lines = [r for r in await bill.breakdown(db, s.id) if r["kind"] == "charge"]
    assert [(r["amount"], r["free_amount"]) for r in lines] == [(0, 100), (0, 100), (100, 0)]


async def test_maximum_duration_ends_the_session(services: Services, db: asyncpg.Pool[Any]) -> None:
    s = await accepted_consultation(db, rate=100, wallet=10_000, max_minutes=2)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        await wait_for(lambda: _status_is(db, s.id, "completed"))
    assert await assert_each_minute_once(db, s.id) == 2
    c = await consultation(db, s.id)
    assert c["end_reason"] == "max_duration"
    row = await meter_row(db, s.id)
    assert row["stopped_at"].timestamp() == pytest.approx(
        row["started_at"].timestamp() + 2 * MINUTE, abs=0.002
    )


async def test_recharge_during_the_session_raises_minutes_left(
    services: Services, db: asyncpg.Pool[Any], emitted: RecordingEmitter
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=300)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        await wait_for(lambda: _charged(db, s.id, 1))
        await fund(db, s.user_id, 500)
        await wait_for(lambda: _charged(db, s.id, 5))
        await session.end_by_participant(services, s.id, s.astrologer_id)
    lefts = [t["minutes_left"] for t in emitted.of("session:tick", s.user_id)]
    assert lefts[0] == 2
    assert lefts[1] == 6
    c = await consultation(db, s.id)
    assert c["end_reason"] == "astrologer_ended"
    assert c["billed_minutes"] >= 5


async def test_reconnect_within_the_grace_keeps_the_session(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        await session.participant_left(services, s.id, s.user_id)  # the phone dropped
        await asyncio.sleep(GRACE * 0.6)
        assert await session.participant_joined(services, s.id, s.user_id) == "rejoined"
        await asyncio.sleep(GRACE * 0.8)
        assert (await consultation(db, s.id))["status"] == "active"
        await session.end_by_participant(services, s.id, s.user_id)
    assert (await consultation(db, s.id))["end_reason"] == "user_ended"
    await assert_each_minute_once(db, s.id)


async def test_participant_gone_past_the_grace_ends_it_disconnected(
    services: Services, db: asyncpg.Pool[Any], emitted: RecordingEmitter
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        await asyncio.sleep(2 * MINUTE)
        # The astrologer's socket disconnects (on whatever process): gone from that instant.
        gone_at = await RedisClock(services.redis).now()
        await session.participant_left(services, s.id, s.astrologer_id)
        await wait_for(lambda: _status_is(db, s.id, "completed"))
    c = await consultation(db, s.id)
    assert c["end_reason"] == "disconnected"
    row = await meter_row(db, s.id)
    assert row["stop_party"] == "astrologer"
    # Ended exactly one grace after the disconnect, not later.
    assert gone_at + GRACE <= row["stopped_at"].timestamp() <= gone_at + GRACE + 0.05
    n = await assert_each_minute_once(db, s.id)
    # Minutes kept being charged during the grace, none after it.
    assert n == int((row["stopped_at"].timestamp() - row["started_at"].timestamp()) / MINUTE) + 1
    assert emitted.of("session:ended", s.user_id)[0]["reason"] == "disconnected"


async def test_astrologer_ending_in_the_first_minute_is_refunded(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=1_000)
    services.settings.billing_minute_seconds = 30.0  # ended within minute 1, even on a slow machine
    await start(services, s)
    await session.end_by_participant(services, s.id, s.astrologer_id)
    c = await consultation(db, s.id)
    assert (c["end_reason"], c["billed_minutes"], c["total_charged"]) == (
        "astrologer_ended",
        1,
        100,
    )
    assert await wallet(db, s.user_id) == 1_000
    assert await earnings(db, s.astrologer_id) == 0
    refunds = [r for r in await bill.breakdown(db, s.id) if r["kind"] == "refund"]
    assert [r["amount"] for r in refunds] == [100]


async def test_user_ending_in_the_first_minute_is_not_refunded(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=1_000)
    services.settings.billing_minute_seconds = 30.0  # ended within minute 1, even on a slow machine
    await start(services, s)
    await session.end_by_participant(services, s.id, s.user_id)
    assert await wallet(db, s.user_id) == 900


async def test_flushall_mid_session_loses_and_doubles_nothing(
    services: Services, db: asyncpg.Pool[Any], redis_url: str
) -> None:
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        started = (await meter_row(db, s.id))["started_at"].timestamp()
        await sleep_until(started + 3.5 * MINUTE)
        flusher = Redis.from_url(redis_url)
        await flusher.flushall()
        await flusher.aclose()
        await sleep_until(started + 8.5 * MINUTE)
        await session.end_by_participant(services, s.id, s.user_id)
    assert await assert_each_minute_once(db, s.id) == 9
    assert (await consultation(db, s.id))["total_charged"] == 900


async def test_recovery_charges_missed_minutes_once(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """No process charged for five minutes and Redis lost everything: the sweep rebuilds the
    meter and the missed minutes are charged, each once."""
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    await start(services, s)  # minute 1, then every process "dies"
    started = (await meter_row(db, s.id))["started_at"].timestamp()
    await sleep_until(started + 5.5 * MINUTE)
    await services.redis.flushall()
    async with meter.running_loop(services), heartbeats(services, s):
        await wait_for(lambda: _charged(db, s.id, 6), within=5)
        await session.end_by_participant(services, s.id, s.user_id)
    assert await assert_each_minute_once(db, s.id) >= 6


async def test_recovery_ends_sessions_whose_participants_are_gone(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """Redis kept the last-seen times but no process ran (every process holding their sockets
    died): at recovery the session ends one grace after they were last seen, and the minutes
    after that are never billed."""
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    await start(services, s)
    started = (await meter_row(db, s.id))["started_at"].timestamp()
    await sleep_until(started + STALE + 4 * MINUTE)
    async with meter.running_loop(services):
        await wait_for(lambda: _status_is(db, s.id, "completed"), within=5)
    row = await meter_row(db, s.id)
    assert row["stop_reason"] == "disconnected"
    assert row["stopped_at"].timestamp() == pytest.approx(started + GRACE, abs=0.05)
    n = await assert_each_minute_once(db, s.id)
    assert n == int(GRACE / MINUTE) + 1


async def test_two_loops_share_the_work_without_doubling(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    sessions = [await accepted_consultation(db, rate=100, wallet=10_000) for _ in range(20)]
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(meter.running_loop(services))
        await stack.enter_async_context(meter.running_loop(services))
        for s in sessions:
            await stack.enter_async_context(heartbeats(services, s))
            await start(services, s)
        await asyncio.sleep(5 * MINUTE)
        for s in sessions:
            await session.end_by_participant(services, s.id, s.user_id)
    for s in sessions:
        assert await assert_each_minute_once(db, s.id) >= 5
        assert (await consultation(db, s.id))["end_reason"] == "user_ended"


async def test_finalize_is_safe_to_run_twice(services: Services, db: asyncpg.Pool[Any]) -> None:
    from workers.context import JobContext
    from workers.sessions import finalize_consultation, sweep_meters

    s = await accepted_consultation(db, rate=100, wallet=1_000)
    await start(services, s)
    # Stopped, but the finalization did not happen (a process died right after the stop).
    at = (await meter_row(db, s.id))["started_at"].timestamp() + 0.1  # within minute 1
    stopped = await meter.stop_meter(services, s.id, "user_ended", "user", at=at)
    assert stopped is not None
    assert stopped.billed_minutes == 1
    assert (await consultation(db, s.id))["status"] == "active"
    ctx: JobContext = {"services": services}
    assert await sweep_meters(ctx) == {"running": 0, "unfinalized": 1}
    assert await finalize_consultation(ctx, str(s.id)) == "finalized"
    assert await finalize_consultation(ctx, str(s.id)) == "nothing to do"
    c = await consultation(db, s.id)
    assert (c["status"], c["billed_minutes"], c["total_charged"]) == ("completed", 1, 100)
    notes = await db.fetch(
        "SELECT user_id, event, data FROM notifications WHERE key LIKE '%' || $1", str(s.id)
    )
    assert sorted((n["user_id"], n["event"]) for n in notes) == sorted(
        [(s.user_id, "session_ended"), (s.astrologer_id, "session_ended")]
    )
    receipt = next(n for n in notes if n["user_id"] == s.user_id)
    assert receipt["data"]["review_prompt"] is True
    assert receipt["data"]["total"] == 100


async def test_joins_that_do_not_start_a_session(services: Services, db: asyncpg.Pool[Any]) -> None:
    s = await accepted_consultation(db)
    stranger = await accepted_consultation(db)
    assert await session.participant_joined(services, s.id, stranger.user_id) == "ignored"
    assert await session.participant_joined(services, s.id, s.user_id) == "waiting"
    assert await session.participant_joined(services, s.id, s.user_id) == "waiting"
    await db.execute("UPDATE consultations SET status = 'cancelled' WHERE id = $1", s.id)
    assert await session.participant_joined(services, s.id, s.astrologer_id) == "ignored"
    assert await db.fetchval("SELECT count(*) FROM meters") == 0
    # A heartbeat of a consultation without a running meter records nothing.
    await session.participants_beat(services, [(s.id, s.user_id)])
    assert await services.redis.zcard(keys.SEEN) == 0


async def test_ending_twice_and_ending_what_never_started(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    from core.errors import Conflict, NotFound

    s = await accepted_consultation(db)
    requested = await accepted_consultation(db)
    await db.execute("UPDATE consultations SET status = 'requested' WHERE id = $1", requested.id)
    with pytest.raises(Conflict, match="live session"):
        await session.end_by_participant(services, requested.id, requested.user_id)
    other = await accepted_consultation(db)
    with pytest.raises(NotFound):
        await session.end_by_participant(services, s.id, other.user_id)
    await start(services, s)
    await session.end_by_participant(services, s.id, s.user_id)
    await session.end_by_participant(services, s.id, s.astrologer_id)
    c = await consultation(db, s.id)
    assert (c["end_reason"], c["billed_minutes"]) == ("user_ended", 1)


def test_refund_rules_parse_and_match() -> None:
    rules = parse_refund_rules(["astrologer_ended:1:100", "user_disconnected:0:50"])
    assert matching_rule(rules, "astrologer_ended", 1) == rules[0]
    assert matching_rule(rules, "astrologer_ended", 2) is None
    assert matching_rule(rules, cause_of("disconnected", "user"), 0) == rules[1]
    assert matching_rule(rules, "user_ended", 0) is None
    assert matching_rule(parse_refund_rules(["any:3:10"]), "max_duration", 3) is not None
    for bad in ("astrologer_ended:1", "nobody:1:100", "user_ended:x:100", "user_ended:1:0",
                "user_ended:1:101", "user_ended:-1:100"):  # fmt: skip
        with pytest.raises(ValueError, match="AUTO_REFUND_RULES"):
            parse_refund_rules([bad])


def test_effective_max_minutes() -> None:
    # The session's cap is the money rules' (billing/rules.py, issue 13).
    from billing.rules import Terms, session_cap

    def cap(own: int | None, setting: int) -> int | None:
        return session_cap(Terms(100, 100, 60, max_minutes=own), max_session_minutes=setting)

    assert cap(None, 0) is None
    assert cap(30, 0) == 30
    assert cap(None, 60) == 60
    assert cap(90, 60) == 60


async def _status_is(db: asyncpg.Pool[Any], cid: Any, status: str) -> bool:
    return bool(
        await db.fetchval("SELECT status = $2 FROM consultations WHERE id = $1", cid, status)
    )


async def _charged(db: asyncpg.Pool[Any], cid: Any, n: int) -> bool:
    got = await db.fetchval("SELECT charged_minutes FROM meters WHERE consultation_id = $1", cid)
    return bool(got is not None and got >= n)
