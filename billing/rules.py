"""The money rules: pure functions over a consultation's frozen terms. The one place where a price,
a split, a tax, a fee or a refund percentage is computed, and the one place where rounding happens.

All amounts are integers in minor units (paise, cents); percentages are whole or decimal numbers
(`60` means 60 %). Nothing here touches the database, Redis or the clock.

The rules (DESIGN.md, Money; issue 13):
- A minute's value is the astrologer's LIST rate. The user pays the discounted price of the minute
  (0 for a free minute; the percent-discounted rate; minus whatever flat promo credit is left,
  exact money, never rounded to whole minutes). The promotions account funds exactly the rest
  (list value - user price). The astrologer always earns their share of the list rate; the
  platform keeps the rest. So `user + promotions == astrologer + platform == list_rate` for every
  minute, whatever the promo.
- "Minutes left" has one definition (`minutes_left`), used by the request's answer, the start
  check, the booking hold and the meter: the free minutes left, then whatever the spendable balance
  (balance - held) plus the remaining promo credit pays, bounded by the session's cap.
- A session whose minutes cost the user nothing (rate 0, e.g. a 100 % promo) is always capped
  (`session_cap`), even when MAX_SESSION_MINUTES is 0.

Rounding, defined once (`_portion`), each use naming its mode:
- shares (astrologer/platform of a minute, a question, a tip, a late fee) round half to even: each
  split is off the exact value by at most half a minor unit, ties alternate, and the two parts add
  up exactly (the platform's part is the remainder);
- GST rounds half up (how invoices round);
- a percent promo's discounted rate rounds down (the user never pays above the promise; the
  promotions account funds the extra fraction);
- refund and late-fee percentages, and the bonus/tax returned with a card refund, round down
  cumulatively (what was given back after several partial refunds never exceeds the exact share).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any, Literal, Protocol

Percent = int | Decimal


class Row(Protocol):
    """Anything indexed by column name: an asyncpg Record, a dict."""

    def __getitem__(self, key: str, /) -> Any: ...


PromoKind = Literal["percent", "flat", "free_minutes"]

# The cap of a session whose minutes cost the user nothing, when settings give none: without it a
# 100 % promo with MAX_SESSION_MINUTES 0 would run (and pay the astrologer from promotions) forever.
DEFAULT_FREE_SESSION_MAX_MINUTES = 30


def _percent(percent: Percent) -> Decimal:
    value = Decimal(percent)
    if not Decimal(0) <= value <= Decimal(100):
        raise ValueError(f"a percentage is between 0 and 100, not {percent}")
    return value


def _portion(amount: int, percent: Percent, rounding: str) -> int:
    """`amount` x `percent` / 100 rounded with `rounding` (a `decimal` mode): the only rounding."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    exact = Decimal(amount) * _percent(percent) / 100
    return int(exact.quantize(Decimal(1), rounding=rounding))


# --- Splits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Who receives an amount: the astrologer's share and the platform's rest (they add up)."""

    astrologer: int
    platform: int

    def __iter__(self) -> Iterator[int]:  # `astrologer, platform = split(...)`
        return iter((self.astrologer, self.platform))


def split(amount: int, share_percent: Percent) -> Split:
    """The astrologer's `share_percent` of `amount` (half to even) and the platform's rest."""
    astrologer = _portion(amount, share_percent, ROUND_HALF_EVEN)
    return Split(astrologer, amount - astrologer)


def question_split(price: int, share_percent: Percent) -> Split:
    """A question's charge is split like a minute (API.md v1.1): the astrologer's share of the
    price, the platform the rest."""
    return split(price, share_percent)


def tip_split(amount: int, tip_share_percent: Percent) -> Split:
    """A tip: TIP_SHARE_PERCENT (default 90) to the astrologer, the rest to the platform."""
    return split(amount, tip_share_percent)


# --- Terms ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """What a consultation costs, frozen on it when requested or booked (DESIGN.md pitfalls)."""

    list_rate: int  # the astrologer's rate a minute: each minute's value
    rate: int  # what the user pays a minute after a percent promo (== list_rate without one)
    share_percent: Percent  # the astrologer's share of the list rate
    free_minutes: int = 0  # the first minutes cost the user nothing (first session, promo)
    promo_credit: int = 0  # a flat promo: money off the first paid minutes, exact
    currency: str = "INR"
    max_minutes: int | None = None  # the consultation's own cap (None or 0: none)

    def __post_init__(self) -> None:
        if self.list_rate < 0 or not 0 <= self.rate <= self.list_rate:
            raise ValueError("rates: 0 <= rate <= list_rate")
        if self.free_minutes < 0 or self.promo_credit < 0:
            raise ValueError("free minutes and promo credit must not be negative")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError("max_minutes must not be negative")
        _percent(self.share_percent)

    @classmethod
    def from_record(cls, row: Row) -> Terms:
        """Terms from a consultation row (`list_rate` may be NULL on rows older than it)."""
        rate = int(row["rate"])
        list_rate = row["list_rate"] if row["list_rate"] is not None else rate
        return cls(
            list_rate=int(list_rate),
            rate=rate,
            share_percent=row["share_percent"],
            free_minutes=int(row["free_minutes"] or 0),
            promo_credit=int(row["promo_credit"] or 0),
            currency=str(row["currency"]).strip(),
            max_minutes=row["max_minutes"] or None,
        )


def discounted_rate(list_rate: int, percent_off: Percent) -> int:
    """The rate a user pays with a `percent_off` promo: rounded down (never above the promise)."""
    return _portion(list_rate, Decimal(100) - _percent(percent_off), ROUND_DOWN)


def terms_for(
    list_rate: int,
    share_percent: Percent,
    *,
    promo_kind: PromoKind | None = None,
    promo_value: int = 0,
    free_minutes: int = 0,
    currency: str = "INR",
    max_minutes: int | None = None,
) -> Terms:
    """Terms of a new consultation: the list rate, the share, an optional promo (`percent` off
    the rate, a `flat` credit, or `free_minutes`) and free minutes granted otherwise."""
    rate, credit = list_rate, 0
    if promo_kind == "percent":
        rate = discounted_rate(list_rate, promo_value)
    elif promo_kind == "flat":
        credit = promo_value
    elif promo_kind == "free_minutes":
        free_minutes += promo_value
    elif promo_kind is not None:
        raise ValueError(f"unknown promo kind {promo_kind!r}")
    return Terms(list_rate, rate, share_percent, free_minutes, credit, currency, max_minutes)


# --- Minutes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinutePrice:
    """Who funds minute N and who receives it. `user + promotions == list_price ==
    astrologer + platform`."""

    minute: int
    list_price: int
    user: int  # from the wallet
    promotions: int  # from the promotions account: exactly the discount
    astrologer: int  # the share of the list rate, whatever the promo
    platform: int


def user_cost(terms: Terms, minutes: int) -> int:
    """What the user pays in total for minutes 1..`minutes`."""
    if minutes <= 0:
        return 0
    paid = max(0, minutes - terms.free_minutes)
    return max(0, paid * terms.rate - terms.promo_credit)


def minute_price(terms: Terms, minute: int) -> MinutePrice:
    """The price of minute `minute` (1-based) and who funds and receives it."""
    if minute < 1:
        raise ValueError("minutes count from 1")
    user = user_cost(terms, minute) - user_cost(terms, minute - 1)
    share = split(terms.list_rate, terms.share_percent)
    return MinutePrice(
        minute, terms.list_rate, user, terms.list_rate - user, share.astrologer, share.platform
    )


def session_cap(
    terms: Terms,
    *,
    max_session_minutes: int = 0,
    free_session_max_minutes: int = DEFAULT_FREE_SESSION_MAX_MINUTES,
) -> int | None:
    """The most minutes the session may run: the smaller of the consultation's cap and
    MAX_SESSION_MINUTES (0 = none); a session whose minutes cost the user nothing (rate 0) is
    always capped, by `free_session_max_minutes` at most. None: only the wallet limits it."""
    caps = [c for c in (terms.max_minutes, max_session_minutes) if c]
    if terms.rate == 0:
        caps.append(max(1, free_session_max_minutes))
    return min(caps) if caps else None


def minutes_affordable(terms: Terms, charged_minutes: int, spendable: int) -> int | None:
    """Minutes after the `charged_minutes` already charged that the user can pay with `spendable`
    (balance - held), the free minutes and the promo credit left; None when they cost nothing."""
    if terms.rate == 0:
        return None
    budget = max(0, spendable) + user_cost(terms, charged_minutes) + terms.promo_credit
    last = terms.free_minutes + budget // terms.rate
    return max(0, last - charged_minutes)


def minutes_left(terms: Terms, charged_minutes: int, spendable: int, cap: int | None) -> int | None:
    """Minutes that can still be charged: `minutes_affordable` bounded by the session's `cap`
    (`session_cap`). None only when neither limits it (cannot happen when `cap` comes from
    `session_cap`, which caps every zero-price session)."""
    left = minutes_affordable(terms, charged_minutes, spendable)
    if cap is not None:
        room = max(0, cap - charged_minutes)
        left = room if left is None else min(left, room)
    return left


def start_cost(terms: Terms, min_start_minutes: int) -> int:
    """What the wallet must cover for a session to start: the first MIN_START_MINUTES at the
    user's prices (free minutes and promo credit deducted exactly)."""
    return user_cost(terms, min_start_minutes)


def covers_start(terms: Terms, spendable: int, min_start_minutes: int) -> bool:
    """May the session start (or the request be made, or the waitlist be joined)?"""
    return max(0, spendable) >= start_cost(terms, min_start_minutes)


def hold_amount(terms: Terms, minutes: int) -> int:
    """What a booking of `minutes` minutes holds from the wallet: those minutes' user prices."""
    return user_cost(terms, minutes)


def low_balance(left: int | None, terms: Terms) -> bool:
    """Warn both sides when two or fewer paid minutes are left (never for a zero-price session)."""
    return left is not None and left <= 2 and terms.rate > 0


# --- Fees, refunds, recharges ---------------------------------------------------------------


def late_fee(held: int, percent: Percent) -> int:
    """The part of a booking's hold kept on a late cancellation (CANCEL_LATE_FEE_PERCENT)."""
    return _portion(held, percent, ROUND_DOWN)


def refund_amount(charged: int, percent: Percent) -> int:
    """An automatic refund of `percent` of what was charged, rounded down."""
    return _portion(charged, percent, ROUND_DOWN)


def pro_rata(part: int, total: int, done_before: int, done_after: int) -> int:
    """The slice of `part` that goes with moving `done_before` -> `done_after` of `total`, rounded
    down cumulatively (a card refund's bonus and GST): the slices of successive partial refunds
    add up to `part` exactly when `done_after` reaches `total`."""
    if total <= 0 or not 0 <= done_before <= done_after <= total:
        raise ValueError("0 <= done_before <= done_after <= total, total > 0")
    return part * done_after // total - part * done_before // total


def tax_on(amount: int, gst_percent: Percent) -> int:
    """GST due on `amount` (added on top of what the user pays), rounded half up."""
    return _portion(amount, gst_percent, ROUND_HALF_UP)


@dataclass(frozen=True)
class RechargeQuote:
    amount: int  # credited to the wallet
    bonus: int  # credited on top, funded by promotions
    tax: int  # GST on the amount
    total: int  # what the user pays the gateway: amount + tax


def recharge_quote(amount: int, gst_percent: Percent, bonus: int = 0) -> RechargeQuote:
    """A recharge's figures: GST on top of the amount (never taken from the client), the pack's
    bonus credited free."""
    if amount <= 0 or bonus < 0:
        raise ValueError("a recharge credits a positive amount and a non-negative bonus")
    tax = tax_on(amount, gst_percent)
    return RechargeQuote(amount, bonus, tax, amount + tax)
