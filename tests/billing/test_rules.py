"""The money rules (billing/rules.py): the issue's reproductions as examples, and a property test
over promo kinds x rates x shares x wallet states that checks every rule against a minute-by-minute
simulation of what the user, the promotions account, the astrologer and the platform should see."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import rules
from billing.rules import Terms


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
def test_split_examples(amount: int, percent: int, expected: tuple[int, int]) -> None:
    assert tuple(rules.split(amount, percent)) == expected


def test_ties_alternate_so_neither_side_gains_over_many_minutes() -> None:
    total = sum(rules.split(amount, 50).astrologer for amount in range(1, 2001, 2))
    exact = sum(amount / 2 for amount in range(1, 2001, 2))
    assert abs(total - exact) <= 1


@pytest.mark.parametrize(
    ("amount", "gst", "tax"),
    [(10_000, 18, 1800), (9_999, 18, 1800), (25, 18, 5), (2, 25, 1), (100, 0, 0)],
)
def test_tax_rounds_half_up(amount: int, gst: int, tax: int) -> None:
    assert rules.tax_on(amount, gst) == tax
    assert rules.recharge_quote(amount or 1, gst, 7).bonus == 7


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        rules.split(-1, 60)
    with pytest.raises(ValueError, match="between 0 and 100"):
        rules.split(100, 101)
    with pytest.raises(ValueError, match="between 0 and 100"):
        rules.tax_on(5, -1)
    with pytest.raises(ValueError, match="rate"):
        Terms(100, 101, 60)
    with pytest.raises(ValueError, match="count from 1"):
        rules.minute_price(Terms(100, 100, 60), 0)
    with pytest.raises(ValueError, match="promo kind"):
        rules.terms_for(100, 60, promo_kind="bogus")  # type: ignore[arg-type]  # bad on purpose


def test_percent_promo_never_cuts_the_astrologer() -> None:
    """Issue 13 item 1: list 100, share 60 %, promo 50 %: the astrologer earns 60, the user pays
    50 and the promotions account funds the other 50; the platform keeps 40."""
    terms = rules.terms_for(100, 60, promo_kind="percent", promo_value=50)
    price = rules.minute_price(terms, 1)
    assert (price.user, price.promotions, price.astrologer, price.platform) == (50, 50, 60, 40)
    small = rules.minute_price(rules.terms_for(100, 60, promo_kind="percent", promo_value=10), 3)
    assert (small.user, small.promotions, small.astrologer) == (90, 10, 60)


def test_a_free_session_is_capped_even_without_max_session_minutes() -> None:
    terms = rules.terms_for(100, 60, promo_kind="percent", promo_value=100)
    assert terms.rate == 0
    assert rules.session_cap(terms, max_session_minutes=0, free_session_max_minutes=20) == 20
    assert rules.minutes_left(terms, 5, 0, 20) == 15
    assert rules.session_cap(terms, max_session_minutes=10, free_session_max_minutes=20) == 10
    assert rules.session_cap(Terms(100, 100, 60), max_session_minutes=0) is None


def test_flat_promo_is_exact_money() -> None:
    """Issue 13 item 2: ₹1 off at ₹50/min takes ₹1 off minute 1, it does not make it free."""
    terms = rules.terms_for(5000, 60, promo_kind="flat", promo_value=100)
    first, second = rules.minute_price(terms, 1), rules.minute_price(terms, 2)
    assert (first.user, first.promotions) == (4900, 100)
    assert (second.user, second.promotions) == (5000, 0)
    assert rules.hold_amount(terms, 5) == 5 * 5000 - 100
    assert rules.start_cost(terms, 5) == 5 * 5000 - 100


def test_minutes_left_is_one_definition() -> None:
    """Issue 13 item 3: rate 100, credit 150, empty wallet: exactly one minute, for everyone."""
    terms = rules.terms_for(100, 60, promo_kind="flat", promo_value=150)
    assert rules.minutes_left(terms, 0, 0, None) == 1
    assert rules.minute_price(terms, 2).user == 50  # the second minute needs 50 from the wallet
    assert rules.minutes_left(terms, 1, 50, None) == 1
    assert rules.minutes_left(terms, 1, 49, None) == 0


def test_fees_and_refund_percentages_round_down() -> None:
    assert rules.late_fee(999, 50) == 499
    assert rules.refund_amount(333, 50) == 166
    assert rules.discounted_rate(101, 50) == 50  # 50.5: the user never pays above the promise
    parts = [rules.pro_rata(1000, 3, 0, 1), rules.pro_rata(1000, 3, 1, 2)]
    parts.append(rules.pro_rata(1000, 3, 2, 3))
    assert parts == [333, 333, 334]
    assert tuple(rules.question_split(1001, 60)) == (601, 400)
    assert tuple(rules.tip_split(1000, 90)) == (900, 100)


# --- The property test ------------------------------------------------------------------------

shares = st.one_of(st.integers(0, 100), st.decimals(0, 100, places=1))
kinds = st.sampled_from([None, "percent", "flat", "free_minutes"])


def simulate(terms: Terms, spendable: int, charged: int, limit: int) -> tuple[int, list[int]]:
    """Charge minutes one by one after `charged` the way the meter does: minute N only when the
    wallet covers its user price. Returns (minutes paid, user prices of minutes 1..limit)."""
    credit = terms.promo_credit
    prices: list[int] = []
    for n in range(1, limit + 1):
        if n <= terms.free_minutes:
            prices.append(0)
            continue
        used = min(credit, terms.rate)
        credit -= used
        prices.append(terms.rate - used)
    paid = 0
    money = spendable
    for n in range(charged + 1, limit + 1):
        if prices[n - 1] > money:
            break
        money -= prices[n - 1]
        paid += 1
    return paid, prices


@settings(max_examples=500, derandomize=True, deadline=None)
@given(
    data=st.data(),
    list_rate=st.integers(0, 20_000),
    share=shares,
    kind=kinds,
    first_free=st.integers(0, 5),
    charged=st.integers(0, 40),
    min_start=st.integers(0, 10),
)
def test_money_rules_hold_for_every_promo_rate_share_and_wallet(
    data: st.DataObject,
    list_rate: int,
    share: int | Decimal,
    kind: rules.PromoKind | None,
    first_free: int,
    charged: int,
    min_start: int,
) -> None:
    # Promo values and wallet states are drawn in proportion to the rate, so that every case
    # (credit smaller or larger than a minute, a wallet of 0..40 minutes, odd amounts) comes up.
    unit = max(1, list_rate)
    value = {
        None: st.just(0),
        "percent": st.integers(0, 100),
        "flat": st.integers(0, 12 * unit + 99),
        "free_minutes": st.integers(0, 10),
    }[kind]
    promo_value = data.draw(value, label="promo_value")
    terms = rules.terms_for(
        list_rate, share, promo_kind=kind, promo_value=promo_value, free_minutes=first_free
    )
    held = data.draw(st.integers(0, 5 * unit), label="held")
    balance = data.draw(st.integers(0, 40 * unit + 99), label="balance")
    spendable = balance - held  # the meter and the checks see balance - held
    per_minute = max(1, terms.rate)
    horizon = charged + terms.free_minutes + (max(0, spendable) + terms.promo_credit) // per_minute
    horizon += 3 + min_start
    paid, prices = simulate(terms, max(0, spendable), charged, horizon)
    exact_share = Decimal(list_rate) * Decimal(share) / 100
    for n in range(1, horizon + 1):
        p = rules.minute_price(terms, n)
        # The parts add up, nothing is negative, and the user pays the simulated discounted price.
        assert p.user + p.promotions == p.list_price == list_rate == p.astrologer + p.platform
        assert min(p.user, p.promotions, p.astrologer, p.platform) >= 0
        assert p.user == prices[n - 1]
        # The astrologer always gets their share of the LIST rate (within half a minor unit).
        assert abs(Decimal(p.astrologer) - exact_share) <= Decimal("0.5")
        # The promotions account funds exactly the discount (percent off, free minute, credit).
        assert p.promotions == list_rate - prices[n - 1]
    # The promo credit is spent as exact money, never more than given.
    credit_used = sum(
        terms.rate - prices[n - 1] for n in range(terms.free_minutes + 1, horizon + 1)
    )
    assert credit_used == min(terms.promo_credit, (horizon - terms.free_minutes) * terms.rate)
    # A percent promo: the user's rate is at most the promise and within one unit of it.
    if kind == "percent":
        promised = Decimal(list_rate) * (100 - promo_value) / 100
        assert promised - 1 < terms.rate <= promised
    # One definition of minutes left, agreeing with the simulation.
    cap = rules.session_cap(terms, max_session_minutes=0, free_session_max_minutes=30)
    left = rules.minutes_left(terms, charged, spendable, cap)
    if terms.rate == 0:
        assert cap == 30
        assert left == max(0, 30 - charged)
    else:
        assert cap is None
        assert paid < horizon - charged  # the horizon was long enough to see the end
        assert left == paid == rules.minutes_affordable(terms, charged, spendable)
    capped = rules.minutes_left(terms, charged, spendable, charged + 2)
    assert capped is not None
    assert capped <= 2
    # Start check, booking hold and cost are the same sums of minute prices.
    assert rules.start_cost(terms, min_start) == sum(prices[:min_start])
    assert rules.hold_amount(terms, min_start) == sum(prices[:min_start])
    covers = rules.covers_start(terms, spendable, min_start)
    assert covers == (max(0, spendable) >= sum(prices[:min_start]))
    if terms.rate:  # the start check agrees with the meter: the first minutes will be paid
        fresh, _ = simulate(terms, max(0, spendable), 0, horizon)
        assert covers == (fresh >= min_start)
    # The low-balance warning follows minutes left, and never fires for a zero-price session.
    assert rules.low_balance(left, terms) == (terms.rate > 0 and left is not None and left <= 2)
