"""Money arithmetic: the one place where rounding is defined.

All amounts are integers in minor units (paise, cents); percentages are whole or decimal numbers
(`60` means 60 %). Nothing here touches the database.

Rounding rules
- `split_share`: the astrologer's share is amount x percent / 100 rounded to the nearest minor
  unit, ties to even ("banker's rounding"); the platform gets the rest, so the two always add up
  to the amount exactly. Each minute's split is off the exact value by at most half a minor unit,
  in either direction, and ties alternate, so over many minutes neither side is favoured.
- `tax_on`: GST on an amount, rounded to the nearest minor unit, ties up (how invoices round).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

Percent = int | Decimal


def _check_percent(percent: Percent) -> Decimal:
    value = Decimal(percent)
    if not Decimal(0) <= value <= Decimal(100):
        raise ValueError(f"a percentage is between 0 and 100, not {percent}")
    return value


def split_share(amount: int, share_percent: Percent) -> tuple[int, int]:
    """(astrologer, platform) parts of `amount`: the share rounded half to even, the platform
    keeps the rest. `astrologer + platform == amount` always."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    percent = _check_percent(share_percent)
    exact = Decimal(amount) * percent / 100
    astrologer = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    return astrologer, amount - astrologer


def tax_on(amount: int, gst_percent: Percent) -> int:
    """GST due on `amount` (added on top of what the user pays), rounded half up."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    percent = _check_percent(gst_percent)
    return int((Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def minutes_affordable(available: int, rate: int) -> int:
    """Whole minutes `available` pays at `rate` a minute. A free rate (0) is never the wallet's
    limit: callers bound such sessions by their maximum duration instead."""
    if rate < 0:
        raise ValueError("rate must not be negative")
    if rate == 0:
        raise ValueError("a free rate has no affordable-minutes limit")
    return max(0, available) // rate


def covers_start(available: int, rate: int, min_start_minutes: int, free_minutes: int = 0) -> bool:
    """May a session start? The wallet must cover `min_start_minutes` at the rate, minus the free
    minutes the session starts with (a fully free start needs nothing)."""
    paid_minutes = max(0, min_start_minutes - free_minutes)
    return paid_minutes == 0 or rate == 0 or available >= paid_minutes * rate


def minutes_left(available: int, rate: int, free_minutes_left: int = 0) -> int:
    """Minutes a running session can still be charged: its remaining free minutes plus what the
    wallet pays (for the `session:low_balance` warning when two or fewer remain)."""
    return free_minutes_left + minutes_affordable(available, rate)
