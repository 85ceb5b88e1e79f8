"""NodeSet over real HTTP and ZMQ against local stand-in nodes (tests/node/fakenode.py).

The same behaviours against the devnet (Bitcoin Core's consensus) are in test_devnet.py; these
drive the timing and failure paths the devnet cannot be told to produce (slow GBT, a node that
lags, a dropped ZMQ sequence number).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from poold.bitcoin.template import Template
from poold.metrics import Metrics
from poold.node.nodes import NodeSet, NodeSpec, TemplateTiming
from poold.node.rpc import NodeCheckError, NodeUnavailable
from tests.node.fakenode import FakeNode, free_port


@dataclass
class Published:
    items: list[tuple[Template, bool, float]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, template: Template, new_tip: bool) -> None:
        self.items.append((template, new_tip, time.perf_counter()))
        self.event.set()

    async def until(self, pred: Callable[[Template, bool], bool], within: float = 5.0) -> Template:
        async with asyncio.timeout(within):
            while True:
                for t, new_tip, _ in self.items:
                    if pred(t, new_tip):
                        return t
                self.event.clear()
                await self.event.wait()


def spec(node: FakeNode, name: str, *, zmq: bool = True, cookie: bool = False) -> NodeSpec:
    if cookie:
        return NodeSpec(name, node.rpc_url, rpc_cookie_file=node.cookie_file,
                        zmq_hashblock=node.zmq_url if zmq else None, timeout_s=2.0)
    return NodeSpec(name, node.rpc_url, node.user, node.password,
                    zmq_hashblock=node.zmq_url if zmq else None, timeout_s=2.0)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with FakeNode(tmp_path / "a") as n:
        yield n


def make_set(*specs: NodeSpec, **kw: object) -> NodeSet:
    timing = kw.pop("timing", TemplateTiming(poll_interval_s=0.05, refresh_s=30.0,
                                             empty_first_ms=5.0))
    return NodeSet(specs, chain="regtest", templates=timing,  # type: ignore[arg-type]
                   health_backoff_cap_s=0.2, safety_poll_s=60.0, **kw)  # type: ignore[arg-type]


async def wait_zmq(ns: NodeSet, name: str) -> None:
    listener = ns.listener(name)
    assert listener is not None
    await eventually(lambda: listener.connected)
    # A PUB socket drops messages until the subscription has propagated.
    await asyncio.sleep(0.1)


async def eventually(pred: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition on state that has no event to wait on."""
    async with asyncio.timeout(within):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def tip_is(h: str) -> Callable[[Template, bool], bool]:
    return lambda t, _new: t.prevhash_hex == h and not t.is_empty


async def test_first_template_at_start(fake: FakeNode) -> None:
    metrics = Metrics()
    async with make_set(spec(fake, "a"), metrics=metrics) as ns:
        assert ns.latest is not None and ns.latest.prevhash_hex == fake.tip
        assert ns.latest.height == fake.height + 1 and len(ns.latest.transactions) == 3
        assert ns.healthy()
        assert metrics.registry.get_sample_value("poold_node_up", {"node": "a"}) == 1
        assert metrics.registry.get_sample_value("poold_tip_height") == fake.height
        assert metrics.registry.get_sample_value("poold_template_age_seconds") is not None


async def test_new_tip_over_zmq_is_fast_and_clean(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a")) as ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        calls_before = fake.calls.count("getbestblockhash")
        (h,) = await fake.mine()
        t = await got.until(tip_is(h), within=2.0)
        sent = fake.sent_at[h]
        first = got.items[0]
        assert first[1] is True  # the first template on a new tip has clean_jobs
        assert t.height == fake.height + 1
        # ZMQ, not polling: no getbestblockhash was needed (the poller sleeps for 60 s).
        assert fake.calls.count("getbestblockhash") == calls_before
        assert got.items[-1][2] - sent < 0.5


async def test_slow_template_publishes_an_empty_block_first(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a")) as ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        fake.gbt_delay_s = 0.3
        (h,) = await fake.mine()
        await got.until(tip_is(h))
        (empty, new1, t1), (full, new2, t2) = got.items
        assert empty.is_empty and new1 and empty.prevhash_hex == h
        assert empty.height == fake.height + 1 and empty.transactions == ()
        assert empty.coinbase_value == (50 * 100_000_000) >> (empty.height // 150)
        assert empty.bits == full.bits and empty.mintime == full.mintime
        assert not full.is_empty and not new2  # same tip: the empty job stays valid
        assert t1 - fake.sent_at[h] < 0.25 < t2 - fake.sent_at[h]


async def test_without_zmq_it_polls(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a", zmq=False)) as ns:
        got = Published()
        ns.subscribe(got)
        (h,) = await fake.mine()
        await got.until(tip_is(h), within=2.0)
        assert ns.status()[0].zmq == "off"


async def test_zmq_gap_triggers_a_resync(fake: FakeNode) -> None:
    metrics = Metrics()
    async with make_set(spec(fake, "a"), metrics=metrics) as ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        (h0,) = await fake.mine()  # the first message sets the sequence baseline
        await got.until(tip_is(h0), within=2.0)
        polls = fake.calls.count("getbestblockhash")
        # The publisher skips a sequence number: a message was lost on the way.
        (h,) = await fake.mine(skip_seq=1)
        await got.until(tip_is(h), within=2.0)
        assert metrics.registry.get_sample_value("poold_zmq_gaps_total", {"node": "a"}) == 1
        assert fake.calls.count("getbestblockhash") > polls  # resynchronised over RPC
        listener = ns.listener("a")
        assert listener is not None and listener.gap_pending
        # Next in-sequence message: trusted again.
        (h2,) = await fake.mine()
        await got.until(tip_is(h2), within=2.0)
        assert not listener.gap_pending and ns.status()[0].zmq == "ok"


async def test_dropped_zmq_message_is_caught_by_the_next_one(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a")) as ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        listener = ns.listener("a")
        assert listener is not None
        (h0,) = await fake.mine()
        await got.until(tip_is(h0), within=2.0)
        listener.drop_next(1)
        (h1,) = await fake.mine()
        await asyncio.sleep(0.2)
        assert not any(t.prevhash_hex == h1 for t, _, _ in got.items)  # lost; poller sleeps
        (h2,) = await fake.mine()
        await got.until(tip_is(h2), within=2.0)
        assert listener.gaps == 1


async def test_node_restart_is_survived(fake: FakeNode) -> None:
    metrics = Metrics()
    async with make_set(spec(fake, "a", cookie=True), metrics=metrics) as ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        await fake.stop()
        await eventually(lambda: not ns.healthy())
        assert metrics.registry.get_sample_value("poold_node_up", {"node": "a"}) == 0
        # Mined while we could not see it (its ZMQ publisher is down too).
        fake.hashes.append("ab" * 32)
        await fake.start()  # same ports, new cookie
        await got.until(tip_is("ab" * 32), within=5.0)
        await wait_zmq(ns, "a")
        (h,) = await fake.mine()
        await got.until(tip_is(h), within=2.0)
        assert ns.healthy()
        assert metrics.registry.get_sample_value("poold_node_up", {"node": "a"}) == 1


async def test_two_nodes_one_killed(tmp_path: Path) -> None:
    async with FakeNode(tmp_path / "a") as a, FakeNode(tmp_path / "b") as b:
        b.hashes = list(a.hashes)
        async with make_set(spec(a, "a"), spec(b, "b")) as ns:
            got = Published()
            ns.subscribe(got)
            await wait_zmq(ns, "a")
            await wait_zmq(ns, "b")
            assert ns.latest is not None and ns.latest.source == "a"
            await a.stop()
            # b learns of a block (e.g. from the network): templates now come from b.
            (h,) = await b.mine()
            t = await got.until(tip_is(h), within=3.0)
            assert t.source == "b"
            results = await ns.submit_block(b"\xbe\xef")
            assert results["b"] is None and b.submitted == ["beef"]
            assert results["a"] is not None and results["a"].startswith("error")
            assert [s.up for s in ns.status()] == [False, True]


async def test_lagging_node_does_not_pull_work_back(tmp_path: Path) -> None:
    async with FakeNode(tmp_path / "a") as a, FakeNode(tmp_path / "b") as b:
        b.hashes = list(a.hashes)
        async with make_set(spec(a, "a"), spec(b, "b")) as ns:
            got = Published()
            ns.subscribe(got)
            await wait_zmq(ns, "a")
            (h,) = await a.mine()
            await got.until(tip_is(h))
            assert ns.latest is not None
            height = ns.latest.height
            await ns.refresh()  # a is preferred: same tip
            (h_b,) = await b.mine()  # b is on a competing block at the same height
            await asyncio.sleep(0.3)
            assert ns.latest.prevhash_hex == h and ns.latest.height == height
            assert all(t.prevhash_hex != h_b for t, _, _ in got.items)


async def test_submit_block_total_failure_returns_errors(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a"), submit_deadline_s=0.5) as ns:
        await fake.stop()
        started = time.monotonic()
        results = await ns.submit_block(b"\x00" * 80)
        elapsed = time.monotonic() - started
        assert set(results) == {"a"} and results["a"] is not None
        assert "error" in results["a"]
        assert 0.2 < elapsed < 3.0
        await fake.start()


async def test_submit_block_retries_until_the_node_is_back(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a"), submit_deadline_s=10.0) as ns:
        await fake.stop()
        loop = asyncio.get_running_loop()
        loop.call_later(0.4, lambda: asyncio.ensure_future(fake.start()))
        results = await ns.submit_block(b"\x01" * 80)
        assert results == {"a": None} and fake.submitted == ["01" * 80]


async def test_wrong_chain_is_a_startup_error(fake: FakeNode) -> None:
    ns = NodeSet([spec(fake, "a")], chain="main")
    with pytest.raises(NodeCheckError, match="configured for 'main'"):
        await ns.start()


async def test_no_reachable_node_is_a_startup_error() -> None:
    ns = NodeSet([NodeSpec("a", f"http://127.0.0.1:{free_port()}/", "u", "p", timeout_s=0.5)],
                 chain="regtest")
    with pytest.raises(NodeUnavailable, match="no node"):
        await ns.start()


async def test_unreachable_second_node_joins_later(tmp_path: Path) -> None:
    async with FakeNode(tmp_path / "a", zmq_enabled=False) as a:
        b = FakeNode(tmp_path / "b", zmq_enabled=False)
        async with make_set(spec(a, "a", zmq=False), spec(b, "b", zmq=False)) as ns:
            assert [s.up for s in ns.status()] == [True, False]
            await b.start()
            try:
                await eventually(lambda: ns.status()[1].up)
            finally:
                await b.stop()


async def test_from_config_uses_nodes_templates_and_network(fake: FakeNode, tmp_path: Path) -> None:
    from poold.config import load_config

    path = tmp_path / "poold.toml"
    path.write_text(f"""
[pool]
network = "regtest"
[[nodes]]
name = "core"
rpc_url = "{fake.rpc_url}"
rpc_cookie_file = "{fake.cookie_file}"
zmq_hashblock = "{fake.zmq_url}"
[templates]
poll_interval_s = 0.1
empty_first_ms = 2
[stratum]
listen = "127.0.0.1:3333"
start_difficulty = 0.001
min_difficulty = 0.00001
""")
    cfg = load_config(path, env={})
    ns = NodeSet.from_config(cfg)
    assert (ns.chain, ns.poll_interval_s, ns.empty_first_ms) == ("regtest", 0.1, 2.0)
    async with ns:
        assert ns.latest is not None and ns.latest.source == "core"
        assert ns.status()[0].up


async def test_failover_to_a_node_on_another_tip_at_the_same_height(tmp_path: Path) -> None:
    async with FakeNode(tmp_path / "a") as a, FakeNode(tmp_path / "b") as b:
        # Same height, different tips (say b saw the other side of a race).
        async with make_set(spec(a, "a"), spec(b, "b")) as ns:
            got = Published()
            ns.subscribe(got)
            await wait_zmq(ns, "a")
            assert ns.latest is not None and ns.latest.source == "a"
            await a.stop()  # ZMQ disconnect -> poll fails -> a down -> b's template at once
            t = await got.until(lambda t, new: t.source == "b" and new, within=3.0)
            assert t.prevhash_hex == b.tip and t.height == ns.latest.height


async def test_silent_zmq_falls_back_to_polling(fake: FakeNode) -> None:
    metrics = Metrics()
    ns = NodeSet([spec(fake, "a")], chain="regtest",
                 templates=TemplateTiming(poll_interval_s=0.05), zmq_silence_s=0.3,
                 safety_poll_s=60.0, metrics=metrics)
    async with ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        listener = ns.listener("a")
        assert listener is not None
        await eventually(lambda: ns.status()[0].zmq == "silent", within=2.0)
        await eventually(lambda: metrics.registry.get_sample_value(
            "poold_zmq_gaps_total", {"node": "a"}) == 1)
        listener.drop_next(1)  # the message is lost, and nothing says so: only polling sees it
        (h,) = await fake.mine()
        await got.until(tip_is(h), within=1.0)


async def test_periodic_refresh_is_not_a_new_tip(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a"), timing=TemplateTiming(refresh_s=0.1)) as ns:
        got = Published()
        ns.subscribe(got)
        await eventually(lambda: len(got.items) >= 2, within=2.0)
        assert all(not new and t.prevhash_hex == fake.tip for t, new, _ in got.items)
        assert got.items[0][0].transactions != got.items[1][0].transactions  # new mempool view


async def test_empty_first_can_be_disabled(fake: FakeNode) -> None:
    async with make_set(spec(fake, "a"), timing=TemplateTiming(empty_first_ms=-1)) as ns:
        got = Published()
        ns.subscribe(got)
        await wait_zmq(ns, "a")
        fake.gbt_delay_s = 0.2
        (h,) = await fake.mine()
        await got.until(tip_is(h))
        assert [(t.is_empty, new) for t, new, _ in got.items] == [(False, True)]
