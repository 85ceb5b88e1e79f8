"""All configured bitcoind nodes as one source of templates and one sink for blocks.

Responsibilities:
- health: every node passes the startup check (`RpcClient.check` + a template that parses) before
  it is used; a node that fails a call is marked down and re-checked in the background with capped
  backoff (at most `health_backoff_cap_s`, 0.1 s by default: a probe of a node that is down costs
  one refused connect, and every block found meanwhile waits on the node's return), and comes
  back by itself. Any sign of life from a down node (a ZMQ message or
  handshake, any RPC answer, a `submitblock` it answered) re-checks it at once: fresh work follows
  the node's return without waiting for the next probe;
- tip tracking: ZMQ `hashblock` from every node that publishes it is a hint; a sequence gap, a
  disconnect, a silence, or no ZMQ at all switches that node to polling `getbestblockhash`
  (`poll_interval_s`, 250 ms default). The RPC answer is always the truth;
- templates: on a new tip, a template from the node that announced it at once; if it is not there
  within `empty_first_ms`, a coinbase-only template built from `getblockheader` of the new tip is
  published first (new_tip=True, so miners drop the old tip), and the full template follows as
  new_tip=False: the empty job is still valid work on the same tip, so miners need not discard it.
  Every `refresh_s` a template from the healthiest node, for fees (new_tip=False unless the tip
  moved);
- blocks: `submit_block` goes to every node in parallel, retries transport failures for a bounded
  time while no node has accepted, and never raises: it returns the outcome per node.

Ordering rules for templates (`_publish`): answers to requests issued before the one that produced
the current template are dropped; a different prevhash replaces the current template only if it is
higher, or comes from the node the current one came from (that node's own reorg), or that node is
down (follow the best live node). That keeps a lagging node from pulling miners back onto an old
tip while the node it lags behind is alive.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from poold.bitcoin.byteorder import hash_from_hex, hash_to_hex
from poold.bitcoin.encoding import sha256d
from poold.bitcoin.template import Template, TemplateError, empty_template_for_tip, parse_gbt
from poold.config import default
from poold.lifetime import start_in_background, stop_background
from poold.node.rpc import (
    RPC_IN_WARMUP,
    Backoff,
    NodeCheckError,
    NodeInfo,
    NodeRpcError,
    NodeUnavailable,
    RpcClient,
    ThrottledLog,
)
from poold.node.zmqsub import HashblockListener

if TYPE_CHECKING:
    import zmq.asyncio

    from poold.config import Config
    from poold.metrics import Metrics

log = logging.getLogger(__name__)

TemplateCallback = Callable[[Template, bool], None]


class NodeSettings(Protocol):
    """The fields of `poold.config.NodeConfig` this module reads (read-only)."""

    @property
    def name(self) -> str: ...
    @property
    def rpc_url(self) -> str: ...
    @property
    def rpc_user(self) -> str | None: ...
    @property
    def rpc_password(self) -> str | None: ...
    @property
    def rpc_cookie_file(self) -> Path | str | None: ...
    @property
    def zmq_hashblock(self) -> str | None: ...
    @property
    def timeout_s(self) -> float: ...


class TemplateSettings(Protocol):
    """The fields of `poold.config.TemplatesConfig` this module reads (read-only)."""

    @property
    def poll_interval_s(self) -> float: ...
    @property
    def refresh_s(self) -> float: ...
    @property
    def empty_first_ms(self) -> float: ...


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A NodeSettings for tests, the devnet and the CLI (the daemon passes NodeConfig)."""

    name: str
    rpc_url: str
    rpc_user: str | None = None
    rpc_password: str | None = None
    rpc_cookie_file: Path | str | None = None
    zmq_hashblock: str | None = None
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        return f"NodeSpec(name={self.name!r}, zmq_hashblock={self.zmq_hashblock!r})"


@dataclass(frozen=True, slots=True)
class TemplateTiming:
    """A TemplateSettings with the documented defaults.

    empty_first_ms: how long a new tip waits for the full template before the empty one goes
    out. The empty template cannot reach miners sooner than this, so it bounds the new-tip
    latency on a node whose getblocktemplate is slow (mainnet: tens to hundreds of ms); the cost
    of a small value is one extra job per block when the full template comes a little later.
    Negative: never publish an empty template.
    """

    poll_interval_s: float = default("templates.poll_interval_s")
    refresh_s: float = default("templates.refresh_s")
    empty_first_ms: float = default("templates.empty_first_ms")


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    up: bool
    tip_hex: str | None
    zmq: str  # "off", "ok", "down", "gap", "silent"
    last_error: str | None


def gbt_rules(chain: str) -> tuple[str, ...]:
    """The `rules` poold announces to getblocktemplate (BIP9): segwit, and signet on signet."""
    return ("segwit", "signet") if chain == "signet" else ("segwit",)


class _Node:
    def __init__(self, spec: NodeSettings, client: RpcClient) -> None:
        self.name = spec.name
        self.spec = spec
        self.client = client
        self.up = False
        self.info: NodeInfo | None = None
        self.last_error: str | None = None
        self.tip_hex: str | None = None  # last tip this node told us about (ZMQ or RPC)
        self.listener: HashblockListener | None = None
        self.down = asyncio.Event()  # set while the node needs re-checking
        self.wake = asyncio.Event()  # wakes the poller early (gap, disconnect)
        self.alive = asyncio.Event()  # a sign of life while down: re-check now
        self.answered = asyncio.Event()  # it answered since it was marked down: resubmit now
        self.silent = False  # ZMQ has been quiet for longer than zmq_silence_s


class NodeSet:
    """Templates from the healthiest node, new tips from the fastest, blocks to all."""

    def __init__(
        self,
        nodes: Sequence[NodeSettings],
        *,
        chain: str,
        templates: TemplateSettings | None = None,
        metrics: Metrics | None = None,
        zmq_silence_s: float = 900.0,
        safety_poll_s: float = 5.0,
        submit_deadline_s: float = 30.0,
        health_backoff_cap_s: float = 0.1,
        zmq_context: zmq.asyncio.Context | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("NodeSet needs at least one node")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        timing = templates or TemplateTiming()
        self.chain = chain
        self.rules = gbt_rules(chain)
        self.poll_interval_s = timing.poll_interval_s
        self.refresh_s = timing.refresh_s
        self.empty_first_ms = timing.empty_first_ms
        self.zmq_silence_s = zmq_silence_s
        self.safety_poll_s = safety_poll_s
        self.submit_deadline_s = submit_deadline_s
        self.health_backoff_cap_s = health_backoff_cap_s
        self._metrics = metrics
        self._zmq_context = zmq_context
        self._specs = tuple(nodes)
        self._nodes: list[_Node] = []
        self._subscribers: list[TemplateCallback] = []
        self._latest: Template | None = None
        self._latest_seq = -1
        self._seq = itertools.count()
        self._inflight: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None  # run()'s, while the loops run
        self._runner: asyncio.Task[None] | None = None  # start()'s task
        self._stopping = False
        self.started = asyncio.Event()  # the first template is published, the loops run
        self._throttle = ThrottledLog(log)
        self.tip_changes = 0
        if metrics is not None:
            # Known label values start at 0, so dashboards and rate() see the series before the
            # first event (Prometheus instrumentation practice).
            for name in names:
                metrics.zmq_gaps.labels(node=name)
                metrics.node_up.labels(node=name)
                metrics.block_submits.labels(node=name, result="accepted")

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None) -> NodeSet:
        """The daemon's NodeSet: `[[nodes]]`, `[templates]` and `pool.network`."""
        return cls(
            config.nodes, chain=config.pool.network.chain_name, templates=config.templates,
            metrics=metrics,
        )

    # -- public API -----------------------------------------------------------------------------

    @property
    def latest(self) -> Template | None:
        return self._latest

    def subscribe(self, callback: TemplateCallback) -> None:
        """`callback(template, new_tip)` for every published template (new_tip = clean_jobs)."""
        self._subscribers.append(callback)

    def healthy(self) -> bool:
        return self._latest is not None and any(n.up for n in self._nodes)

    def status(self) -> list[NodeStatus]:
        return [
            NodeStatus(n.name, n.up, n.tip_hex, self._zmq_state(n), n.last_error)
            for n in self._nodes
        ]

    def client(self, name: str) -> RpcClient:
        for node in self._nodes:
            if node.name == name:
                return node.client
        raise KeyError(name)

    def listener(self, name: str) -> HashblockListener | None:
        for node in self._nodes:
            if node.name == name:
                return node.listener
        raise KeyError(name)

    async def run(self) -> None:
        """Check every node, publish the first template (then `started` is set), and run the
        health, poll, ZMQ and refresh loops in this task's TaskGroup until cancelled; the RPC
        clients are closed on the way out (docs/DESIGN.md, "Processes and tasks").

        Raises NodeCheckError if a node is on the wrong chain (a configuration error), and
        NodeUnavailable if no node can give a template. Nodes that are merely unreachable are
        retried in the background.
        """
        self._stopping = False
        self.started.clear()
        try:
            await self._open()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for node in self._nodes:
                    self._spawn(self._health_loop(node), f"health-{node.name}")
                    self._spawn(self._poll_loop(node), f"poll-{node.name}")
                    if node.spec.zmq_hashblock:
                        node.listener = HashblockListener(
                            node.name, node.spec.zmq_hashblock, self._zmq_callback(node),
                            on_disconnect=node.wake.set, context=self._zmq_context,
                            on_connect=functools.partial(self._sign_of_life, node),
                        )
                        self._spawn(node.listener.run(), f"zmq-{node.name}")
                self._spawn(self._refresh_loop(), "template-refresh")
                self.started.set()
        finally:
            self._stopping = True
            self._tg = None
            for node in self._nodes:
                await node.client.close()

    async def _open(self) -> None:
        for spec in self._specs:
            client = RpcClient(
                spec.rpc_url, name=spec.name, user=spec.rpc_user, password=spec.rpc_password,
                cookie_file=spec.rpc_cookie_file, timeout_s=spec.timeout_s, metrics=self._metrics,
            )
            await client.start()
            node = _Node(spec, client)
            client.on_answer = functools.partial(self._sign_of_life, node)
            self._nodes.append(node)
        results = await asyncio.gather(
            *(self._check(n) for n in self._nodes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, NodeCheckError):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        ready = [r for r in results if isinstance(r, Template)]
        if not ready:
            errors = "; ".join(f"{n.name}: {n.last_error}" for n in self._nodes)
            raise NodeUnavailable(f"no node can give a block template ({errors})")
        # Configuration order is the operator's preference.
        self._publish(ready[0], next(self._seq))
        if self._metrics is not None:
            self._metrics.add_scrape_hook(self._export_template_age)

    async def start(self) -> None:
        """`run()` in a task of its own until started (tests, benchmarks, the CLI); `stop()`
        ends it. The daemon runs `run()` in its Lifetime instead."""
        self._runner = await start_in_background(self.run(), self.started, "nodes")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        await stop_background(runner)

    async def __aenter__(self) -> NodeSet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def refresh(self) -> Template | None:
        """Fetch a template from the healthiest node now; the published template or None."""
        seq = next(self._seq)
        for node in self._ranked():
            try:
                template = await self._template(node)
            except (NodeUnavailable, NodeRpcError, TemplateError) as e:
                self._mark_down(node, e)
                continue
            self._publish(template, seq)
            return template
        self._throttle.warning("no-template", "no healthy node can give a template")
        return None

    async def submit_block(self, block: bytes) -> dict[str, str | None]:
        """Submit to every node in parallel; node name -> None (accepted) or the reason/error.

        Never raises. A node's BIP22 answer ("duplicate", "high-hash", ...) is final; transport
        failures are retried with backoff until some node accepts or `submit_deadline_s` passes.
        """
        block_hex = block.hex()
        hash_hex = hash_to_hex(sha256d(block[:80]))
        accepted = asyncio.Event()
        results = await asyncio.gather(
            *(self._submit_one(n, block_hex, hash_hex, accepted) for n in self._nodes),
            return_exceptions=True,
        )
        out: dict[str, str | None] = {}
        for node, result in zip(self._nodes, results, strict=True):
            if isinstance(result, BaseException):
                # _submit_one handles every expected failure; this is a bug, but the caller still
                # gets an answer for the block instead of an exception.
                log.error("submitblock to %s failed unexpectedly: %r", node.name, result)
                out[node.name] = f"error: {type(result).__name__}: {result}"
            else:
                out[node.name] = result
        return out

    # -- health ---------------------------------------------------------------------------------

    async def _check(self, node: _Node) -> Template:
        """Startup/recovery check; on success the node is up and its template is returned."""
        try:
            node.info = await node.client.check(self.chain)
            template = await self._template(node)
        except Exception as e:
            # Whatever went wrong, the node stays down and the health loop keeps retrying it.
            self._mark_down(node, e)
            raise
        node.tip_hex = template.prevhash_hex
        self._mark_up(node)
        return template

    def _mark_up(self, node: _Node) -> None:
        was_up = node.up
        node.up = True
        node.last_error = None
        node.down.clear()
        self._throttle.clear(f"down-{node.name}")
        if self._metrics is not None:
            self._metrics.node_up.labels(node=node.name).set(1)
        if not was_up and self._tg is not None:
            log.info("node %s is back", node.name)

    def _mark_down(self, node: _Node, error: BaseException) -> None:
        node.last_error = str(error)
        was_up = node.up
        if was_up:
            log.warning("node %s is down: %s", node.name, error)
        else:
            self._throttle.warning(f"down-{node.name}", "node %s still down: %s", node.name, error)
        node.up = False
        node.answered.clear()
        node.down.set()
        if self._metrics is not None:
            self._metrics.node_up.labels(node=node.name).set(0)
        latest = self._latest
        if was_up and self._tg is not None and latest is not None and latest.source == node.name:
            # The node our work comes from is gone: take the best live node's template now.
            self._spawn(self._failover(), f"failover-{node.name}")

    async def _failover(self) -> None:
        await self.refresh()

    def _sign_of_life(self, node: _Node) -> None:
        """The node answered something (RPC reply, ZMQ): if it is held down, re-check it now."""
        if not node.up:
            node.alive.set()
            node.answered.set()

    async def _health_loop(self, node: _Node) -> None:
        backoff = Backoff(initial_s=0.05, cap_s=self.health_backoff_cap_s)
        while True:
            await node.down.wait()
            if not node.alive.is_set():
                try:
                    await asyncio.wait_for(node.alive.wait(), backoff.next_delay())
                except TimeoutError:
                    pass
            # Answers to the check itself are not news: only those from elsewhere wake the next.
            node.alive.clear()
            try:
                template = await self._check(node)
            except (NodeUnavailable, NodeRpcError, TemplateError, NodeCheckError):
                node.alive.clear()
                continue  # logged (throttled) by _mark_down
            except Exception:
                node.alive.clear()
                log.exception("node %s: unexpected failure of the health check", node.name)
                continue
            node.alive.clear()
            backoff.reset()
            # It may have missed tips while down, or be the preferred node again.
            self._publish(template, next(self._seq))

    def _is_up(self, name: str) -> bool:
        return any(n.up for n in self._nodes if n.name == name)

    def _ranked(self) -> list[_Node]:
        """Up nodes in configuration order (the operator's preference), then the rest."""
        return [n for n in self._nodes if n.up] + [n for n in self._nodes if not n.up]

    # -- tips -----------------------------------------------------------------------------------

    def _zmq_state(self, node: _Node) -> str:
        listener = node.listener
        if listener is None:
            return "off"
        if not listener.connected:
            return "down"
        if listener.gap_pending:
            return "gap"
        if listener.silent_for() > self.zmq_silence_s:
            return "silent"
        return "ok"

    def _zmq_callback(self, node: _Node) -> Callable[[str, bool], None]:
        def on_hint(tip_hex: str, gap: bool) -> None:
            self._on_zmq(node, tip_hex, gap)

        return on_hint

    def _on_zmq(self, node: _Node, tip_hex: str, gap: bool) -> None:
        self._sign_of_life(node)
        if gap:
            if self._metrics is not None:
                self._metrics.zmq_gaps.labels(node=node.name).inc()
            # Lost messages: what we got may not be the tip. Ask the node (the poller resyncs at
            # once and keeps polling until ZMQ is in sequence again).
            node.wake.set()
            return
        self._on_tip(node, tip_hex)

    def _on_tip(self, node: _Node, tip_hex: str) -> None:
        """A node says its tip is `tip_hex` (hint or RPC answer). Start a fetch if it is new."""
        node.tip_hex = tip_hex
        latest = self._latest
        if latest is not None and latest.prevhash_hex == tip_hex:
            return
        if tip_hex in self._inflight:
            return
        self._inflight.add(tip_hex)
        self._spawn(self._new_tip(node, tip_hex), f"new-tip-{node.name}")

    async def _poll_loop(self, node: _Node) -> None:
        while True:
            zmq_state = self._zmq_state(node)
            if (zmq_state == "silent") != node.silent:
                node.silent = zmq_state == "silent"
                if node.silent:
                    log.warning("zmq %s: nothing for %.0f s; polling getbestblockhash",
                                node.name, self.zmq_silence_s)
                    if self._metrics is not None:
                        self._metrics.zmq_gaps.labels(node=node.name).inc()
            if zmq_state == "ok" and node.listener is not None:
                # Wake up when ZMQ would count as silent, to start polling then.
                until_silent = self.zmq_silence_s - node.listener.silent_for()
                interval = max(self.poll_interval_s, min(self.safety_poll_s, until_silent))
            else:
                interval = self.poll_interval_s
            if node.up:
                try:
                    tip_hex = await node.client.getbestblockhash()
                except (NodeUnavailable, NodeRpcError) as e:
                    self._mark_down(node, e)
                else:
                    if tip_hex != node.tip_hex or zmq_state == "gap":
                        self._on_tip(node, tip_hex)
            node.wake.clear()
            try:
                await asyncio.wait_for(node.wake.wait(), interval)
            except TimeoutError:
                pass

    async def _new_tip(self, node: _Node, tip_hex: str) -> None:
        seq = next(self._seq)
        try:
            if not node.up:
                await self.refresh()
                return
            previous = self._latest
            header: asyncio.Task[dict[str, Any]] | None = None
            if previous is not None and self.empty_first_ms >= 0:
                # Sent before getblocktemplate: bitcoind's GBT holds cs_main while it builds the
                # block, and getblockheader needs cs_main too, so it must get there first.
                header = asyncio.create_task(node.client.getblockheader(tip_hex))
                header.add_done_callback(_consume_exception)
            gbt = asyncio.create_task(self._template(node))
            try:
                await asyncio.wait({gbt}, timeout=self.empty_first_ms / 1000.0)
                if not gbt.done() and header is not None and previous is not None:
                    empty = await self._empty_for(node, tip_hex, header, previous)
                    if empty is not None and not gbt.done():
                        self._publish(empty, seq)
                template = await gbt
            except (NodeUnavailable, NodeRpcError, TemplateError) as e:
                self._mark_down(node, e)
                await self.refresh()
                return
            finally:
                for task in (gbt, header):
                    if task is not None and not task.done():
                        task.cancel()
            self._publish(template, seq)
        finally:
            self._inflight.discard(tip_hex)

    async def _empty_for(
        self, node: _Node, tip_hex: str, header: asyncio.Task[dict[str, Any]],
        previous: Template,
    ) -> Template | None:
        try:
            hdr = await header
        except (NodeUnavailable, NodeRpcError) as e:
            log.debug("node %s: getblockheader %s failed: %s", node.name, tip_hex, e)
            return None
        confirmations = hdr.get("confirmations")
        height = hdr.get("height")
        bits_hex = hdr.get("bits")
        mediantime = hdr.get("mediantime")
        if not (
            isinstance(height, int) and isinstance(bits_hex, str)
            and isinstance(mediantime, int) and confirmations == 1
        ):
            # confirmations != 1: no longer the tip (or not on the active chain); wait for GBT.
            return None
        try:
            return empty_template_for_tip(
                previous,
                tip_hash=hash_from_hex(tip_hex),
                tip_height=height,
                tip_bits=int(bits_hex, 16),
                tip_mediantime=mediantime,
                chain=self.chain,
                now=int(time.time()),
                received_at=time.time(),
                source=node.name,
            )
        except ValueError as e:
            log.warning("node %s: unusable getblockheader %s (%s); waiting for the template",
                        node.name, tip_hex, e)
            return None

    # -- templates ------------------------------------------------------------------------------

    async def _template(self, node: _Node) -> Template:
        result = await node.client.getblocktemplate(self.rules)
        return parse_gbt(result, received_at=time.time(), source=node.name)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    def _publish(self, template: Template, seq: int) -> bool:
        current = self._latest
        if current is not None:
            if seq < self._latest_seq:
                return False  # answer to a request older than the current template's
            if template.prevhash == current.prevhash:
                if template.is_empty and not current.is_empty:
                    return False  # never replace transactions by an empty block on one tip
                if template.is_empty and current.is_empty:
                    return False
                new_tip = False
            elif (
                template.height > current.height
                or template.source == current.source
                or not self._is_up(current.source)
            ):
                new_tip = True
            else:
                log.debug(
                    "template from %s at height %d ignored: current tip %s at %d from %s",
                    template.source, template.height, current.prevhash_hex, current.height,
                    current.source,
                )
                return False
        else:
            new_tip = True
        self._latest = template
        self._latest_seq = seq
        if new_tip:
            self.tip_changes += 1
            log.info(
                "new tip %s height %d from %s%s", template.prevhash_hex, template.height,
                template.source, " (empty first)" if template.is_empty else "",
            )
        if self._metrics is not None:
            self._metrics.tip_height.set(template.height - 1)
        for callback in self._subscribers:
            try:
                callback(template, new_tip)
            except Exception:
                # A subscriber's bug must not stop the others from getting work.
                log.exception("template subscriber %r failed", callback)
        return True

    def _export_template_age(self) -> None:
        latest = self._latest
        if latest is not None and self._metrics is not None:
            self._metrics.template_age.set(max(0.0, time.time() - latest.received_at))

    # -- blocks ---------------------------------------------------------------------------------

    async def _submit_one(
        self, node: _Node, block_hex: str, hash_hex: str, accepted: asyncio.Event
    ) -> str | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.submit_deadline_s
        backoff = Backoff(initial_s=0.05, cap_s=2.0)
        while True:
            try:
                try:
                    result = await node.client.submitblock(block_hex)
                except NodeRpcError as e:
                    if e.code != RPC_IN_WARMUP:
                        raise
                    # A restarting bitcoind answers everything with "warming up": transient.
                    raise NodeUnavailable(f"node {node.name}: warming up ({e.message})") from None
            except NodeRpcError as e:
                self._count_submit(node, "rejected")
                log.error("submitblock to %s: RPC error %d %s", node.name, e.code, e.message)
                return f"rpc-error {e.code}: {e.message}"
            except NodeUnavailable as e:
                self._mark_down(node, e)
                delay = backoff.next_delay()
                if accepted.is_set() or loop.time() + delay >= end:
                    self._count_submit(node, "error")
                    log.error("submitblock to %s failed: %s", node.name, e)
                    return f"error: {e}"
                log.warning("submitblock to %s failed (%s); retrying in %.2f s",
                            node.name, e, delay)
                # Retry early when another node accepted (one last attempt, then give up) or
                # when this node answers anything again: a block found while it was away must
                # reach it before its miners' next blocks do.
                await _first_of((accepted, node.answered), delay)
                continue
            if result is None:
                accepted.set()
                self._count_submit(node, "accepted")
                log.info("submitblock to %s: accepted", node.name)
                # Our block is that node's tip now: fresh work on it without waiting for ZMQ
                # (which may still be reconnecting after the node's restart) or the poller.
                self._on_tip(node, hash_hex)
            else:
                # BIP22: "duplicate" = the node has it already; "inconclusive" = valid but not on
                # its best chain (a competing block won the height). Neither is a refusal.
                label = {"duplicate": "duplicate", "inconclusive": "stale"}.get(result, "rejected")
                self._count_submit(node, label)
                log.warning("submitblock to %s: %s", node.name, result)
            return result

    def _count_submit(self, node: _Node, result: str) -> None:
        if self._metrics is not None:
            self._metrics.block_submits.labels(node=node.name, result=result).inc()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A loop, or a tip fetch / failover, in run()'s TaskGroup; dropped once stopping."""
        tg = self._tg
        if self._stopping or tg is None:
            coro.close()
            return
        try:
            tg.create_task(self._contained(coro, name), name=name)
        except RuntimeError:  # the TaskGroup is shutting down (run() was cancelled)
            coro.close()

    @staticmethod
    async def _contained(coro: Coroutine[Any, Any, None], name: str) -> None:
        # One loop's bug must not take the others (and the NodeSet) down with it: say so.
        try:
            await coro
        except Exception:
            log.error("node task %s died", name, exc_info=True)


async def _first_of(events: Sequence[asyncio.Event], timeout_s: float) -> None:
    """Return when any of `events` is set, or after `timeout_s`."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _consume_exception(task: asyncio.Task[Any]) -> None:
    # The empty-first header request may fail after it stopped mattering (the full template won);
    # the failure is reported by the GBT path if the node is really down.
    if not task.cancelled():
        task.exception()
