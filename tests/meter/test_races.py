"""The stop wins over the charge (issue 12): each interleaving forced in order, not hoped for.

Every test asserts the same three things: no minute whose start is at or after the stop is
billed; the bill is exactly the minutes that started before the stop; nothing is charged twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest

from core.services import Services
from live import bill, meter, session
from live import keys as keys
from live.clock import RedisClock
from live.planner import Timing
from tests.meter.conftest import GRACE, STALE
from tests.meter.support import (
    Session,
    accepted_consultation,
    assert_each_minute_once,
    consultation,
    heartbeats,
    meter_row,
    start,
    wait_for,
    wallet,
)

# The timing-critical tests run 1-second minutes and leave 300 ms between the events they order:
# a loaded machine (the shared test host) may delay a step by that much without changing the
# interleaving being forced.
SLOW_MINUTE = 1.0
MARGIN = 0.3


async def _slow_start(services: Services, s: Session) -> None:
    services.settings.billing_minute_seconds = SLOW_MINUTE
    await start(services, s)


async def _timing(db: asyncpg.Pool[Any], cid: uuid.UUID) -> Timing:
    row = await meter_row(db, cid)
    return Timing(row["started_at"].timestamp(), row["minute_seconds"], row["max_minutes"])


async def _sleep_until_redis(clock: RedisClock, when: float) -> None:
    """Sleep until the Redis clock reads `when` (the one clock the meter decides by)."""
    left = when - await clock.now()
    if left > 0:
        await asyncio.sleep(left + 0.005)  # the Redis clock and ours tick at the same rate


async def _batch(services: Services, s: Session) -> meter.BatchReport:
    """One meter batch exactly as a loop runs it: claim time fixed first, then charge."""
    clock = RedisClock(services.redis)
    now = await clock.now()
    return await meter.charge_meters(services, [s.id], now=now, skip_locked=True, clock=clock)


async def _assert_bill(db: asyncpg.Pool[Any], s: Session, stop_at: float, rate: int = 100) -> int:
    """Billed = minutes started strictly before `stop_at`; each once; none at or after it."""
    timing = await _timing(db, s.id)
    n = await assert_each_minute_once(db, s.id)
    assert n == timing.minutes_before(stop_at), (n, stop_at - timing.started)
    c = await consultation(db, s.id)
    assert (c["billed_minutes"], c["total_charged"]) == (n, n * rate)
    return n


async def test_end_registered_before_a_minute_but_committed_after_its_charge(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """An end requested just before minute 2 begins; the batch that charges due minutes runs
    after minute 2 began and before the end's transaction: minute 2 is not charged, the stop is
    not moved forward."""
    s = await accepted_consultation(db)
    await _slow_start(services, s)
    clock = RedisClock(services.redis)
    timing = await _timing(db, s.id)
    await _sleep_until_redis(clock, timing.due(2) - MARGIN)
    at, _, _ = await clock.register_stop(s.id, "user_ended", "user")  # the end, registered
    assert at < timing.due(2)
    await _sleep_until_redis(clock, timing.due(2) + 0.05)
    report = await _batch(services, s)  # minute 2 is due by the claim's clock...
    assert report.charged == 0  # ...but starts after the registered end: the batch stops it
    assert [(st.reason, st.party) for st in report.stopped] == [("user_ended", "user")]
    stopped = report.stopped[0]
    assert stopped.stopped_at.timestamp() == pytest.approx(at, abs=1e-6)  # not moved forward
    # The end's own transaction, committing after the batch, finds it stopped.
    assert await meter.stop_meter(services, s.id, "user_ended", "user", at=at) is None
    await meter.after_stop(services, stopped)
    assert await _assert_bill(db, s, at) == 1


async def test_end_registered_after_the_claim_bills_the_minute_that_began(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """The other order: the batch fixed its time after minute 2 began, then the end came: minute
    2 started before the end and is billed, once, even though the end's lock waited for it."""
    s = await accepted_consultation(db)
    await _slow_start(services, s)
    clock = RedisClock(services.redis)
    timing = await _timing(db, s.id)
    await _sleep_until_redis(clock, timing.due(2) + 0.02)
    claim_now = await clock.now()
    at, _, _ = await clock.register_stop(s.id, "user_ended", "user")
    assert at >= claim_now
    report = await meter.charge_meters(services, [s.id], now=claim_now, clock=clock)
    assert report.charged == 1
    stopped = await meter.stop_meter(services, s.id, "user_ended", "user", at=at)
    assert stopped is not None
    await meter.after_stop(services, stopped)
    assert await _assert_bill(db, s, at) == 2


async def test_end_at_the_exact_start_of_a_minute_does_not_bill_it(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """A stop at exactly a minute's start: that minute is not billed (strictly before only)."""
    s = await accepted_consultation(db)
    await start(services, s)
    timing = await _timing(db, s.id)
    at = timing.due(3)
    await _sleep_until_redis(RedisClock(services.redis), at + 0.05)
    stopped = await meter.stop_meter(services, s.id, "user_ended", "user", at=at)
    assert stopped is not None
    await meter.after_stop(services, stopped)
    assert await _assert_bill(db, s, at) == 2


async def test_disconnect_deadline_against_a_batch(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """The astrologer's last socket leaves so that leaving + grace falls just before minute N;
    a batch runs after minute N began and before anything stopped the session: it charges up to
    N - 1 and stops the session at the deadline."""
    s = await accepted_consultation(db)
    await _slow_start(services, s)
    clock = RedisClock(services.redis)
    timing = await _timing(db, s.id)
    n = 1 + int(GRACE / SLOW_MINUTE) + 2  # a minute that begins more than a grace from now
    await _sleep_until_redis(clock, timing.due(n) - GRACE - MARGIN)
    await session.participants_beat(services, [(s.id, s.user_id), (s.id, s.astrologer_id)])
    await session.participant_left(services, s.id, s.astrologer_id)
    gone = await services.redis.zscore(keys.GONE, keys.member(s.id, s.astrologer_id))
    assert gone is not None
    deadline = gone + GRACE
    assert deadline < timing.due(n)
    await _sleep_until_redis(clock, timing.due(n) + 0.02)
    await session.participants_beat(services, [(s.id, s.user_id)])
    report = await _batch(services, s)
    assert [st.reason for st in report.stopped] == ["disconnected"]
    assert report.stopped[0].party == "astrologer"
    assert report.stopped[0].stopped_at.timestamp() == pytest.approx(deadline, abs=1e-6)
    await meter.after_stop(services, report.stopped[0])
    assert await _assert_bill(db, s, deadline) == n - 1


async def test_two_processes_with_clocks_500_ms_apart(
    services: Services, db: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two meter loops, one of them in a process whose clock runs 500 ms ahead (injected), and
    an end just before a minute begins: that minute is never billed, and every minute before
    it is billed once. (Decisions use the Redis clock; a process's own clock only paces.)"""
    real = time.monotonic
    skewed = lambda: real() + 0.5  # noqa: E731  # the injected clock of the second process
    s = await accepted_consultation(db, wallet=100_000)
    clock = RedisClock(services.redis)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 0.5)  # this whole process runs ahead
    async with (
        meter.running_loop(services),
        meter.running_loop(services, wall=skewed),
        heartbeats(services, s),
    ):
        await _slow_start(services, s)
        timing = await _timing(db, s.id)
        await _sleep_until_redis(clock, timing.due(4) - MARGIN)
        await session.end_by_participant(services, s.id, s.user_id)
    row = await meter_row(db, s.id)
    assert row["stopped_at"].timestamp() < timing.due(4)
    assert await _assert_bill(db, s, row["stopped_at"].timestamp()) == 3


async def test_redis_flushed_after_a_long_outage_bills_only_to_last_presence_plus_grace(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """Participants last present at the start; no meter ran for ~10 minutes; then Redis was
    flushed. The rebuild bounds the bill by the last presence PostgreSQL kept + the grace (4
    minutes here), not the whole outage (before: every participant "seen now", 14 billed)."""
    s = await accepted_consultation(db, wallet=100_000)
    await start(services, s)
    timing = await _timing(db, s.id)
    clock = RedisClock(services.redis)
    await _sleep_until_redis(clock, timing.due(11))  # the outage: nobody charges, nobody beats
    await services.redis.flushall()
    async with meter.running_loop(services):
        await wait_for(lambda: _completed(db, s.id), within=10)
    row = await meter_row(db, s.id)
    assert (row["stop_reason"], row["stop_party"]) in (
        ("disconnected", "user"),
        ("disconnected", "astrologer"),
    )
    present = await db.fetchval(
        "SELECT max(extract(epoch FROM present_at)) FROM session_presence"
        " WHERE consultation_id = $1",
        s.id,
    )
    assert row["stopped_at"].timestamp() == pytest.approx(float(present) + GRACE, abs=0.05)
    assert await _assert_bill(db, s, row["stopped_at"].timestamp()) == 4


async def test_redis_flushed_while_both_are_connected_ends_nothing(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """The same flush while both participants' processes keep beating: their presence is
    confirmed by the next heartbeat and the session goes on, every minute billed once."""
    s = await accepted_consultation(db, wallet=100_000)
    async with meter.running_loop(services), heartbeats(services, s):
        await start(services, s)
        timing = await _timing(db, s.id)
        clock = RedisClock(services.redis)
        await _sleep_until_redis(clock, timing.due(4))
        await services.redis.flushall()
        await _sleep_until_redis(clock, timing.due(4) + GRACE + STALE + 0.5)
        assert (await consultation(db, s.id))["status"] == "active"
        await session.end_by_participant(services, s.id, s.user_id)
    row = await meter_row(db, s.id)
    assert row["stop_reason"] == "user_ended"
    await _assert_bill(db, s, row["stopped_at"].timestamp())


async def test_a_minute_charged_past_the_stop_is_refunded_and_reported(
    services: Services, db: asyncpg.Pool[Any]
) -> None:
    """It must not happen, but if Redis loses a registered end before its commit, a batch can
    charge a minute past it: the stop then refunds that minute in its transaction and says so
    in the bill (a `refund` line with `details.overcharge`)."""
    s = await accepted_consultation(db, wallet=10_000)
    await _slow_start(services, s)
    clock = RedisClock(services.redis)
    timing = await _timing(db, s.id)
    await _sleep_until_redis(clock, timing.due(2) - MARGIN)
    at, _, _ = await clock.register_stop(s.id, "user_ended", "user")
    await services.redis.delete(keys.state(s.id))  # the registration is lost with Redis
    await _sleep_until_redis(clock, timing.due(2) + 0.05)
    assert (await _batch(services, s)).charged == 1  # minute 2, past the end: the hole
    stopped = await meter.stop_meter(services, s.id, "user_ended", "user", at=at)
    assert stopped is not None
    assert stopped.refunded is not None
    assert stopped.refunded.minutes == [2]
    await meter.after_stop(services, stopped)
    row = await meter_row(db, s.id)
    assert row["charged_minutes"] == 1
    c = await consultation(db, s.id)
    assert (c["billed_minutes"], c["total_charged"]) == (1, 100)
    assert await wallet(db, s.user_id) == 10_000 - 100
    refunds = [line for line in await bill.breakdown(db, s.id) if line["kind"] == "refund"]
    assert [r["amount"] for r in refunds] == [100]


async def _completed(db: asyncpg.Pool[Any], cid: uuid.UUID) -> bool:
    return bool(
        await db.fetchval("SELECT status = 'completed' FROM consultations WHERE id = $1", cid)
    )
