"""Questions expiring: the delayed job and the sweep release the hold and tell the user; a
question racing its own expiry is answered once or expired once, never both, and its hold is
captured or released exactly once (interleavings forced with a row lock held by the test)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core.errors import Conflict
from core.services import Services
from questions import service
from tests.consultations.helpers import RecordingEmitter, opened
from tests.questions.support import PRICE, earnings, question_pair, wallet
from workers.questions import expire_question, questions_sweep


@pytest.fixture
async def env(database_url: str, redis_url: str, tmp_path: Path) -> Any:
    async with opened(database_url, redis_url, tmp_path) as pair:
        yield pair


async def _ask(services: Services, user: Any, astrologer: Any, text: str = "When?") -> Any:
    q, created = await service.ask(
        services,
        user_id=user.id,
        astrologer_id=astrologer.id,
        text=text,
        profile_ids=None,
        idempotency_key=None,
    )
    assert created
    return q


async def _make_due(db: Any, question_id: uuid.UUID) -> None:
    await db.execute(
        "UPDATE questions SET answer_due_at = now() - interval '1 second' WHERE id = $1",
        question_id,
    )


async def test_the_job_expires_a_due_question_once(
    env: tuple[Services, RecordingEmitter],
) -> None:
    services, emitter = env
    db = services.db
    user, astrologer = await question_pair(db)
    q = await _ask(services, user, astrologer)
    # The durable job was enqueued for the deadline, with the question's own job id.
    assert await services.arq.exists("arq:job:" + f"question:expire:{q.id}")
    ctx: Any = {"services": services}
    with pytest.raises(Exception, match="Retry"):  # not due yet: retried after what is left
        await expire_question(ctx, str(q.id))
    await _make_due(db, q.id)
    assert await expire_question(ctx, str(q.id)) == "expired"
    assert await expire_question(ctx, str(q.id)) == "closed"  # a second run does nothing
    assert await questions_sweep(ctx) == 0
    assert await wallet(db, user.id) == (20_000, 0)
    assert await db.fetchval("SELECT status FROM holds") == "released"
    events = await db.fetch("SELECT event FROM notifications WHERE user_id = $1", user.id)
    assert [r["event"] for r in events] == ["question_expired"]
    [(payload, _room)] = [e for e in emitter.named("question:updated") if e[1] == f"user:{user.id}"]
    assert payload["question"]["status"] == "expired"
    assert emitter.named("question:created")[0][1] == f"user:{astrologer.id}"


async def test_the_sweep_expires_what_the_jobs_missed(
    env: tuple[Services, RecordingEmitter],
) -> None:
    services, _ = env
    db = services.db
    user, astrologer = await question_pair(db, funds=100_000)
    due = [await _ask(services, user, astrologer, f"q{n}") for n in range(3)]
    later = await _ask(services, user, astrologer, "later")
    await services.redis.flushall()  # the queue is lost
    for q in due:
        await _make_due(db, q.id)
    assert await questions_sweep({"services": services}) == 3
    rows = await db.fetch("SELECT id, status FROM questions")
    assert {r["id"]: r["status"] for r in rows} == {
        **{q.id: "expired" for q in due},
        later.id: "open",
    }
    assert await wallet(db, user.id) == (100_000, PRICE)


# Transitions waiting on a question's row lock (the LOCK statement of questions/service.py).
WAITING = """
SELECT count(*) FROM pg_stat_activity
 WHERE wait_event_type = 'Lock' AND datname = current_database()
   AND query LIKE '%FROM questions WHERE id = $1 FOR UPDATE%'
"""
WAITER_START = """
SELECT max(xact_start) + interval '1 millisecond' FROM pg_stat_activity
 WHERE wait_event_type = 'Lock' AND datname = current_database()
   AND query LIKE '%FROM questions WHERE id = $1 FOR UPDATE%'
"""


async def _waiting_on_lock(db: Any, count: int) -> None:
    """Until `count` backends wait for a lock on `questions` (the forced interleaving)."""
    for _ in range(500):
        waiting = await db.fetchval(WAITING)
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} waiters never queued")


async def _race(services: Services, q: Any, astrologer: Any, answer_first: bool) -> list[Any]:
    """Hold the question's row lock; queue the answer and the expiry behind it in the given
    order, the deadline falling between the two transactions' starts; then let go."""
    db = services.db
    locker = await db.acquire()
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM questions WHERE id = $1 FOR UPDATE", q.id)

        async def do_answer() -> Any:
            return await service.answer(
                services, astrologer_id=astrologer.id, question_id=q.id, text="Soon."
            )

        async def do_expire() -> Any:
            return await service.expire(services, q.id)

        first, second = (do_answer, do_expire) if answer_first else (do_expire, do_answer)
        tasks = [asyncio.create_task(first())]
        await _waiting_on_lock(db, 1)
        if answer_first:
            # The deadline falls just after the waiting answer's transaction began (so it was
            # sent in time), and has passed before the expiry starts.
            due = await locker.fetchval(WAITER_START)
            await locker.execute("UPDATE questions SET answer_due_at = $2 WHERE id = $1", q.id, due)
            # Until the deadline (a millisecond away) has passed on the database's clock.
            await locker.execute(
                "SELECT pg_sleep(greatest(0, extract(epoch FROM $1::timestamptz "
                "- clock_timestamp())) + 0.002)",
                due,
            )
        else:
            await locker.execute(
                "UPDATE questions SET answer_due_at = now() - interval '1 second' WHERE id = $1",
                q.id,
            )
        tasks.append(asyncio.create_task(second()))
        await _waiting_on_lock(db, 2)
        # The sweep runs meanwhile too: it reads the committed deadline (not yet due) and
        # leaves the question to the two queued transitions.
        tasks.append(asyncio.create_task(service.sweep(services)))
        await tx.commit()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await db.release(locker)
    return results


@pytest.mark.parametrize("answer_first", [True, False])
async def test_a_question_racing_its_expiry_closes_exactly_once(
    env: tuple[Services, RecordingEmitter], answer_first: bool
) -> None:
    services, _ = env
    db = services.db
    user, astrologer = await question_pair(db)
    q = await _ask(services, user, astrologer)
    results = await _race(services, q, astrologer, answer_first)
    status = await db.fetchval("SELECT status FROM questions WHERE id = $1", q.id)
    hold = await db.fetchval("SELECT status FROM holds")
    transfers = await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'question_charge'")
    if answer_first:
        answered, expired, swept = results
        assert isinstance(answered, service.Question), repr(answered)
        assert answered.status == "answered"
        assert expired is None
        assert swept == 0
        assert (status, hold, transfers) == ("answered", "captured", 1)
        assert await wallet(db, user.id) == (20_000 - PRICE, 0)
        assert await earnings(db, astrologer.id) == PRICE * 60 // 100
    else:
        expired, answered, swept = results
        assert isinstance(expired, service.Question)
        assert expired.status == "expired"
        assert isinstance(answered, Conflict)
        assert answered.code == "invalid_state"
        assert swept == 0
        assert (status, hold, transfers) == ("expired", "released", 0)
        assert await wallet(db, user.id) == (20_000, 0)
        assert await earnings(db, astrologer.id) == 0
    events = [
        r["event"]
        for r in await db.fetch("SELECT event FROM notifications WHERE user_id = $1", user.id)
    ]
    assert events == ["question_answered" if answer_first else "question_expired"]


async def test_concurrent_cancels_and_expiries_release_once(
    env: tuple[Services, RecordingEmitter],
) -> None:
    services, _ = env
    db = services.db
    user, astrologer = await question_pair(db)
    q = await _ask(services, user, astrologer)
    await _make_due(db, q.id)
    results = await asyncio.gather(
        *(service.expire(services, q.id) for _ in range(4)),
        service.cancel(services, user_id=user.id, question_id=q.id),
        return_exceptions=True,
    )
    closed = [r for r in results if isinstance(r, service.Question)]
    assert len(closed) == 1
    assert await wallet(db, user.id) == (20_000, 0)
    assert await db.fetchval("SELECT count(*) FROM holds WHERE status = 'released'") == 1


async def test_an_answer_after_the_deadline_is_refused(
    env: tuple[Services, RecordingEmitter],
) -> None:
    services, _ = env
    db: asyncpg.Pool[Any] = services.db
    user, astrologer = await question_pair(db)
    q = await _ask(services, user, astrologer)
    await _make_due(db, q.id)
    with pytest.raises(Conflict) as err:
        await service.answer(services, astrologer_id=astrologer.id, question_id=q.id, text="x")
    assert err.value.code == "question_expired"
    assert await wallet(db, user.id) == (20_000, PRICE)  # still held until it expires
