"""`poold run -c FILE`: the daemon. One wiring function, one TaskGroup, ordered shutdown.

Start order: config -> metrics -> ledger (replays its block journal) -> nodes
(checked: auth, chain, a template that parses; a wrong chain is a clean exit) -> the first
template builds jobs -> Stratum listens -> admin API -> READY to systemd. SIGINT/SIGTERM only set
an Event; SIGHUP re-reads the file and applies the reloadable keys (difficulty bounds, share
interval, idle timeout, log level, fleet caps and budgets), naming the ones that need a restart.
With a `[fleet]` table the process that owns the singletons (poold.supervisor.owns_singletons)
also runs the fleet controller (poold.fleet.runtime): accepted shares feed its pool-coupling
estimator, its telemetry the ledger's energy meter, and the admin API's fleet endpoints. With
`--processes N` the other workers forward their accepted shares to it (poold.fleet.share_relay)
and mark their sessions of curtailed miners from its file (poold.fleet.curtailed_file).
Shutdown: stop listening, `client.reconnect` every miner, drain (bounded) while the fleet goes to
its safe cap (bounded), finish block submissions, stop the nodes, flush the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poold import supervisor
from poold.accounts import AccountBook
from poold.api import AdminApi
from poold.api_backend import DaemonBackend
from poold.bitcoin import sharecore
from poold.bitcoin.address import address_to_script
from poold.bitcoin.coinbase import CoinbaseError, build_coinbase
from poold.bitcoin.target import target_to_difficulty
from poold.bitcoin.tx import TxOut
from poold.coinbase_planning import CoinbasePlanning, Planner
from poold.config import load_config, reload_diff
from poold.errors import ConfigError
from poold.fleet.curtailed_file import CurtailedFollower
from poold.fleet.runtime import FleetRuntime
from poold.fleet.share_relay import ShareRelayReceiver, ShareRelaySender
from poold.ledger import Ledger, LedgerConfig
from poold.ledger.payouts import fee_ppm
from poold.lifetime import Lifetime
from poold.metrics import Metrics
from poold.node.nodes import NodeSet
from poold.node.reader import NodeReader
from poold.node.rpc import NodeCheckError, NodeUnavailable
from poold.pool import Pool
from poold.stratum.auth import Authorizer
from poold.stratum.limits import fit_max_connections
from poold.stratum.server import ServerSettings, StratumServer
from poold.stratum.session import SessionContext, SessionSettings
from poold.supervisor import (
    PeerStatus,
    curtailed_path,
    owns_singletons,
    relay_path,
    worker_config,
)
from poold.systemd import Notifier, listen_sockets
from poold.work.blocks import BlockSubmitter, LogBlockSink
from poold.work.difficulty import DifficultyPolicy
from poold.work.engine import ShareEngine, TeeShareSink
from poold.work.extranonce import ExtranonceAllocator
from poold.work.jobs import FixedPayout, JobBook, PlannedPayout, SoloPayout
from poold.work.vardiff import Vardiff

if TYPE_CHECKING:
    from poold.bitcoin.template import Template
    from poold.config import Config
    from poold.work.blocks import BlockSink
    from poold.work.engine import ShareSink
    from poold.work.jobs import PayoutPolicy


log = logging.getLogger("poold.daemon")

FIRST_TEMPLATE_S = 10.0  # start-up: how long Stratum waits for work before listening anyway
FLEET_STOP_S = 5.0  # safe-cap commands on shutdown; the whole shutdown must fit in 10 s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, type=Path, help="TOML config file")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="run N worker processes on one Stratum port (0 = one per CPU "
                        "core; see poold.supervisor)")
    parser.add_argument("--worker-index", type=int, default=None, metavar="I",
                        help="run as worker I of a multi-process site (set by the supervisor "
                        "of --processes N, or by the poold@.service template unit: one unit "
                        "per index, all on one Stratum port and one ledger)")


def run(args: argparse.Namespace) -> int:

    worker: int | None = getattr(args, "worker_index", None)
    try:
        cfg = load_config(args.config)
        if getattr(args, "log_level", None) is None:
            # `[log] level` applies unless the command line gave a level (workers too).
            logging.getLogger().setLevel(cfg.log.level)
        processes = supervisor.resolve_processes(getattr(args, "processes", 1))
        if worker is not None:
            supervisor.become_worker(worker)
            cfg = supervisor.worker_config(cfg, worker)
        elif processes > 1:
            return supervisor.supervise(args.config, cfg, processes,
                                        getattr(args, "log_level", None))
        else:
            supervisor.adopt_journals(cfg, keep=0)
    except ConfigError as exc:
        print(f"poold run: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(cfg, worker=worker))
    except ConfigError as exc:
        print(f"poold run: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def payout_policy(cfg: Config) -> PayoutPolicy:
    """Who the coinbase pays, from `pool.payout`."""

    p = cfg.pool
    if p.payout == "solo":
        if p.fee_address and p.fee_percent > 0:
            return SoloPayout(fee_ppm(p.fee_percent), address_to_script(p.fee_address, p.network),
                              cfg.ledger.dust_sat)
        return SoloPayout()
    if p.payout == "reserve":
        return FixedPayout(address_to_script(p.reserve_address, p.network))
    if p.payout == "split":
        return PlannedPayout()  # planned per template by the ledger (see `serve`)
    if p.fee_address:
        # pplns: the pool wallet is paid and pays balances later (poold.ledger.payouts).
        return FixedPayout(address_to_script(p.fee_address, p.network))
    raise ConfigError("pool.fee_address", f"required for pool.payout = {p.payout!r}", cfg.source)


def build_pool(
    cfg: Config,
    nodes: NodeSet,
    *,
    metrics: Metrics | None = None,
    share_sink: ShareSink | None = None,
    block_sink: BlockSink | None = None,
    clock: Any = time.time,
    difficulty: DifficultyPolicy | None = None,
    planner: Planner | None = None,
    commitment: Callable[[], tuple[bytes, int]] | None = None,
    worker: int | None = None,
    **server_overrides: Any,
) -> Pool:
    """The one wiring function of the pool: jobs, shares, sessions, server, block submission.

    `difficulty` replaces the configured port bounds (tests use difficulties below the config's
    1e-8 minimum so that every hash is a share); `server_overrides` are `ServerSettings` fields
    plus `invalid_limit` (the session ladder); `worker` is the index of a worker process
    (poold.supervisor), which gives it its own extranonce1 range."""

    s = cfg.stratum
    tag = cfg.pool.coinbase_tag.encode()
    try:  # the largest BIP34 height push and a 34-byte payout script must fit
        build_coinbase(0x7FFFFFFF, [TxOut(0, b"\x00" * 34)], tag=tag,
                       witness_commitment_script=None, extranonce2_size=s.extranonce2_size)
    except CoinbaseError as exc:
        raise ConfigError("pool.coinbase_tag", str(exc), cfg.source) from None
    book = JobBook(
        payout_policy(cfg),
        tag=tag,
        extranonce1_size=4,
        extranonce2_size=s.extranonce2_size,
        # job ids differ across restarts: 1/16 s resolution, wraps after about 8.5 years
        first_seq=(int(time.time() * 16) & 0xFFFFFFF) << 4,
    )
    engine = ShareEngine(
        book,
        difficulty or DifficultyPolicy(s.start_difficulty, s.min_difficulty, s.max_difficulty),
        Vardiff(share_interval_s=s.share_interval_s, window_s=max(6 * s.share_interval_s, 5.0)),
        instance_id=cfg.pool.instance_id,
        on_block=lambda candidate: None,  # replaced by the server
        share_sink=share_sink,
    )
    ctx = SessionContext(
        engine,
        ExtranonceAllocator(cfg.pool.instance_id, size=4, worker=worker),
        authorizer(cfg),
        SessionSettings(
            version_mask=s.version_mask,
            accept_unnegotiated_version_bits=s.accept_unnegotiated_version_bits,
            extranonce2_size=s.extranonce2_size,
            invalid_limit=server_overrides.pop("invalid_limit", s.invalid_share_limit),
        ),
        clock,
    )

    blocks = BlockSubmitter(
        nodes,
        block_sink if block_sink is not None else LogBlockSink(),
        header_lookup=NodeReader.of(nodes).header_if_known,
        metrics=metrics,
    )
    server = StratumServer(
        ctx,
        ServerSettings.from_config(s, **server_overrides),
        metrics=metrics,
        blocks=blocks,
        clock=clock,
    )
    planning: CoinbasePlanning | None = None
    if planner is not None and isinstance(book.payouts, PlannedPayout):
        # split: the fee address takes the whole coinbase whenever no plan can be made
        planning = CoinbasePlanning(server, book.payouts, planner,
                                    address_to_script(cfg.pool.fee_address, cfg.pool.network),
                                    metrics=metrics, commitment=commitment)
        nodes.subscribe(planning.on_template)
    else:
        nodes.subscribe(server.on_template)
    return Pool(server, nodes, planning)


def authorizer(cfg: Config) -> Authorizer:
    """Who may log in: solo checks addresses; pplns and split need a payable account (an
    address, or a name mapped in [accounts] / pool.accounts_file); reserve takes any name."""
    pooled = cfg.pool.payout in ("pplns", "split")
    return Authorizer(cfg.pool.network, solo=cfg.pool.payout == "solo",
                      accounts=AccountBook.of(cfg.pool.network, dict(cfg.accounts))
                      if pooled else None)


def apply_reload(pool: Pool, old: Config, new: Config,
                 fleet: FleetRuntime | None = None, ledger: Ledger | None = None) -> list[str]:
    """Apply the reloadable keys of `new` (SIGHUP); the keys that changed but need a restart
    are logged and kept at their old values. Returns the applied keys (fleet changes one
    entry each, as "fleet.<key>: old -> new")."""

    applied, ignored = reload_diff(old, new)
    s = new.stratum
    engine = pool.server.ctx.engine
    if {"stratum.start_difficulty", "stratum.min_difficulty", "stratum.max_difficulty"} & set(
        applied
    ):
        engine.difficulty = DifficultyPolicy(s.start_difficulty, s.min_difficulty,
                                             s.max_difficulty)
    if "stratum.share_interval_s" in applied and engine.vardiff is not None:
        engine.vardiff = Vardiff(share_interval_s=s.share_interval_s,
                                 window_s=max(6 * s.share_interval_s, 5.0))
    if "stratum.version_mask" in applied:
        told = pool.server.set_version_mask(s.version_mask)
        log.info("version mask now %08x: mining.set_version_mask sent to %d session(s)",
                 s.version_mask, told)
    if "stratum.idle_timeout_s" in applied:
        pool.server.settings = dataclasses.replace(pool.server.settings,
                                                   idle_timeout_s=s.idle_timeout_s)
    if "log.level" in applied:
        logging.getLogger().setLevel(new.log.level)
    if "accounts" in applied:
        pool.server.ctx.authorizer = authorizer(new)
        if ledger is not None:
            ledger.set_accounts(new.accounts)
        log.info("accounts: %d name(s) mapped to payout addresses", len(new.accounts))
    if "fleet" in applied:
        applied.remove("fleet")
        if fleet is None:
            if old.fleet is None or new.fleet is None:
                ignored.append("fleet (added or removed)")
        elif new.fleet is None:
            ignored.append("fleet (removed)")
        else:
            done, kept = fleet.reconfigure(new.fleet)
            applied += done
            ignored += kept
    if applied:
        log.warning("config reloaded from %s: applied %s", new.source, ", ".join(applied))
    if ignored:
        log.warning("config reload: %s changed but need a restart (kept)", ", ".join(ignored))
    return applied


async def _reload_loop(pool: Pool, cfg: Config, hup: asyncio.Event,
                       fleet: FleetRuntime | None = None, ledger: Ledger | None = None,
                       worker: int | None = None) -> None:

    while True:
        await hup.wait()
        hup.clear()
        try:
            new = await asyncio.to_thread(load_config, cfg.source)  # reads files: off the loop
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            continue
        if worker is not None:  # compared as this worker runs it (its port, its state dir)
            try:
                new = worker_config(new, worker)
            except ConfigError as exc:
                log.error("config reload refused, keeping the running config: %s", exc)
                continue
        apply_reload(pool, cfg, new, fleet, ledger)
        cfg = new


async def serve(cfg: Config, *, stop: asyncio.Event | None = None,
                worker: int | None = None) -> int:
    """Run until SIGINT/SIGTERM (or `stop` is set); the process exit code. `worker`: this is
    worker process `worker` of poold.supervisor (`cfg` from `worker_config`); only worker 0 (or
    a plain process) runs the singletons: the ledger's reconcile loop and the fleet
    controller."""

    stop = stop if stop is not None else asyncio.Event()
    hup = asyncio.Event()
    metrics = Metrics()
    metrics.native_core.info({"core": sharecore.CORE})
    # Each worker process writes its own share chain (poold.ledger.chain).
    ledger = Ledger(dataclasses.replace(LedgerConfig.from_config(cfg), writer=worker or 0),
                    metrics=metrics)
    nodes = NodeSet.from_config(cfg, metrics)
    fleet: FleetRuntime | None = None
    share_sink: ShareSink = ledger
    relay_in: ShareRelayReceiver | None = None
    relay_out: ShareRelaySender | None = None
    if cfg.fleet is not None and owns_singletons(worker):
        fleet = FleetRuntime.build(cfg.fleet, metrics)  # ConfigError: missing credentials
        share_sink = TeeShareSink(ledger, fleet.share_sink)
        if worker is not None:  # worker 0 of --processes: the others forward their shares
            relay_in = ShareRelayReceiver(relay_path(cfg), fleet.share_sink.record_share)
    elif cfg.fleet is not None and worker is not None:
        relay_out = ShareRelaySender(relay_path(cfg), dropped=metrics.share_relay_dropped)
        share_sink = TeeShareSink(ledger, relay_out)

    async def planner(template: Template) -> Sequence[tuple[bytes, int]]:
        outputs: Sequence[tuple[bytes, int]] = await ledger.coinbase_outputs(
            template.coinbase_value, target_to_difficulty(template.target))
        return outputs

    # Descriptors: raise the soft limit, fit max_connections under it (WARNING if lowered).
    max_connections = fit_max_connections(cfg.stratum.max_connections)
    pool = build_pool(cfg, nodes, metrics=metrics, share_sink=share_sink, block_sink=ledger,
                      planner=planner, commitment=ledger.chain_commitment, worker=worker,
                      max_connections=max_connections)
    server = pool.server
    server.ctx.engine.pressure = ledger.pressure  # back-pressure while the ledger lags
    if cfg.metrics.per_worker:
        metrics.enable_per_worker(
            lambda: ((c.worker, c.accepted_difficulty) for c in server.connections if c.worker),
            cfg.metrics.per_worker_max)
    # From here on the handlers are removed again and the notifier closed, whatever happens.
    loop = asyncio.get_running_loop()
    for sig, event in ((signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGHUP, hup)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    notifier = Notifier()
    try:
        # One owner for every long-lived task (poold.lifetime): started in dependency order,
        # stopped in the reverse one (docs/DESIGN.md, "Processes and tasks").
        async with Lifetime() as life:
            life.start(ledger.run(), "ledger")
            await ledger.started.wait()  # its block journal replayed before a block is found
            if pool.planning is not None:  # split: plans use the ledger, templates feed them
                life.on_close(pool.planning.aclose)
            life.start(nodes.run(), "nodes")
            await nodes.started.wait()  # checked (a wrong chain ends serve()) and a template
            # The first template reaches the pool through the subscription (split payouts plan
            # it asynchronously first): listen once there is work to hand out, or say why not.
            try:
                async with asyncio.timeout(FIRST_TEMPLATE_S):
                    await server.has_work.wait()
            except TimeoutError:
                log.warning("no block template within %.0f s of start; listening anyway (miners "
                            "get work as soon as one arrives; /readyz says template=false until "
                            "then)", FIRST_TEMPLATE_S)
            if relay_in is not None:
                try:
                    await relay_in.start()
                    life.on_close(relay_in.stop)
                except OSError as exc:  # e.g. a state_dir path too long for a unix socket name
                    log.error("share relay unavailable (%s): the fleet controller sees only "
                              "worker 0's shares", exc)
            backend = DaemonBackend(pool, ledger, fleet,
                                    fleet_elsewhere=cfg.fleet is not None and fleet is None,
                                    refresh_s=cfg.templates.refresh_s)
            if worker is not None:
                backend.peers = PeerStatus(cfg, worker)
            api = AdminApi(backend, metrics.registry,
                           read_tokens=cfg.api.read_tokens, write_tokens=cfg.api.write_tokens)
            # The API binds first: if its port is taken, the process fails before it holds
            # miners (which a failure after listening would disconnect, every one of them).
            await api.start(*cfg.api.listen)
            life.on_close(api.stop)
            await server.start(listen_sockets().get("stratum"))
            # Start-up objects (config, jobs, drivers) live as long as the process: keep them
            # out of the collector's generations (140-210 ms GC pauses were measured at 10k
            # miners).
            gc.collect()
            gc.freeze()
            notifier.ready(f"stratum on {', '.join(server.addresses)}")
            log.info("poold running: %s", ", ".join(server.addresses))
            life.start(server.run_sweeper(), "stratum-sweeper")
            life.start(_watchdog(notifier), "systemd-watchdog")
            life.start(_reload_loop(pool, cfg, hup, fleet, ledger, worker), "config-reload")
            if owns_singletons(worker):
                life.start(ledger.reconcile_forever(NodeReader.of(nodes)), "ledger-reconcile")
            if backend.peers is not None:
                life.start(backend.peers.run(), "worker-status")
            if relay_out is not None:
                life.start(relay_out.run(), "share-relay")
                life.start(CurtailedFollower(curtailed_path(cfg)).run(server, server.clock),
                           "fleet-curtailed")
            if fleet is not None:  # cancelled or failed, its run() leaves the safe cap
                life.start(_run_fleet(fleet, backend, ledger=ledger, server=server,
                                      server_clock=server.clock,
                                      curtailed_file=curtailed_path(cfg)
                                      if worker is not None else None), "fleet")
                log.info("fleet controller running: %d miners in %d racks",
                         len(fleet.cfg.miners), len(fleet.cfg.racks))
            await stop.wait()
            log.info("shutting down: stop listening, reconnect miners, drain")
            notifier.stopping()
            if fleet is not None:  # the safe cap goes out while the miners drain
                await asyncio.gather(server.shutdown(), fleet.stop(FLEET_STOP_S))
            else:
                await server.shutdown()
            # Leaving the block stops the rest, last started first: the loops and the fleet,
            # the API, the relay, the nodes, the split planner, then the ledger's last flush.
    except BaseExceptionGroup as group:
        bad_node = group.subgroup((NodeCheckError, NodeUnavailable))
        if bad_node is not None and bad_node.exceptions == group.exceptions:
            log.error("bitcoind check failed: %s", bad_node.exceptions[0])
            return 1
        if len(group.exceptions) == 1:  # the failure itself, as serve() raised it before
            raise group.exceptions[0] from None
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        notifier.close()
        log.info("poold stopped")
    return 0


async def _run_fleet(fleet: FleetRuntime, backend: DaemonBackend, **kw: Any) -> None:
    """The fleet controller. If it fails, the pool keeps serving: the miners are sent to the
    safe cap, /readyz reports the fleet not ready, and a restart of poold restarts it."""
    try:
        await fleet.run(**kw)
    except Exception:  # any failure of the controller: contain it, fail safe, say so loudly
        log.critical("fleet controller failed; sending the safe cap, the pool keeps serving",
                     exc_info=True)
        backend.fleet_failed = True
        await fleet.stop(FLEET_STOP_S)


async def _watchdog(notifier: Any) -> None:
    # At half the watchdog timeout (Notifier), but at least every 5 s: poold.supervisor reads
    # the pings of its workers too.
    interval = min(notifier.watchdog_interval_s or 5.0, 5.0)
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
