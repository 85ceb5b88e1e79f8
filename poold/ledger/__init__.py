"""The share ledger: accepted shares, found blocks, payouts, block audit and energy accounting.

`Ledger` (poold.ledger.ledger) is the async front the pool uses; it is imported lazily here so
that the pure modules of this package (payouts, energy, records) load without asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poold.ledger.records import AcceptedShare, BlockStatus, FoundBlock

if TYPE_CHECKING:
    from poold.ledger.config import LedgerConfig
    from poold.ledger.ledger import Ledger

__all__ = ["AcceptedShare", "BlockStatus", "FoundBlock", "Ledger", "LedgerConfig"]


def __getattr__(name: str) -> Any:
    if name == "Ledger":
        from poold.ledger.ledger import Ledger

        return Ledger
    if name == "LedgerConfig":
        from poold.ledger.config import LedgerConfig

        return LedgerConfig
    raise AttributeError(name)
