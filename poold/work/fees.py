"""The pool fee in exact integer arithmetic: parts per million of a reward, rounded down.

Pure. Shared by the coinbase payout policies (poold.work.jobs) and the ledger's payout schemes
(poold.ledger.payouts), so both take exactly the same fee from the same reward.
"""

from __future__ import annotations

import math

PPM = 1_000_000  # fee unit: parts per million of the reward


def fee_ppm(fee_percent: float) -> int:
    """A fee in percent (config) as integer parts per million, so fee arithmetic stays exact."""
    if not (math.isfinite(fee_percent) and 0.0 <= fee_percent <= 100.0):
        raise ValueError(f"fee percent must be within 0..100, got {fee_percent!r}")
    return round(fee_percent * 10_000)


def fee_of(reward: int, ppm: int, dust: int = 0) -> int:
    """The pool fee of a reward, rounded down; a fee below `dust` is not taken (no dust output)."""
    if isinstance(reward, bool) or not isinstance(reward, int) or reward < 0:
        raise ValueError(f"reward must be a non-negative int (satoshis), got {reward!r}")
    if not 0 <= ppm <= PPM:
        raise ValueError(f"fee ppm must be within 0..{PPM}, got {ppm}")
    fee = reward * ppm // PPM
    return 0 if fee < dust else fee
