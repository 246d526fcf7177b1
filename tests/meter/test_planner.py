"""The pure planner (live.planner): which minutes a batch charges and when a session stops."""

from __future__ import annotations

import uuid

import pytest

from live.clock import Party, SessionState
from live.planner import Policy, Stop, Timing, overcharged, plan

U, A = uuid.uuid4(), uuid.uuid4()
T = Timing(started=1000.0, minute_seconds=60.0, max_minutes=None)
POLICY = Policy(U, A, grace=30.0, stale=30.0)


def state(
    *,
    stop: tuple[float, str, str] | None = None,
    user: Party | None = None,
    astrologer: Party | None = None,
) -> SessionState:
    here = Party(seen=None, life=None, gone=None, rebuilt=False)
    return SessionState(stop=stop, parties={U: user or here, A: astrologer or here})


def present(at: float) -> Party:
    return Party(seen=at, life=at, gone=None, rebuilt=False)


def test_due_minutes_are_charged_and_the_next_wakes_the_meter() -> None:
    p = plan(T, 1, state(user=present(1150), astrologer=present(1150)), POLICY, now=1150.0)
    assert (list(p.minutes), p.stop, p.wake) == ([2, 3], None, T.due(4))


@pytest.mark.parametrize(
    ("stop_at", "billed"),
    [(T.due(3) - 0.05, 2), (T.due(3), 2), (T.due(3) + 0.001, 3)],
    ids=["50 ms before minute 3", "at the start of minute 3", "just after"],
)
def test_a_registered_end_wins_over_every_minute_starting_at_or_after_it(
    stop_at: float, billed: int
) -> None:
    s = state(stop=(stop_at, "user_ended", "user"), user=present(1200), astrologer=present(1200))
    p = plan(T, 1, s, POLICY, now=T.due(3) + 5)
    assert p.last == billed
    assert p.stop == Stop("user_ended", "user", stop_at)
    assert overcharged(T, 3, stop_at) == list(range(billed + 1, 4))


def test_a_disconnect_deadline_is_gone_plus_grace() -> None:
    gone = Party(seen=1050, life=1050, gone=1050.0, rebuilt=False)
    p = plan(T, 1, state(user=gone, astrologer=present(1070)), POLICY, now=1070.0)
    assert (p.last, p.stop, p.wake) == (2, None, 1080.0)  # minute 2 began before the deadline
    p = plan(T, 2, state(user=gone, astrologer=present(1130)), POLICY, now=1130.0)
    assert (p.last, p.stop) == (2, Stop("disconnected", "user", 1080.0))


def test_a_dead_process_stops_at_the_last_presence_plus_grace() -> None:
    silent = Party(seen=1010.0, life=1010.0, gone=None, rebuilt=False)
    p = plan(T, 1, state(astrologer=silent, user=present(1200)), POLICY, now=1041.0)
    assert (p.last, p.stop) == (1, Stop("disconnected", "astrologer", 1040.0))


def test_presence_rebuilt_from_postgres_waits_for_a_heartbeat() -> None:
    rebuilt = Party(seen=1010.0, life=1500.0, gone=None, rebuilt=True)
    p = plan(T, 1, state(user=rebuilt, astrologer=present(1500)), POLICY, now=1500.0)
    assert (p.last, p.stop, p.wake) == (1, None, 1530.0)  # minute 2 starts after 1010 + 30
    p = plan(T, 1, state(user=rebuilt, astrologer=present(1530)), POLICY, now=1530.0)
    assert (p.last, p.stop) == (1, Stop("disconnected", "user", 1040.0))


def test_the_maximum_is_a_stop_too() -> None:
    capped = Timing(started=1000.0, minute_seconds=60.0, max_minutes=2)
    p = plan(capped, 1, state(user=present(1200), astrologer=present(1200)), POLICY, 1200.0)
    assert (p.last, p.stop) == (2, Stop("max_duration", "system", capped.due(3)))
