"""Payout schemes in exact satoshi arithmetic: solo, reserve, PPLNS and the split coinbase.

Pure: no I/O, no clock. Amounts are ints (satoshis); share weights (accepted difficulty) are floats
converted exactly with `fractions.Fraction`, and every division is a largest-remainder split, so
sums are exact: what is handed out always equals what there is to hand out.

- `solo`: the coinbase pays the finder's account (an address), minus the pool fee if any.
- `reserve`: the coinbase pays one configured address (e.g. a multisig reserve).
- `pplns`: Pay Per Last N Shares. The window is the newest shares whose difficulty adds up to
  N x network difficulty (`pplns_window`, the oldest share counted in part so the window is
  exact); the reward minus the fee is credited pro rata to accounts (`pplns`); a wallet process
  pays the balances later (no keys in poold).
- `split`: non-custodial coinbase payouts. The coinbase itself pays the accounts of the PPLNS
  window. Each account has a signed carried balance (positive: owed to it; negative: it was paid
  ahead); the balances of all accounts always sum to zero. An account's entitlement for a block is
  its balance plus its pro-rata share; the largest entitlements of at least `dust` sat, at most
  `max_outputs` of them, are paid, scaled so that they sum to exactly reward - fee; what each
  account got more or less than its entitlement is carried to the next block. The pool fee is one
  output. Accounts that leave for good with a negative balance forfeit nothing and repay nothing:
  that residue is bounded by the sub-dust and beyond-max-outputs entitlements of one block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

# The fee arithmetic the coinbase payout policies of poold.work.jobs share with these schemes.
from poold.work.fees import PPM, fee_of, fee_ppm

__all__ = [
    "PPM",
    "CoinbasePlan",
    "Payout",
    "PplnsCredit",
    "PplnsWindow",
    "fee_of",
    "fee_ppm",
    "pplns",
    "pplns_window",
    "proportional",
    "reserve",
    "solo",
    "split",
]


@dataclass(frozen=True, slots=True)
class Payout:
    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class CoinbasePlan:
    """The coinbase outputs of a block before scripts: account payouts plus one fee output.

    `balances` are the split scheme's carried balances after this block (sorted by account;
    empty for the other schemes). `payouts` are ordered largest first, then by account.
    """

    reward: int
    payouts: tuple[Payout, ...]
    fee: int
    balances: tuple[tuple[str, int], ...] = ()

    @property
    def total(self) -> int:
        return self.fee + sum(p.amount for p in self.payouts)

    def outputs(self, to_script: Callable[[str], bytes],
                fee_script: bytes | None) -> tuple[tuple[bytes, int], ...]:
        """(script_pubkey, value) pairs: payouts in order, then the fee output if any."""
        out = [(to_script(p.account), p.amount) for p in self.payouts]
        if self.fee:
            if fee_script is None:
                raise ValueError("this plan has a fee output but no fee script was given")
            out.append((fee_script, self.fee))
        return tuple(out)


def _check_amount(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (satoshis), got {value!r}")


def _weights(weights: Mapping[str, float | int | Fraction]) -> dict[str, Fraction]:
    out = {}
    for account, w in weights.items():
        if isinstance(w, float) and not math.isfinite(w):
            raise ValueError(f"weight of {account!r} is not finite: {w!r}")
        f = Fraction(w)
        if f < 0:
            raise ValueError(f"weight of {account!r} is negative: {w!r}")
        if f > 0:
            out[account] = f
    return out


def proportional(amount: int, weights: Mapping[str, float | int | Fraction]) -> dict[str, int]:
    """Split `amount` satoshis pro rata to `weights`, exactly (largest remainder method).

    Every account gets floor(amount * w / W); the satoshis left over go one each to the largest
    remainders (ties: account name), so the result sums to `amount` exactly. Accounts with zero
    weight get nothing and are left out.
    """
    _check_amount("amount", amount)
    exact = _weights(weights)
    if not exact:
        if amount:
            raise ValueError("cannot split a non-zero amount over no weight")
        return {}
    total = sum(exact.values())
    out: dict[str, int] = {}
    remainders: list[tuple[Fraction, str]] = []
    for account, w in exact.items():
        q, r = divmod(amount * w.numerator * total.denominator,
                      w.denominator * total.numerator)
        out[account] = q
        remainders.append((Fraction(r, w.denominator * total.numerator), account))
    left = amount - sum(out.values())
    remainders.sort(key=lambda x: (-x[0], x[1]))
    for _, account in remainders[:left]:
        out[account] += 1
    return out


def solo(reward: int, account: str, *, ppm: int = 0, dust: int = 0) -> CoinbasePlan:
    """The finder takes the reward minus the pool fee."""
    fee = fee_of(reward, ppm, dust)
    return CoinbasePlan(reward=reward, payouts=(Payout(account, reward - fee),), fee=fee)


def reserve(reward: int, address: str) -> CoinbasePlan:
    """Every block pays one configured address in full."""
    _check_amount("reward", reward)
    return CoinbasePlan(reward=reward, payouts=(Payout(address, reward),), fee=0)


class PplnsWindow:
    """Incremental form of `pplns_window`: feed shares newest first until `full`."""

    def __init__(self, window_difficulty: float) -> None:
        if not (math.isfinite(window_difficulty) and window_difficulty > 0):
            raise ValueError(f"window difficulty must be positive, got {window_difficulty!r}")
        self.window_difficulty = window_difficulty
        self.filled = 0.0
        self.weights: dict[str, float] = {}

    @property
    def full(self) -> bool:
        return self.filled >= self.window_difficulty

    def add(self, account: str, difficulty: float) -> bool:
        """Count one (older) share; returns `full`. Shares beyond the edge are ignored."""
        if not self.full:
            take = min(difficulty, self.window_difficulty - self.filled)
            self.weights[account] = self.weights.get(account, 0.0) + take
            self.filled += take
        return self.full


def pplns_window(shares_newest_first: Iterable[tuple[str, float]],
                 window_difficulty: float) -> dict[str, float]:
    """Accepted difficulty per account over the newest shares adding up to `window_difficulty`.

    Shares are consumed newest first; the share that crosses the window edge counts only for the
    part inside the window; older shares not at all. With fewer shares than the window, all count.
    """
    window = PplnsWindow(window_difficulty)
    for account, difficulty in shares_newest_first:
        if window.add(account, difficulty):
            break
    return window.weights


@dataclass(frozen=True, slots=True)
class PplnsCredit:
    credits: dict[str, int]
    fee: int


def pplns(reward: int, weights: Mapping[str, float], *, ppm: int = 0) -> PplnsCredit:
    """Credit reward minus fee pro rata to the window's weights; no shares = all to the fee."""
    fee = fee_of(reward, ppm)
    if not _weights(weights):
        return PplnsCredit(credits={}, fee=reward)
    return PplnsCredit(credits=proportional(reward - fee, weights), fee=fee)


def split(reward: int, weights: Mapping[str, float], balances: Mapping[str, int], *,
          ppm: int, dust: int, max_outputs: int,
          output_size: Callable[[str], int] | None = None,
          max_bytes: int | None = None,
          payable: Callable[[str], bool] | None = None) -> CoinbasePlan:
    """The split coinbase for one block (see the module docstring for the scheme).

    `balances` are the carried balances before this block and must sum to zero. Guarantees:
    payouts sum to exactly reward - fee; every payout >= dust and > 0; at most `max_outputs`
    payouts, and with `output_size` (serialized bytes of an account's output) and `max_bytes`,
    payout outputs of at most `max_bytes` in all (ASIC firmware caps the coinbase size); the
    new balances sum to zero; for every account, old balance + pro-rata share = payout + new
    balance. When nobody mined, or reward - fee is below dust, the whole reward goes to the fee
    output and the balances are unchanged.

    `payable` (default: every account) says which accounts may have an output: the others are
    never paid and their entitlement is carried in full, so an account without a payout
    address cannot stop the plan; if no account in the window is payable, the whole reward
    goes to the fee output and the balances are unchanged.
    """
    _check_amount("reward", reward)
    if max_outputs < 1:
        raise ValueError(f"max_outputs must be >= 1, got {max_outputs}")
    if dust < 1:
        raise ValueError(f"dust must be >= 1 sat, got {dust}")
    if sum(balances.values()) != 0:
        raise ValueError("carried split balances must sum to zero")
    unchanged = tuple(sorted((a, b) for a, b in balances.items() if b))
    fee = fee_of(reward, ppm, dust)
    distributable = reward - fee
    if not _weights(weights) or distributable < dust:
        return CoinbasePlan(reward=reward, payouts=(), fee=reward, balances=unchanged)

    share = proportional(distributable, weights)
    entitled = {a: balances.get(a, 0) + share.get(a, 0) for a in set(balances) | set(share)}
    ranked = sorted(entitled, key=lambda a: (-entitled[a], a))
    if payable is not None:
        ranked = [a for a in ranked if payable(a)]
        if not ranked:
            return CoinbasePlan(reward=reward, payouts=(), fee=reward, balances=unchanged)
    paid = [a for a in ranked if entitled[a] >= dust][:max_outputs] or ranked[:1]
    if output_size is not None and max_bytes is not None:
        used = 0
        for i, a in enumerate(paid):
            used += output_size(a)
            if used > max_bytes:
                del paid[max(i, 1):]  # the largest entitlement is paid whatever its size
                break
    while True:
        gap = distributable - sum(entitled[a] for a in paid)
        scale = proportional(abs(gap), {a: max(entitled[a], 1) for a in paid})
        pay = {a: entitled[a] + (scale[a] if gap >= 0 else -scale[a]) for a in paid}
        if len(paid) == 1 or all(v >= dust for v in pay.values()):
            break
        paid.pop()  # drop the smallest entitlement and spread again
    new_balances = {a: e - pay.get(a, 0) for a, e in entitled.items()}
    payouts = tuple(Payout(a, pay[a]) for a in sorted(pay, key=lambda a: (-pay[a], a)))
    return CoinbasePlan(
        reward=reward, payouts=payouts, fee=fee,
        balances=tuple(sorted((a, b) for a, b in new_balances.items() if b)))
