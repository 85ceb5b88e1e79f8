"""payout = split: every template's coinbase is planned by the ledger before it is fanned out.

The ledger plans the split from its cached PPLNS window (poold.ledger.planner; at most ~100 ms
waiting on the database). Whatever happens to that plan, the pool never stays on old work: a plan
that raises or does not arrive within `PLAN_DEADLINE_S` is replaced by the safe coinbase (the whole
reward to `pool.fee_address`, followed by the ledger's chain commitment as every split coinbase
is, docs/AUDIT.md), the template goes out at once, the failure is logged with its
reason (at most once a minute while it lasts) and counted in
`poold_payout_plan_fallbacks_total{reason}`, and /readyz reports `payout_plan: false` until a plan
succeeds again. Answers that arrive after a newer template's are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from poold.bitcoin.template import Template
    from poold.metrics import Metrics
    from poold.stratum.server import StratumServer
    from poold.work.jobs import PlannedPayout

log = logging.getLogger("poold.payouts")

PLAN_DEADLINE_S = 0.5  # a plan later than this is replaced by the safe coinbase
_LOG_EVERY_S = 60.0

Outputs: TypeAlias = Sequence[tuple[bytes, int]]
Planner: TypeAlias = Callable[["Template"], Awaitable[Outputs]]


class CoinbasePlanning:
    """The NodeSet subscriber of split mode: plan, then hand the template to the server."""

    def __init__(self, server: StratumServer, payouts: PlannedPayout, planner: Planner,
                 fee_script: bytes, *, metrics: Metrics | None = None,
                 deadline_s: float = PLAN_DEADLINE_S,
                 commitment: Callable[[], tuple[bytes, int]] | None = None) -> None:
        self.server = server
        self.payouts = payouts
        self.planner = planner
        self.fee_script = fee_script
        self.metrics = metrics
        self.deadline_s = deadline_s
        self.commitment = commitment
        self.healthy = True  # the last plan succeeded (/readyz)
        self.failures = 0
        self.last_error = ""
        self._latest = 0
        self._logged = -_LOG_EVERY_S
        self._tasks: set[asyncio.Task[None]] = set()

    def on_template(self, template: Template, new_tip: bool) -> None:
        self._latest += 1
        task = asyncio.get_running_loop().create_task(
            self._plan(template, new_tip, self._latest))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _plan(self, template: Template, new_tip: bool, seq: int) -> None:
        try:
            async with asyncio.timeout(self.deadline_s):
                outputs = await self.planner(template)
        except TimeoutError:
            outputs = self._fallback(template, "timeout",
                                     f"no plan within {self.deadline_s:g} s")
        except Exception as exc:  # any planning failure: never keep miners on old work
            outputs = self._fallback(template, "error", f"{type(exc).__name__}: {exc}")
        else:
            if not self.healthy:
                log.warning("payout plan for height %d succeeded again after %d failure(s)",
                            template.height, self.failures)
            self.healthy, self.failures, self.last_error = True, 0, ""
        if seq != self._latest:
            return
        self.payouts.plan(template, outputs)
        self.server.on_template(template, new_tip)

    def _fallback(self, template: Template, reason: str, why: str) -> Outputs:
        self.healthy = False
        self.failures += 1
        self.last_error = why
        if self.metrics is not None:
            self.metrics.payout_plan_fallbacks.labels(reason).inc()
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            log.error("payout plan for height %d failed (%s); this template pays the whole "
                      "coinbase to pool.fee_address (%d failure(s) in a row)", template.height,
                      why, self.failures)
        outputs = [(self.fee_script, template.coinbase_value)]
        if self.commitment is not None:
            outputs.append(self.commitment())
        return outputs

    async def aclose(self) -> None:
        """Cancel plans in flight (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
