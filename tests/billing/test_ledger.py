"""The ledger against real PostgreSQL: postings, idempotency, concurrency, the batch path,
system balance roll-ups and the database's own guards."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeAlias

import asyncpg
import pytest

from billing.ledger import (
    Charge,
    InsufficientFunds,
    Leg,
    Transfer,
    account_id,
    post_charges,
    post_transfer,
    rollup_system_balances,
    system_balances,
    wallet_balance,
)
from core.errors import Conflict
from tests.billing.support import (
    Session,
    assert_ledger_ok,
    balance_of,
    make_session,
    recharge,
)
from tests.factories import make_user

Pool: TypeAlias = "asyncpg.Pool[Any]"


async def _system(db: Pool, kind: str) -> uuid.UUID:
    async with db.acquire() as conn:
        return await account_id(conn, kind, None)


async def _pay(db: Pool, s: Session, minute: int, amount: int = 100, share: int = 60) -> Transfer:
    earnings = await _earnings(db, s.astrologer)
    revenue = await _system(db, "platform_revenue")
    async with db.acquire() as conn:
        return await post_transfer(
            conn,
            key=f"charge:{s.consultation}:{minute}",
            kind="consultation_charge",
            legs=[Leg(s.wallet, -amount), Leg(earnings, share), Leg(revenue, amount - share)],
            consultation_id=s.consultation,
        )


async def _earnings(db: Pool, astrologer: uuid.UUID) -> uuid.UUID:
    async with db.acquire() as conn:
        return await account_id(conn, "astrologer_earnings", astrologer)


async def test_post_transfer_moves_owned_balances_with_balance_after(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    transfer = await _pay(db, s, 1, 300, 180)
    assert not transfer.replayed
    assert await balance_of(db, s.wallet) == (700, 0)
    earnings = await _earnings(db, s.astrologer)
    assert await balance_of(db, earnings) == (180, 0)
    rows = await db.fetch(
        "SELECT account_id, amount, balance_after FROM entries WHERE transfer_id = $1", transfer.id
    )
    by_account = {r["account_id"]: (r["amount"], r["balance_after"]) for r in rows}
    assert by_account[s.wallet] == (-300, 700)
    assert by_account[earnings] == (180, 180)
    revenue = await _system(db, "platform_revenue")
    assert by_account[revenue] == (120, None)  # hot system account: entry only
    assert await balance_of(db, revenue) == (0, 0)  # not rolled up yet
    await assert_ledger_ok(db)


async def test_same_key_same_content_replays_first_transfer(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    first = await _pay(db, s, 1)
    again = await _pay(db, s, 1)
    assert again.replayed
    assert again.id == first.id
    assert again.created_at == first.created_at
    assert await balance_of(db, s.wallet) == (900, 0)
    assert (
        await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'consultation_charge'") == 1
    )


async def test_same_key_other_content_conflicts_and_moves_nothing(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    await _pay(db, s, 1, 100, 60)
    with pytest.raises(Conflict) as caught:
        await _pay(db, s, 1, 200, 120)
    assert caught.value.code == "idempotency_conflict"
    assert await balance_of(db, s.wallet) == (900, 0)


async def test_insufficient_funds_moves_nothing_and_records_nothing(db: Pool) -> None:
    s = await make_session(db, funded=50)
    with pytest.raises(InsufficientFunds):
        await _pay(db, s, 1, 100, 60)
    assert await balance_of(db, s.wallet) == (50, 0)
    key = f"charge:{s.consultation}:1"
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE idempotency_key = $1", key) == 0
    # The key is free again: once the wallet is topped up, the same minute can be charged.
    async with db.acquire() as conn:
        await recharge(conn, s.user, 100)
    assert not (await _pay(db, s, 1, 100, 60)).replayed
    await assert_ledger_ok(db)


async def test_insufficient_inside_callers_transaction_keeps_it_usable(db: Pool) -> None:
    s = await make_session(db, funded=50)
    earnings = await _earnings(db, s.astrologer)
    async with db.acquire() as conn, conn.transaction():
        with pytest.raises(InsufficientFunds):
            await post_transfer(
                conn, key="t:big", kind="x", legs=[Leg(s.wallet, -60), Leg(earnings, 60)]
            )
        await post_transfer(
            conn, key="t:small", kind="x", legs=[Leg(s.wallet, -40), Leg(earnings, 40)]
        )
    assert await balance_of(db, s.wallet) == (10, 0)


@pytest.mark.parametrize(
    "legs_of",
    [
        pytest.param(lambda w, e: [Leg(w, -10), Leg(e, 9)], id="unbalanced"),
        pytest.param(lambda w, e: [Leg(w, 0), Leg(e, 0)], id="zero-legs"),
        pytest.param(lambda w, e: [Leg(w, -10), Leg(w, 10)], id="one-account"),
        pytest.param(lambda w, e: [Leg(w, -10)], id="single-leg"),
        pytest.param(lambda w, e: [Leg(w, -10), Leg(uuid.uuid4(), 10)], id="unknown-account"),
    ],
)
async def test_invalid_transfers_are_refused(db: Pool, legs_of: Any) -> None:
    s = await make_session(db, funded=100)
    earnings = await _earnings(db, s.astrologer)
    async with db.acquire() as conn:
        with pytest.raises(ValueError, match=r"transfer"):
            await post_transfer(conn, key="bad", kind="x", legs=legs_of(s.wallet, earnings))
    assert await balance_of(db, s.wallet) == (100, 0)
    assert await db.fetchval("SELECT count(*) FROM transfers WHERE idempotency_key = 'bad'") == 0


async def test_currencies_never_mix(db: Pool) -> None:
    s = await make_session(db, funded=100)
    async with db.acquire() as conn:
        usd = await account_id(conn, "promotions", None, "USD")
        with pytest.raises(ValueError, match="currencies"):
            await post_transfer(conn, key="fx", kind="x", legs=[Leg(s.wallet, -10), Leg(usd, 10)])


async def test_200_concurrent_single_postings_on_a_wallet_covering_100(db: Pool) -> None:
    s = await make_session(db, funded=100 * 100)
    earnings = await _earnings(db, s.astrologer)
    revenue = await _system(db, "platform_revenue")

    async def one(minute: int) -> bool:
        async with db.acquire() as conn:
            try:
                await post_transfer(
                    conn,
                    key=f"charge:{s.consultation}:{minute}",
                    kind="consultation_charge",
                    legs=[Leg(s.wallet, -100), Leg(earnings, 60), Leg(revenue, 40)],
                    consultation_id=s.consultation,
                )
            except InsufficientFunds:
                return False
            return True

    results = await asyncio.gather(*(one(m) for m in range(1, 201)))
    assert sum(results) == 100
    assert await balance_of(db, s.wallet) == (0, 0)
    assert await balance_of(db, earnings) == (6000, 0)
    await assert_ledger_ok(db)


async def test_200_concurrent_batch_charges_on_a_wallet_covering_100(db: Pool) -> None:
    s = await make_session(db, funded=100 * 100)

    async def one(minute: int) -> str:
        async with db.acquire() as conn:
            [result] = await post_charges(conn, [s.charge(minute)])
            return result.status

    statuses = await asyncio.gather(*(one(m) for m in range(1, 201)))
    assert statuses.count("posted") == 100
    assert statuses.count("insufficient") == 100
    assert await balance_of(db, s.wallet) == (0, 0)
    await assert_ledger_ok(db)


async def test_concurrent_batches_over_shared_wallets_never_overspend(db: Pool) -> None:
    sessions = [await make_session(db, funded=1000) for _ in range(4)]

    async def batch(offset: int) -> list[str]:
        # Every batch touches all four wallets, in a different order each time.
        charges = [s.charge(offset * 10 + m) for m in range(5) for s in sessions[offset % 4 :]] + [
            s.charge(offset * 10 + m) for m in range(5) for s in sessions[: offset % 4]
        ]
        async with db.acquire() as conn:
            return [r.status for r in await post_charges(conn, charges)]

    results = await asyncio.gather(*(batch(i) for i in range(8)))
    posted = sum(r.count("posted") for r in results)
    assert posted == 40  # 4 wallets x 1000 / 100
    for s in sessions:
        assert await balance_of(db, s.wallet) == (0, 0)
    await assert_ledger_ok(db)


async def test_batch_mixing_fine_duplicate_and_insufficient(db: Pool) -> None:
    rich = await make_session(db, funded=1000)
    poor = await make_session(db, funded=150)
    broke = await make_session(db)  # a wallet that never had money
    async with db.acquire() as conn:
        await post_charges(conn, [rich.charge(1)])
        results = await post_charges(
            conn,
            [
                rich.charge(1),  # already posted
                rich.charge(2),
                poor.charge(1),
                poor.charge(2),  # 50 left: cannot pay 100
                rich.charge(2),  # repeated within the batch
                broke.charge(1),
                poor.charge(3, amount=50, share=30),  # fits exactly
            ],
        )
    got = [(r.status, r.balance_after) for r in results]
    assert got == [
        ("duplicate", 900),
        ("posted", 800),
        ("posted", 50),
        ("insufficient", 50),
        ("duplicate", 800),
        ("insufficient", 0),
        ("posted", 0),
    ]
    assert await balance_of(db, rich.wallet) == (800, 0)
    assert await balance_of(db, poor.wallet) == (0, 0)
    assert (
        await db.fetchval("SELECT count(*) FROM transfers WHERE kind = 'consultation_charge'") == 4
    )
    await assert_ledger_ok(db)


async def test_batch_writes_the_three_legs_and_balance_after_in_order(db: Pool) -> None:
    s = await make_session(db, funded=1000)
    async with db.acquire() as conn:
        results = await post_charges(conn, [s.charge(m, 100, 61) for m in range(1, 4)])
    assert [r.balance_after for r in results] == [900, 800, 700]
    rows = await db.fetch(
        "SELECT e.amount, e.balance_after FROM entries e WHERE e.account_id = $1 ORDER BY e.id",
        s.wallet,
    )
    assert [(r["amount"], r["balance_after"]) for r in rows] == [
        (1000, 1000),
        (-100, 900),
        (-100, 800),
        (-100, 700),
    ]
    earnings = await _earnings(db, s.astrologer)
    assert await balance_of(db, earnings) == (183, 0)
    async with db.acquire() as conn:
        await rollup_system_balances(conn)
    revenue = await _system(db, "platform_revenue")
    assert await balance_of(db, revenue) == (3 * 39, 0)
    await assert_ledger_ok(db)


async def test_free_minutes_are_funded_by_promotions(db: Pool) -> None:
    s = await make_session(db)  # an empty wallet: free minutes still go through
    async with db.acquire() as conn:
        results = await post_charges(
            conn, [s.charge(1, amount=0, share=60, free=100), s.charge(2, 0, 60, 100)]
        )
        assert [r.status for r in results] == ["posted", "posted"]
        assert await wallet_balance(conn, s.user) == (0, 0)
        await rollup_system_balances(conn)
        balances = {b.kind: b.balance for b in await system_balances(conn)}
    assert balances["promotions"] == -200
    assert balances["platform_revenue"] == 80
    assert await balance_of(db, await _earnings(db, s.astrologer)) == (120, 0)
    kinds = await db.fetch(
        "SELECT DISTINCT kind FROM transfers WHERE consultation_id = $1", s.consultation
    )
    assert [k["kind"] for k in kinds] == ["free_minute"]
    await assert_ledger_ok(db)


async def test_a_minute_paid_partly_by_the_wallet_and_partly_by_promotions(db: Pool) -> None:
    """List 100, the user pays 50 (a 50 % promo), promotions fund 50, the astrologer earns 60 of
    the list rate and the platform 40: one transfer with four legs (billing/rules.py)."""
    s = await make_session(db, funded=120)
    async with db.acquire() as conn:
        results = await post_charges(
            conn, [s.charge(1, amount=50, share=60, free=50), s.charge(2, 50, 60, 50),
                   s.charge(3, 50, 60, 50)],
        )  # fmt: skip
        assert [r.status for r in results] == ["posted", "posted", "insufficient"]
        assert [r.available_after for r in results] == [70, 20, 20]
        assert await wallet_balance(conn, s.user) == (20, 0)
        await rollup_system_balances(conn)
        balances = {b.kind: b.balance for b in await system_balances(conn)}
    assert balances["promotions"] == -100
    assert balances["platform_revenue"] == 80
    assert await balance_of(db, await _earnings(db, s.astrologer)) == (120, 0)
    kinds = await db.fetch(
        "SELECT DISTINCT kind FROM transfers WHERE consultation_id = $1", s.consultation
    )
    assert [k["kind"] for k in kinds] == ["consultation_charge"]
    await assert_ledger_ok(db)


async def test_charge_with_full_share_or_zero_price(db: Pool) -> None:
    s = await make_session(db, funded=300)
    async with db.acquire() as conn:
        results = await post_charges(
            conn, [s.charge(1, 100, 100), s.charge(2, 100, 0), s.charge(3, 0, 0)]
        )
    assert [r.status for r in results] == ["posted", "posted", "posted"]
    assert await balance_of(db, s.wallet) == (100, 0)
    await assert_ledger_ok(db)


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": -1, "share": 0},
        {"amount": 100, "share": 101},
        {"amount": 10, "share": 10, "free": -5},
        {"amount": 0, "share": -1, "free": 10},
        {"amount": 50, "share": 101, "free": 50},
    ],
)
async def test_invalid_charges_are_refused_before_anything_moves(
    db: Pool, bad: dict[str, int]
) -> None:
    s = await make_session(db, funded=1000)
    async with db.acquire() as conn:
        with pytest.raises(ValueError, match="charge"):
            await post_charges(conn, [s.charge(1), s.charge(2, **bad)])
    assert await balance_of(db, s.wallet) == (1000, 0)


async def test_batch_reports_a_reposted_key_with_other_content_as_duplicate(
    db: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    s = await make_session(db, funded=1000)
    async with db.acquire() as conn:
        await post_charges(conn, [s.charge(1, 100, 60)])
        [result] = await post_charges(conn, [s.charge(1, 200, 60)])
    assert (result.status, result.balance_after) == ("duplicate", 900)
    assert any("other content" in r.getMessage() for r in caplog.records)


async def test_same_key_raced_by_many_connections_posts_once(db: Pool) -> None:
    s = await make_session(db, funded=1000)

    async def single() -> bool:
        return (await _pay(db, s, 7)).replayed

    async def batch() -> str:
        async with db.acquire() as conn:
            return (await post_charges(conn, [s.charge(7)]))[0].status

    outcomes = await asyncio.gather(*[single() for _ in range(10)], *[batch() for _ in range(10)])
    fresh = outcomes.count(False) + outcomes.count("posted")
    assert fresh == 1
    assert await balance_of(db, s.wallet) == (900, 0)


async def test_transfers_in_both_directions_do_not_deadlock(db: Pool) -> None:
    a = await make_user(db)
    b = await make_user(db)
    async with db.acquire() as conn:
        await recharge(conn, a.id, 10_000)
        await recharge(conn, b.id, 10_000)
        wa = await account_id(conn, "user_wallet", a.id)
        wb = await account_id(conn, "user_wallet", b.id)

    async def move(i: int) -> None:
        src, dst = (wa, wb) if i % 2 else (wb, wa)
        async with db.acquire() as conn:
            await post_transfer(
                conn, key=f"gift:{i}", kind="gift", legs=[Leg(src, -7), Leg(dst, 7)]
            )

    await asyncio.gather(*(move(i) for i in range(100)))
    assert (await balance_of(db, wa))[0] + (await balance_of(db, wb))[0] == 20_000
    await assert_ledger_ok(db)


async def test_rollup_counts_each_delta_once_even_concurrently(db: Pool) -> None:
    s = await make_session(db, funded=10_000)
    revenue = await _system(db, "platform_revenue")
    clearing = await _system(db, "gateway_clearing")

    async def charge_and_roll(m: int) -> None:
        async with db.acquire() as conn:
            await post_charges(conn, [s.charge(m)])
        async with db.acquire() as conn:
            await rollup_system_balances(conn)

    await asyncio.gather(*(charge_and_roll(m) for m in range(1, 31)))
    async with db.acquire() as conn:
        await rollup_system_balances(conn)
        assert await rollup_system_balances(conn) == []  # nothing left to move
    assert await balance_of(db, revenue) == (30 * 40, 0)
    assert await balance_of(db, clearing) == (-10_000, 0)
    assert await db.fetchval("SELECT count(*) FROM ledger_system_deltas") == 0
    await assert_ledger_ok(db)


async def test_entries_and_transfers_are_append_only(db: Pool) -> None:
    s = await make_session(db, funded=100)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE entries SET amount = amount * 2")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM entries")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE transfers SET kind = 'other'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM transfers")
    assert await balance_of(db, s.wallet) == (100, 0)


async def test_database_refuses_an_unbalanced_transfer(db: Pool) -> None:
    s = await make_session(db, funded=100)
    transfer = await db.fetchval(
        "INSERT INTO transfers (idempotency_key, request_hash, kind) VALUES ('raw', '', 'x')"
        " RETURNING id"
    )
    with pytest.raises(asyncpg.CheckViolationError, match="does not sum to zero"):
        await db.execute(
            "INSERT INTO entries (transfer_id, account_id, amount) VALUES ($1, $2, 5)",
            transfer,
            s.wallet,
        )


async def test_database_refuses_a_negative_wallet(db: Pool) -> None:
    s = await make_session(db, funded=100)
    with pytest.raises(asyncpg.CheckViolationError, match="wallet_not_negative"):
        await db.execute("UPDATE accounts SET balance = -1 WHERE id = $1", s.wallet)
    with pytest.raises(asyncpg.CheckViolationError, match="wallet_not_negative"):
        await db.execute("UPDATE accounts SET held = 101 WHERE id = $1", s.wallet)
    # Earnings never go below zero either (migration 0013, issue 13): the database refuses it.
    earnings = await _earnings(db, s.astrologer)
    with pytest.raises(asyncpg.CheckViolationError, match="earnings_not_negative"):
        await db.execute("UPDATE accounts SET balance = -1 WHERE id = $1", earnings)


async def test_charge_dataclass_is_the_meters_interface() -> None:
    c = Charge(
        key="charge:x:1",
        consultation_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        astrologer_id=uuid.uuid4(),
        amount=100,
        astrologer_share=60,
    )
    assert (c.free_amount, c.currency) == (0, "INR")
    with pytest.raises(AttributeError):
        c.amount = 5  # type: ignore[misc]  # frozen: the test checks it cannot be changed


async def test_database_refuses_entries_of_unknown_transfers_or_accounts(db: Pool) -> None:
    s = await make_session(db, funded=100)
    earnings = await _earnings(db, s.astrologer)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="unknown transfer"):
        await db.execute(
            "INSERT INTO entries (transfer_id, account_id, amount)"
            " VALUES ($1, $2, 5), ($1, $3, -5)",
            uuid.uuid4(),
            s.wallet,
            earnings,
        )
    transfer = await db.fetchval(
        "INSERT INTO transfers (idempotency_key, request_hash, kind) VALUES ('raw', '', 'x')"
        " RETURNING id"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="unknown account"):
        await db.execute(
            "INSERT INTO entries (transfer_id, account_id, amount)"
            " VALUES ($1, $2, 5), ($1, $3, -5)",
            transfer,
            earnings,
            uuid.uuid4(),
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="never deleted"):
        await db.execute("DELETE FROM accounts WHERE id = $1", s.wallet)
