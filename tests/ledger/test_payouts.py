"""Payout arithmetic: exact satoshis, by property (Hypothesis) and by hand-checked cases."""

from __future__ import annotations

import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poold.ledger import payouts

ACCOUNTS = st.sampled_from([f"acct{i}" for i in range(40)])
WEIGHT = st.one_of(st.floats(min_value=1e-8, max_value=1e12, allow_nan=False),
                   st.integers(min_value=1, max_value=10**15))
REWARD = st.integers(min_value=0, max_value=21_000_000 * 100_000_000)


@settings(deadline=None)  # a shared, noisy machine: no per-example deadline
@given(amount=REWARD, weights=st.dictionaries(ACCOUNTS, WEIGHT, min_size=1, max_size=40))
def test_proportional_is_exact_and_fair(amount: int, weights: dict[str, float]) -> None:
    out = payouts.proportional(amount, weights)
    assert sum(out.values()) == amount
    assert set(out) == set(weights)
    total = sum(Fraction(w) for w in weights.values())
    for account, value in out.items():
        ideal = amount * Fraction(weights[account]) / total
        assert value >= 0
        assert abs(value - ideal) < 1  # largest remainder: never a whole satoshi off


def test_proportional_hand_case() -> None:
    # 100 sat over 1:1:1 -> 34/33/33, the extra satoshi to the first name on a remainder tie.
    assert payouts.proportional(100, {"b": 1, "a": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert payouts.proportional(7, {"x": 0.5, "y": 0.25}) == {"x": 5, "y": 2}
    with pytest.raises(ValueError):
        payouts.proportional(5, {})
    with pytest.raises(ValueError):
        payouts.proportional(5, {"a": -1.0})


def test_fee_ppm_and_fee_of() -> None:
    assert payouts.fee_ppm(1.5) == 15_000
    assert payouts.fee_of(312_500_000, payouts.fee_ppm(1.5)) == 4_687_500
    assert payouts.fee_of(999, 15_000) == 14  # rounded down: never more than the percentage
    assert payouts.fee_of(999, 15_000, dust=546) == 0  # a dust fee is not taken
    with pytest.raises(ValueError):
        payouts.fee_ppm(101.0)


def test_solo_and_reserve() -> None:
    plan = payouts.solo(625_000_000, "bc1qminer", ppm=10_000, dust=546)
    assert plan.payouts == (payouts.Payout("bc1qminer", 618_750_000),)
    assert plan.fee == 6_250_000 and plan.total == 625_000_000
    r = payouts.reserve(625_000_000, "bc1qreserve")
    assert r.payouts == (payouts.Payout("bc1qreserve", 625_000_000),) and r.fee == 0
    outs = plan.outputs(lambda a: a.encode(), b"fee")
    assert outs == ((b"bc1qminer", 618_750_000), (b"fee", 6_250_000))


@settings(deadline=None)
@given(reward=REWARD, ppm=st.integers(0, 1_000_000),
       weights=st.dictionaries(ACCOUNTS, WEIGHT, max_size=40))
def test_pplns_credits_sum_to_reward_minus_fee(reward: int, ppm: int,
                                                weights: dict[str, float]) -> None:
    res = payouts.pplns(reward, weights, ppm=ppm)
    assert all(v >= 0 for v in res.credits.values())
    assert sum(res.credits.values()) + res.fee == reward
    if weights:
        assert res.fee == reward * ppm // 1_000_000


# -- PPLNS window edges


def test_window_exact_edge_and_partial_share() -> None:
    shares = [("a", 3.0), ("b", 2.0), ("c", 5.0), ("d", 7.0)]  # newest first
    # Window of exactly the first two shares: c and d are outside.
    assert payouts.pplns_window(shares, 5.0) == {"a": 3.0, "b": 2.0}
    # A window ending inside c's share counts only the part inside.
    assert payouts.pplns_window(shares, 6.0) == {"a": 3.0, "b": 2.0, "c": 1.0}
    # Smaller than the newest share: only a part of it.
    assert payouts.pplns_window(shares, 0.5) == {"a": 0.5}
    # Larger than all shares: everything counts once.
    assert payouts.pplns_window(shares, 100.0) == {"a": 3.0, "b": 2.0, "c": 5.0, "d": 7.0}
    assert payouts.pplns_window([], 10.0) == {}
    with pytest.raises(ValueError):
        payouts.pplns_window(shares, 0.0)


@settings(deadline=None)
@given(st.lists(st.tuples(ACCOUNTS, st.floats(min_value=1e-3, max_value=1e3)), max_size=200),
       st.floats(min_value=1e-3, max_value=1e5))
def test_window_never_exceeds_its_size(shares: list[tuple[str, float]], size: float) -> None:
    w = payouts.pplns_window(shares, size)
    total = sum(d for _, d in shares)
    assert sum(w.values()) == pytest.approx(min(total, size), rel=1e-9, abs=1e-9)


# -- split coinbase


BALANCES = st.lists(st.tuples(ACCOUNTS, st.integers(-10**9, 10**9)), max_size=20)


def zero_sum(pairs: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a, v in pairs:
        out[a] = out.get(a, 0) + v
    if out:  # make it sum to zero by adjusting one account
        first = sorted(out)[0]
        out[first] -= sum(out.values())
    return {a: v for a, v in out.items() if v}


@settings(max_examples=300, deadline=None)
@given(reward=st.integers(min_value=0, max_value=50 * 100_000_000),
       ppm=st.integers(0, 100_000),
       weights=st.dictionaries(ACCOUNTS, WEIGHT, max_size=40),
       balance_pairs=BALANCES,
       dust=st.integers(1, 1_000_000),
       max_outputs=st.integers(1, 30),
       max_bytes=st.one_of(st.none(), st.integers(0, 600)))
def test_split_properties(reward: int, ppm: int, weights: dict[str, float],
                          balance_pairs: list[tuple[str, int]], dust: int,
                          max_outputs: int, max_bytes: int | None) -> None:
    balances = zero_sum(balance_pairs)

    def size(account: str) -> int:  # P2WPKH-like and P2TR-like outputs
        return 31 if int(account[4:]) % 2 else 43

    plan = payouts.split(reward, weights, balances, ppm=ppm, dust=dust, max_outputs=max_outputs,
                         output_size=size, max_bytes=max_bytes)
    paid = {p.account: p.amount for p in plan.payouts}
    new = dict(plan.balances)
    # The coinbase hands out exactly the reward: accounts get exactly reward - fee.
    assert plan.total == reward
    assert sum(paid.values()) == reward - plan.fee
    # No negative, zero or dust outputs; at most max_outputs; one output per account.
    assert all(v >= dust for v in paid.values())
    assert len(plan.payouts) <= max_outputs
    if max_bytes is not None and len(plan.payouts) > 1:
        assert sum(size(a) for a in paid) <= max_bytes
    assert len(paid) == len(plan.payouts)
    assert plan.fee == 0 or plan.fee >= dust or plan.fee == reward
    # Carried balances stay zero-sum, and every account is conserved exactly.
    assert sum(new.values()) == 0
    if plan.payouts:
        share = payouts.proportional(reward - plan.fee, weights)
        for a in set(balances) | set(share) | set(paid) | set(new):
            assert balances.get(a, 0) + share.get(a, 0) == paid.get(a, 0) + new.get(a, 0)
    else:
        assert plan.fee == reward and new == balances


def test_split_hand_case_dust_and_max_outputs() -> None:
    # 1 BTC, 2% fee; five miners, the smallest under the dust threshold; at most 3 outputs.
    weights = {"a": 50.0, "b": 30.0, "c": 15.0, "d": 4.9, "e": 0.1}
    plan = payouts.split(100_000_000, weights, {}, ppm=20_000, dust=1_000_000, max_outputs=3)
    assert plan.fee == 2_000_000
    assert [p.account for p in plan.payouts] == ["a", "b", "c"]
    # d (4.9%) and e (0.1%) are carried; a, b, c were paid ahead by exactly that much.
    carried = dict(plan.balances)
    assert carried["d"] == 4_802_000 and carried["e"] == 98_000
    assert sum(carried.values()) == 0 and carried["a"] < 0
    # Next block, same window: d's entitlement (carried + share) now reaches the outputs.
    nxt = payouts.split(100_000_000, weights, carried, ppm=20_000, dust=1_000_000, max_outputs=4)
    assert "d" in {p.account for p in nxt.payouts}


def test_split_carries_accounts_that_cannot_be_paid() -> None:
    """An account without a payout address (a name recorded before it had to be mapped) is
    never an output: its whole entitlement is carried and the others are paid ahead."""
    weights = {"alice": 60.0, "bob": 40.0}
    plan = payouts.split(100_000_000, weights, {}, ppm=0, dust=1_000, max_outputs=5,
                         payable=lambda a: a != "bob")
    assert [(p.account, p.amount) for p in plan.payouts] == [("alice", 100_000_000)]
    assert dict(plan.balances) == {"bob": 40_000_000, "alice": -40_000_000}
    # Once bob has an address, the carried balance is paid.
    nxt = payouts.split(100_000_000, weights, dict(plan.balances), ppm=0, dust=1_000,
                        max_outputs=5)
    assert dict((p.account, p.amount) for p in nxt.payouts) == {
        "alice": 20_000_000, "bob": 80_000_000}
    # Nobody payable: the fee output takes the reward and balances stay as they were.
    none = payouts.split(100_000_000, weights, dict(plan.balances), ppm=0, dust=1_000,
                         max_outputs=5, payable=lambda a: False)
    assert none.payouts == () and none.fee == 100_000_000
    assert dict(none.balances) == dict(plan.balances)


def test_split_nobody_mined_goes_to_fee_output() -> None:
    plan = payouts.split(50_000, {}, {}, ppm=0, dust=546, max_outputs=5)
    assert plan.payouts == () and plan.fee == 50_000
    with pytest.raises(ValueError):
        payouts.split(50_000, {"a": 1.0}, {"a": 5}, ppm=0, dust=546, max_outputs=5)


def test_payouts_module_is_pure() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(payouts))
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert not imported & {"asyncio", "aiohttp", "zmq", "sqlite3", "asyncpg", "socket", "os"}
    assert "poold.ledger.payouts" in sys.modules
