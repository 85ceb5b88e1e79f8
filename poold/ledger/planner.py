"""Payout planning: who the coinbase of the next job pays, read from the ledger store.

The pure payout schemes live in poold.ledger.payouts; this module feeds them from the store:
the exact PPLNS window (share by share at its two ends, per-account bucket sums in between),
the coinbase outputs for `solo`, `reserve`, `pplns` and `split`, PPLNS credits at maturity, and
the split coinbase's cache (window and carried balances), which lets a new tip's job be planned
without waiting on the database. The Ledger owns one `PayoutPlanner` and delegates to it; it
hands a recorded block's paying outputs back (`take_plan`) to learn the balance changes of the
plan it was built from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from poold.accounts import AccountBook
from poold.bitcoin.address import Network, address_to_script
from poold.ledger import payouts
from poold.ledger.config import LedgerConfig
from poold.ledger.records import BlockRecord, Credit
from poold.ledger.schema import BUCKET_S
from poold.ledger.store import LedgerStore, StoreUnavailable, bucket_of

log = logging.getLogger("poold.ledger")

_PAGE = 10_000
_PLAN_MEMORY = 64
_SPLIT_PLAN_WAIT_S = 0.1  # longest a split coinbase plan waits for a fresh window read
_UNPAYABLE_LOG_S = 600.0  # one WARNING per unpayable account per this many seconds

Outputs = tuple[tuple[bytes, int], ...]


def payout_key(outputs: Sequence[tuple[bytes, int]]) -> Outputs:
    """The paying outputs of a coinbase (no zero-value or OP_RETURN outputs, e.g. the witness
    commitment), which identify the plan a found block was built from."""
    return tuple((s, v) for s, v in outputs if v > 0 and not s.startswith(b"\x6a"))


def _output_bytes(script: bytes) -> int:
    """Serialized size of a transaction output: value, script length, script."""
    return 8 + (1 if len(script) < 0xFD else 3) + len(script)


def _log_split_refresh(task: asyncio.Future[None]) -> None:
    """Retrieve (and log) the outcome of a background split window read."""
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, StoreUnavailable):
        log.error("split: ledger unavailable (%s); planning from the last window read", exc)
    elif exc is not None:
        log.error("split: window read failed", exc_info=exc)


class PayoutPlanner:
    """Coinbase plans and PPLNS windows over one store (the Ledger's, opened by the Ledger)."""

    def __init__(self, config: LedgerConfig, store: LedgerStore,
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        # Balance changes of recent split plans, by their paying outputs (see take_plan).
        self._plans: OrderedDict[Outputs, list[tuple[str, int]]] = OrderedDict()
        self._split_netdiff = 0.0
        self._split_weights: dict[str, float] = {}
        self._split_balances: dict[str, int] = {}
        self._split_refreshed = 0.0
        self._split_task: asyncio.Future[None] | None = None
        self._split_window = (0.0, 0.0)  # (end time, network difficulty) of the cached window
        self.accounts = AccountBook.of(Network(config.network), dict(config.accounts))
        self._unpayable_logged: dict[str, float] = {}

    def set_accounts(self, accounts: tuple[tuple[str, str], ...]) -> None:
        """New account -> address map (SIGHUP); plans from now on use it."""
        self.accounts = AccountBook.of(Network(self.config.network), dict(accounts))

    def _script(self, account: str) -> bytes:
        script = self.accounts.script_of(account)
        if script is None:  # payouts.split never pays an account that is not payable
            raise ValueError(f"account {account!r} has no payout address")
        return script

    def _payable(self, account: str) -> bool:
        if self.accounts.address_of(account) is not None:
            return True
        now = time.monotonic()
        if now - self._unpayable_logged.get(account, -math.inf) >= _UNPAYABLE_LOG_S:
            self._unpayable_logged[account] = now
            log.warning("split: account %r has no payout address (not a %s address and not in "
                        "[accounts] or pool.accounts_file); its credit is carried until it has "
                        "one", account, self.config.network)
        return False

    @property
    def refresh_due(self) -> bool:
        """The cached split window is older than `split_refresh_s` (the flusher refreshes it)."""
        return time.monotonic() - self._split_refreshed >= self.config.split_refresh_s

    async def cancel_refresh(self) -> None:
        """Cancel a background split window read (at stop)."""
        if self._split_task is not None and not self._split_task.done():
            self._split_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await self._split_task

    # -- PPLNS windows

    async def window_weights(self, network_difficulty: float,
                             until_time: float | None = None) -> dict[str, float]:
        """PPLNS weights: the newest committed shares (time <= until_time) adding up to
        pplns_window_factor x network difficulty, the oldest one counted in part.

        Exact, and cheap for big windows: the newest 10 s bucket and the bucket where the
        window ends are read share by share; every bucket in between is added from its
        per-account sums (schema v3 `share_buckets`). Only if the window reaches back into
        shares removed by retention is the edge bucket spread pro rata instead."""
        window = payouts.PplnsWindow(self.config.pplns_window_factor * network_difficulty)
        until = self._clock() if until_time is None else until_time
        newest = bucket_of(until)
        if await self._exact_shares(window, until, newest):
            return window.weights
        before = newest
        while True:
            page = await self.store.buckets_page(before, _PAGE)
            if not page:
                return window.weights
            groups: list[tuple[float, dict[str, float]]] = []
            for b, account, difficulty in page:
                if not groups or groups[-1][0] != b:
                    groups.append((b, {}))
                groups[-1][1][account] = difficulty
            if len(page) == _PAGE:  # the last bucket may continue on the next page
                groups = groups[:-1] or [(groups[0][0], await self.store.bucket(groups[0][0]))]
            for b, sums in groups:
                total = sum(sums.values())
                if window.filled + total < window.window_difficulty:
                    for account in sorted(sums):
                        window.add(account, sums[account])
                    continue
                edge_top = math.nextafter(b + BUCKET_S, -math.inf)
                if not await self._exact_shares(window, edge_top, b):
                    # The bucket's shares are gone (retention): spread what is left pro rata.
                    rest = window.window_difficulty - window.filled
                    for account in sorted(sums):
                        window.add(account, sums[account] * rest / total)
                return window.weights
            before = groups[-1][0]

    async def _exact_shares(self, window: payouts.PplnsWindow, until: float,
                            floor: float) -> bool:
        """Add the shares with floor <= time <= until, newest first; True once the window
        is full."""
        cursor: tuple[float, int] | None = None
        while True:
            page = await self.store.shares_page(until, cursor, _PAGE)
            for row in page:
                if row.time < floor:
                    return window.full
                if window.add(row.account, row.difficulty):
                    return True
            if len(page) < _PAGE:
                return window.full
            cursor = (page[-1].time, page[-1].id)

    def _ppm(self) -> int:
        return payouts.fee_ppm(self.config.fee_percent) if self.config.fee_address else 0

    async def pplns_credits(self, block: BlockRecord) -> list[Credit]:
        """PPLNS credits of a block (for when it matures), from the window at its time."""
        weights = await self.window_weights(block.network_difficulty, until_time=block.time)
        result = payouts.pplns(block.reward, weights, ppm=self._ppm())
        return [Credit(block.hash_hex, a, v, "pplns", block.time)
                for a, v in sorted(result.credits.items()) if v]

    # -- coinbase plans

    async def plan_coinbase(self, reward: int, network_difficulty: float,
                            finder_account: str = "") -> payouts.CoinbasePlan:
        """Who the coinbase of the next job pays, by the configured scheme (accounts, not
        scripts; see `coinbase_outputs`). For `split` it reads the window and balances; if the
        store is unavailable the whole reward goes to the pool's fee address."""
        c = self.config
        if c.payout == "solo":
            if not finder_account:
                raise ValueError("solo payouts need the finder's account")
            return payouts.solo(reward, finder_account, ppm=self._ppm(), dust=c.dust_sat)
        if c.payout == "reserve":
            return payouts.reserve(reward, c.reserve_address)
        if c.payout == "pplns":
            return payouts.reserve(reward, c.fee_address)  # the pool wallet pays balances later
        try:
            weights = await self.window_weights(network_difficulty)
            balances = await self.store.balances(["split"])
        except StoreUnavailable as exc:
            log.error("split: ledger unavailable (%s); this coinbase pays the pool address", exc)
            return payouts.reserve(reward, c.fee_address)
        return payouts.split(reward, weights, balances, ppm=payouts.fee_ppm(c.fee_percent),
                             dust=c.dust_sat, max_outputs=c.max_outputs,
                             payable=self._payable)

    async def coinbase_outputs(self, reward: int, network_difficulty: float,
                               finder_account: str = "") -> Outputs:
        """The (script_pubkey, value) outputs for the next coinbase (before the witness
        commitment), by the configured scheme; for `split` from a fresh window and balances."""
        if self.config.payout == "split":
            # A fresh window read, but a new tip's job never waits long for the database: past
            # _SPLIT_PLAN_WAIT_S the plan uses the cached window and the read finishes in the
            # background for the next plan (the flusher also refreshes every split_refresh_s).
            task = self._split_task
            if task is None or task.done():
                task = asyncio.ensure_future(self.refresh_split(network_difficulty))
                task.add_done_callback(_log_split_refresh)
                self._split_task = task
            try:
                await asyncio.wait_for(asyncio.shield(task), _SPLIT_PLAN_WAIT_S)
            except TimeoutError:
                log.warning("split: window read slower than %.0f ms; planning from the window "
                            "read %.1f s ago", _SPLIT_PLAN_WAIT_S * 1e3,
                            time.monotonic() - self._split_refreshed)
            except StoreUnavailable:
                pass  # logged by _log_split_refresh; plan from the last window read
            return self.split_outputs(reward, network_difficulty)
        plan = await self.plan_coinbase(reward, network_difficulty, finder_account)
        if self.config.payout == "split":
            return plan.outputs(self._script, self._fee_script())
        network = Network(self.config.network)
        return plan.outputs(lambda a: address_to_script(a, network), self._fee_script())

    def _fee_script(self) -> bytes | None:
        if not self.config.fee_address:
            return None
        return address_to_script(self.config.fee_address, Network(self.config.network))

    # -- split coinbase: planned synchronously (job building) from a cached window

    async def refresh_split(self, network_difficulty: float | None = None) -> None:
        """Re-read the PPLNS window and the carried balances that `split_outputs` plans from
        (the flusher does this every `split_refresh_s`; a found block updates the cached
        balances at once)."""
        if network_difficulty is not None:
            self._split_netdiff = network_difficulty
        if self._split_netdiff > 0:
            until = self._clock()
            self._split_weights = await self.window_weights(self._split_netdiff, until)
            self._split_window = (until, self._split_netdiff)
        self._split_balances = await self.store.balances(["split"])
        self._split_refreshed = time.monotonic()

    def split_outputs(self, reward: int, network_difficulty: float) -> Outputs:
        """Split coinbase outputs from the cached window and balances, without I/O.

        The plan's balance changes are remembered by its outputs and applied when a block
        with exactly these paying outputs is recorded. Balances read by another instance may
        be up to one refresh old; a block planned from older balances can pay an account twice
        what it was carried, which leaves that account a negative balance (recovered from its
        next payouts: balances always sum to zero)."""
        c = self.config
        if network_difficulty != self._split_netdiff:
            self._split_netdiff = network_difficulty  # the next refresh reads this window
        fee_script = self._fee_script()
        fee_bytes = _output_bytes(fee_script) if fee_script is not None else 0
        plan = payouts.split(reward, self._split_weights, self._split_balances,
                             ppm=payouts.fee_ppm(c.fee_percent), dust=c.dust_sat,
                             max_outputs=c.max_outputs,
                             output_size=lambda a: _output_bytes(self._script(a)),
                             max_bytes=c.split_max_output_bytes - fee_bytes,
                             payable=self._payable)
        outputs = plan.outputs(self._script, fee_script)
        before, after = self._split_balances, dict(plan.balances)
        self._plans[payout_key(outputs)] = [
            (a, after.get(a, 0) - before.get(a, 0)) for a in sorted(set(before) | set(after))
            if after.get(a, 0) != before.get(a, 0)]
        while len(self._plans) > _PLAN_MEMORY:
            self._plans.popitem(last=False)
        return outputs

    def take_plan(self, outputs: Sequence[tuple[bytes, int]]) -> list[tuple[str, int]]:
        """The balance changes of the split plan with these paying outputs, forgotten here
        (none if no remembered plan has them: another scheme, instance or an old plan)."""
        return self._plans.pop(payout_key(outputs), [])

    def apply_split_deltas(self, deltas: Sequence[tuple[str, int]]) -> None:
        """Apply a recorded block's balance changes to the cached balances."""
        balances = dict(self._split_balances)
        for account, delta in deltas:
            balances[account] = balances.get(account, 0) + delta
        self._split_balances = {a: v for a, v in balances.items() if v}

    def split_window(self) -> dict[str, Any]:
        """The cached window split plans are made from, as a block's record keeps it (the
        audit export publishes it, docs/AUDIT.md): end time, the network difficulty it was
        sized by, and the accepted difficulty per account."""
        until, netdiff = self._split_window
        return {"end": until, "network_difficulty": netdiff,
                "weights": dict(sorted(self._split_weights.items()))}
