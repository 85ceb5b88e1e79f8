"""`SplitPayout`: the job builder's payout policy for `payout = split` (poold.work.jobs seam).

The job builder asks for coinbase outputs synchronously when it builds a job from a template;
this adapter answers from the Ledger's cached PPLNS window and carried balances
(`Ledger.split_outputs`, no I/O), with the window sized from the template's own network target.
The Ledger refreshes that cache in its flusher and updates the balances as soon as a block paying
a plan is recorded. All accounts share one coinbase, so there is one payout group.
"""

from __future__ import annotations

from collections.abc import Sequence

from poold.bitcoin.target import target_to_difficulty
from poold.bitcoin.tx import TxOut
from poold.ledger.ledger import Ledger
from poold.node.templates import Template


class SplitPayout:
    """PayoutPolicy (poold.work.jobs): the coinbase pays the accounts of the PPLNS window."""

    def __init__(self, ledger: Ledger) -> None:
        if ledger.config.payout != "split":
            raise ValueError("SplitPayout needs a ledger configured with payout = split")
        self.ledger = ledger

    def group_key(self, miner_script: bytes | None) -> bytes:
        return b""

    def outputs(self, template: Template, group_key: bytes) -> Sequence[TxOut]:
        outputs = self.ledger.split_outputs(template.coinbase_value,
                                            target_to_difficulty(template.target))
        return tuple(TxOut(value, script) for script, value in outputs)
