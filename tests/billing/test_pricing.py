"""Rounding is defined once: the split always adds up and never favours a side by a whole unit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import covers_start, minutes_affordable, minutes_left, split_share, tax_on


@pytest.mark.parametrize(
    ("amount", "percent", "expected"),
    [
        (1000, 60, (600, 400)),
        (1001, 60, (601, 400)),  # 600.6 -> 601
        (1003, 60, (602, 401)),  # 601.8 -> 602
        (5, 50, (2, 3)),  # 2.5: a tie goes to the even number
        (7, 50, (4, 3)),  # 3.5: a tie goes to the even number
        (999, 0, (0, 999)),
        (999, 100, (999, 0)),
        (0, 60, (0, 0)),
        (1000, Decimal("62.5"), (625, 375)),
    ],
)
def test_split_share_examples(amount: int, percent: int, expected: tuple[int, int]) -> None:
    assert split_share(amount, percent) == expected


@given(st.integers(0, 10**9), st.integers(0, 100))
def test_split_share_adds_up_and_is_within_half_a_unit(amount: int, percent: int) -> None:
    astrologer, platform = split_share(amount, percent)
    assert astrologer + platform == amount
    assert astrologer >= 0
    assert platform >= 0
    assert abs(Decimal(astrologer) - Decimal(amount) * percent / 100) <= Decimal("0.5")


def test_ties_alternate_so_neither_side_gains_over_many_minutes() -> None:
    total = sum(split_share(amount, 50)[0] for amount in range(1, 2001, 2))
    exact = sum(amount / 2 for amount in range(1, 2001, 2))
    assert abs(total - exact) <= 1


@pytest.mark.parametrize(
    ("amount", "gst", "tax"),
    [(10_000, 18, 1800), (9_999, 18, 1800), (25, 18, 5), (2, 25, 1), (100, 0, 0)],
)
def test_tax_on_rounds_half_up(amount: int, gst: int, tax: int) -> None:
    assert tax_on(amount, gst) == tax


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        split_share(-1, 60)
    with pytest.raises(ValueError, match="between 0 and 100"):
        split_share(100, 101)
    with pytest.raises(ValueError, match="negative"):
        tax_on(-5, 18)
    with pytest.raises(ValueError, match="between 0 and 100"):
        tax_on(5, -1)
    with pytest.raises(ValueError, match="free rate"):
        minutes_affordable(100, 0)
    with pytest.raises(ValueError, match="negative"):
        minutes_affordable(100, -1)


def test_minutes_helpers() -> None:
    assert minutes_affordable(999, 100) == 9
    assert minutes_affordable(-5, 100) == 0
    assert minutes_left(250, 100, free_minutes_left=3) == 5
    assert covers_start(500, 100, 5)
    assert not covers_start(499, 100, 5)
    assert covers_start(300, 100, 5, free_minutes=2)
    assert covers_start(0, 100, 5, free_minutes=5)
    assert covers_start(0, 0, 5)
