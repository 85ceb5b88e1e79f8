"""Every poold_* Prometheus metric, defined once, on an injected registry.

Conventions (Prometheus naming guide): base units (seconds, watts, hashes per second), `_total`
on counters (prometheus_client appends it), labels with bounded values only: `reason` is a
`RejectReason` name, `node` a configured node name, `rack` a configured rack id, `driver` a driver
kind. Worker names and IP addresses are never labels by default.

Live state that is cheaper to read at scrape time than to keep updated (connections, template
age) is exported through `Metrics.add_scrape_hook`, called by the collector before each scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets in seconds, from 50 µs (a share check) to 10 s (a slow RPC).
_FAST = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1)
_SLOW = (1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _HookCollector(Collector):
    """Runs scrape hooks (which set gauges) before the registry reads the metrics."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterable[Metric]:
        for hook in self.hooks:
            hook()
        return ()


class _PerWorkerCollector(Collector):
    """Optional per-worker series (`[metrics] per_worker`), capped at `limit` workers: the ones
    with the most accepted difficulty; the rest are summed under worker="_other" so that sums
    over workers still equal the pool's total."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, float]]], limit: int) -> None:
        self.source = source
        self.limit = limit

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, float] = {}
        for worker, accepted_difficulty in self.source():
            totals[worker] = totals.get(worker, 0.0) + accepted_difficulty
        ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
        fam = CounterMetricFamily(
            "poold_worker_accepted_difficulty",
            "Accepted difficulty per worker of its current sessions (opt-in, capped; the rest "
            "under worker=\"_other\")", labels=["worker"])
        for worker, value in ranked[: self.limit]:
            fam.add_metric([worker], value)
        rest = ranked[self.limit:]
        if rest:
            fam.add_metric(["_other"], sum(v for _, v in rest))
        yield fam


class Metrics:
    """All poold metrics. Tests pass nothing and get a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.registry = r
        self._hooks = _HookCollector()
        # Registered first so that hooks run before the gauges they set are read.
        r.register(self._hooks)

        # -- Stratum
        self.connections = Gauge(
            "poold_stratum_connections", "Open Stratum connections", registry=r)
        self.connections_total = Counter(
            "poold_stratum_connection_attempts", "Stratum connection attempts by outcome",
            ["result"], registry=r)
        self.disconnects = Counter(
            "poold_stratum_disconnects", "Stratum connections ended or refused, by reason",
            ["reason"], registry=r)
        self.accept_errors = Counter(
            "poold_stratum_accept_errors",
            "accept() failures for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)",
            registry=r)
        self.shares = Counter(
            "poold_shares", "Shares by result and reject reason", ["result", "reason"],
            registry=r)
        self.accepted_difficulty = Counter(
            "poold_accepted_difficulty", "Sum of the difficulty of accepted shares",
            registry=r)
        self.pool_hashrate = Gauge(
            "poold_pool_hashrate_hashes_per_second",
            "Pool hashrate estimated from accepted difficulty", registry=r)
        self.workers = Gauge(
            "poold_workers", "Authorized workers with a share in the last 10 minutes",
            registry=r)
        self.notify_latency = Histogram(
            "poold_notify_fanout_seconds",
            "Time from a new template to the last miner's notify written", buckets=_SLOW,
            registry=r)
        self.share_check_seconds = Histogram(
            "poold_share_check_seconds", "Time to check one share (hashing included)",
            buckets=_FAST, registry=r)

        # -- Blocks and templates
        self.blocks_found = Counter(
            "poold_blocks_found", "Shares that met the network target", registry=r)
        self.block_submits = Counter(
            "poold_block_submits",
            "submitblock outcome per node: accepted, duplicate, stale (valid, lost the height), "
            "rejected, error", ["node", "result"],
            registry=r)
        self.template_age = Gauge(
            "poold_template_age_seconds", "Age of the template behind the current job",
            registry=r)
        self.payout_plan_fallbacks = Counter(
            "poold_payout_plan_fallbacks",
            "payout = split: templates sent with the whole coinbase to the fee address because "
            "no split could be planned (reason: error, timeout)", ["reason"], registry=r)
        for reason in ("error", "timeout"):  # exported at 0 from the start (alerts watch it)
            self.payout_plan_fallbacks.labels(reason)
        self.tip_height = Gauge("poold_tip_height", "Height of the best known block", registry=r)

        # -- Nodes
        self.rpc_latency = Histogram(
            "poold_rpc_latency_seconds", "bitcoind JSON-RPC latency", ["node", "method"],
            buckets=_SLOW, registry=r)
        self.rpc_errors = Counter(
            "poold_rpc_errors", "bitcoind JSON-RPC failures", ["node", "method"], registry=r)
        self.zmq_gaps = Counter(
            "poold_zmq_gaps", "ZMQ sequence gaps or silences that forced a resync", ["node"],
            registry=r)
        self.node_up = Gauge(
            "poold_node_up", "1 if the node answered its last health check", ["node"],
            registry=r)

        # -- Ledger
        self.ledger_lag_seconds = Gauge(
            "poold_ledger_lag_seconds", "Age of the oldest share not yet committed", registry=r)
        self.ledger_lost_shares = Counter(
            "poold_ledger_lost_shares", "Accepted shares that could not be persisted",
            registry=r)
        self.ledger_committed_shares = Counter(
            "poold_ledger_committed_shares", "Accepted shares committed to the ledger",
            registry=r)
        self.ledger_writable = Gauge(
            "poold_ledger_writable", "1 if the ledger store answered a write or probe lately",
            registry=r)
        self.ledger_journal_pending = Gauge(
            "poold_ledger_journal_pending", "Block journal records not yet in the store",
            registry=r)
        self.ledger_journal_oldest_age_seconds = Gauge(
            "poold_ledger_journal_oldest_age_seconds",
            "Age of the oldest block journal record not yet in the store", registry=r)
        self.ledger_spilled_shares = Gauge(
            "poold_ledger_spilled_shares", "Accepted shares in the spill file, not yet committed",
            registry=r)
        self.ledger_pressure = Gauge(
            "poold_ledger_pressure", "Back-pressure factor on the vardiff goal (1 = none)",
            registry=r)

        # -- Fleet
        self.rack_power_watts = Gauge(
            "poold_rack_power_watts", "Rack power from telemetry (stale counted at worst case)",
            ["rack"], registry=r)
        self.rack_cap_watts = Gauge(
            "poold_rack_cap_watts", "Rack power cap in force", ["rack"], registry=r)
        self.rack_hashrate = Gauge(
            "poold_rack_hashrate_hashes_per_second", "Rack hashrate verified by the pool",
            ["rack"], registry=r)
        self.rack_commanded_watts = Gauge(
            "poold_rack_commanded_watts", "Rack power the controller has commanded (asked "
            "of the firmware; the meters are poold_rack_power_watts)", ["rack"], registry=r)
        self.rack_blind_miners = Gauge(
            "poold_rack_blind_miners", "Miners of the rack without fresh telemetry (counted "
            "at their worst case)", ["rack"], registry=r)
        self.rack_over_cap_seconds = Counter(
            "poold_rack_over_cap_seconds", "Seconds the rack's meters were above its cap past "
            "its over_cap_allowed_s", ["rack"], registry=r)
        self.rack_early_wakes = Counter(
            "poold_rack_early_wakes", "Slept miners woken before min_sleep_s because no "
            "other miner could take the rack's budget", ["rack"], registry=r)
        self.site_power_watts = Gauge(
            "poold_site_power_watts", "Site power from telemetry", registry=r)
        self.site_cap_watts = Gauge(
            "poold_site_cap_watts", "Site power cap in force", registry=r)
        self.controller_commands = Counter(
            "poold_controller_commands", "Firmware commands by driver and outcome",
            ["driver", "result"], registry=r)
        self.telemetry_reads = Counter(
            "poold_telemetry_reads", "Telemetry readings of the miners by driver and outcome "
            "(ok, error, timeout)", ["driver", "result"], registry=r)
        self.controller_command_seconds = Histogram(
            "poold_controller_command_seconds", "Firmware command latency including read-back",
            ["driver"], buckets=_SLOW, registry=r)
        self.share_relay_dropped = Counter(
            "poold_share_relay_dropped", "Share sums a --processes worker could not send to "
            "worker 0's fleet controller (it was restarting)", registry=r)
        self.grid_signal_age = Gauge(
            "poold_grid_signal_age_seconds", "Seconds since the last grid signal heartbeat",
            registry=r)
        self.grid_response_seconds = Gauge(
            "poold_grid_response_seconds", "Last grid event (a lower level, or the signal "
            "lost): seconds from the signal to the site under the level on the meters",
            registry=r)
        self.grid_response_misses = Counter(
            "poold_grid_response_misses", "Grid events whose level was not met on the meters "
            "within [fleet.grid_signal] response_s", registry=r)

        self._grid_age_shown = True

        # -- Process
        self.native_core = Info("poold_share_core", "Share core in use", registry=r)
        self.start_time = Gauge(
            "poold_start_time_seconds", "Unix time the daemon started", registry=r)
        self.start_time.set(time.time())

    def enable_per_worker(
        self, source: Callable[[], Iterable[tuple[str, float]]], limit: int
    ) -> None:
        """Export `poold_worker_accepted_difficulty_total{worker}` from `source` (pairs of
        worker name and accepted difficulty), for at most `limit` workers plus "_other"."""
        self.registry.register(_PerWorkerCollector(source, limit))

    def show_grid_signal_age(self, on: bool) -> None:
        """Export poold_grid_signal_age_seconds only where a grid signal is configured (or
        one was received): elsewhere its age would grow forever and page someone."""
        if on == self._grid_age_shown:
            return
        if on:
            self.registry.register(self.grid_signal_age)
        else:
            self.registry.unregister(self.grid_signal_age)
        self._grid_age_shown = on

    def add_scrape_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook` (which sets gauges from live state) before every scrape."""
        self._hooks.hooks.append(hook)
