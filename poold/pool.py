"""The wired pool: what `poold.daemon.build_pool` returns, `serve` runs, the admin API reads and
the tests drive (one value, so that nothing needs to import the daemon to name it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from poold.coinbase_planning import CoinbasePlanning
    from poold.node.nodes import NodeSet
    from poold.stratum.server import StratumServer


@dataclass(slots=True)
class Pool:
    """The wired Stratum side: what `serve` runs and tests drive."""

    server: StratumServer
    nodes: NodeSet
    planning: CoinbasePlanning | None = None  # payout = split
