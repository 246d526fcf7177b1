"""The meter's planner: pure decisions, no I/O. Which minutes of a session are due and may be
charged, and when the session must stop.

A stop is a point in time: an end (registered on the Redis clock), a disconnect deadline (a
participant gone + DISCONNECT_GRACE_SECONDS), the maximum duration. Minute N starts at
`started + (N - 1) * minute`; it may be charged only if it starts strictly before every stop known
when the batch is planned (live/clock.py explains why no stop can appear later with an earlier
time). Presence:

- a participant is present from their join until their last socket leaves (any process): `gone`;
- a participant whose socket sits on a process that stopped beating for HEARTBEAT x MISSES is gone
  since their last presence (the process died);
- after a Redis loss presence comes from PostgreSQL (coarse) and is unconfirmed until the
  participant's process beats again: minutes past `last presence + grace` wait for that beat
  (or its absence, which stops the session at last presence + grace).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Literal

from billing import rules
from billing.ledger import Charge
from live.clock import SessionState

StopReason = Literal[
    "user_ended", "astrologer_ended", "insufficient_balance", "disconnected", "max_duration"
]
PartyName = Literal["user", "astrologer", "system"]

# One minute in the ledger's key space: `charge:{consultation}:{minute}` (DESIGN.md).
CHARGE_KEY = "charge:{consultation}:{minute}"


def charge_key(consultation_id: uuid.UUID, minute: int) -> str:
    return CHARGE_KEY.format(consultation=consultation_id, minute=minute)


@dataclass(frozen=True)
class Terms:
    """Who a session's minutes are charged to and its frozen money terms (billing/rules.py owns
    every price computation: the planner never prices a minute itself)."""

    consultation_id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    money: rules.Terms

    def charge(self, minute: int) -> Charge:
        """The ledger transfer of minute `minute`, priced by the money rules: the user's part
        from the wallet, the discount from promotions, the astrologer's share of the list rate."""
        price = rules.minute_price(self.money, minute)
        return Charge(
            key=charge_key(self.consultation_id, minute),
            consultation_id=self.consultation_id,
            user_id=self.user_id,
            astrologer_id=self.astrologer_id,
            amount=price.user,
            astrologer_share=price.astrologer,
            free_amount=price.promotions,
            currency=self.money.currency,
        )

    def minutes_left(self, charged_minutes: int, spendable: int, cap: int | None) -> int | None:
        """Minutes that can still be charged after the last charged one (billing/rules.py)."""
        return rules.minutes_left(self.money, charged_minutes, spendable, cap)

    def low(self, left: int | None) -> bool:
        """Two or fewer paid minutes left: `session:low_balance`."""
        return rules.low_balance(left, self.money)


@dataclass(frozen=True)
class Timing:
    started: float  # Redis-clock epoch seconds
    minute_seconds: float
    max_minutes: int | None

    def due(self, minute: int) -> float:
        """When minute `minute` (1 is the first) starts."""
        return self.started + (minute - 1) * self.minute_seconds

    def minutes_before(self, at: float) -> int:
        """How many minutes start strictly before `at`: what a session stopped at `at` owes."""
        if at <= self.started:
            return 0
        return math.ceil((at - self.started) / self.minute_seconds)


@dataclass(frozen=True)
class Stop:
    reason: StopReason
    party: PartyName
    at: float


@dataclass(frozen=True)
class Plan:
    """Charge minutes `first..last` (none when last < first); then stop (when `stop` is set and
    due by `now`), else look again at `wake`."""

    first: int
    last: int
    stop: Stop | None
    wake: float | None

    @property
    def minutes(self) -> range:
        return range(self.first, self.last + 1)


@dataclass(frozen=True)
class Policy:
    """The settings a plan depends on, and the session's two participants."""

    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    grace: float  # DISCONNECT_GRACE_SECONDS
    stale: float  # a process silent this long is dead (heartbeat x misses)


@dataclass(frozen=True)
class Unconfirmed:
    """Presence known only from PostgreSQL since a Redis loss: minutes starting at or after
    `bound` (last presence + grace) wait until `decide_at`, when the participant's process has
    either beaten again or is taken for dead."""

    bound: float
    decide_at: float


def deadline(
    timing: Timing, state: SessionState | None, policy: Policy, now: float
) -> tuple[Stop | None, Unconfirmed | None]:
    """The earliest stop known at `now` (it may lie in the future: a grace still running), and
    the earliest unconfirmed presence bound, if any."""
    grace, stale = policy.grace, policy.stale
    stops: list[Stop] = []
    if timing.max_minutes is not None:
        stops.append(Stop("max_duration", "system", timing.due(timing.max_minutes + 1)))
    unconfirmed: Unconfirmed | None = None
    if state is not None:
        if state.stop is not None:
            at, reason, party = state.stop
            stops.append(Stop(reason, party, at))  # type: ignore[arg-type]  # written by live only
        for uid, p in state.parties.items():
            if uid not in (policy.user_id, policy.astrologer_id):
                continue
            who: PartyName = "user" if uid == policy.user_id else "astrologer"
            if p.gone is not None:
                stops.append(Stop("disconnected", who, p.gone + grace))
                continue
            seen = p.seen if p.seen is not None else timing.started
            life = p.life if p.life is not None else seen
            if life + stale <= now:
                # The process holding the socket stopped beating: gone since the last presence.
                stops.append(Stop("disconnected", who, seen + grace))
            elif p.rebuilt and (unconfirmed is None or seen + grace < unconfirmed.bound):
                unconfirmed = Unconfirmed(seen + grace, life + stale)
    if not stops:
        return None, unconfirmed
    return min(stops, key=lambda s: s.at), unconfirmed


def plan(
    timing: Timing, charged_minutes: int, state: SessionState | None, policy: Policy, now: float
) -> Plan:
    """What a batch holding this meter at `now` does: the minutes it charges (due by `now`,
    starting strictly before the stop and before any unconfirmed presence bound), whether it
    stops now, and otherwise when to look again."""
    stop, unconfirmed = deadline(timing, state, policy, now)
    first = charged_minutes + 1
    last = charged_minutes
    blocked = False
    while True:
        due = timing.due(last + 1)
        if due > now or (stop is not None and due >= stop.at):
            break
        if unconfirmed is not None and due >= unconfirmed.bound:
            blocked = True
            break
        last += 1
    next_due = timing.due(last + 1)
    if stop is not None and stop.at <= now and next_due >= stop.at:
        return Plan(first, last, stop, None)
    wake = next_due if stop is None else min(next_due, stop.at)
    if blocked and unconfirmed is not None:
        wake = (
            unconfirmed.decide_at
            if stop is None or stop.at <= now
            else min(unconfirmed.decide_at, stop.at)
        )
    return Plan(first, last, None, wake)


def overcharged(timing: Timing, charged_minutes: int, stop_at: float) -> list[int]:
    """Minutes charged whose start is at or after the stop (must not happen; refunded if so)."""
    keep = timing.minutes_before(stop_at)
    return list(range(keep + 1, charged_minutes + 1))
