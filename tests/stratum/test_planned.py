"""Split payouts: the ledger plans each template's coinbase asynchronously before fan-out; a slow
plan for an old template never overrides a newer one, and a plan that fails or hangs never keeps
the miners on old work (the safe coinbase pays the fee address)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from poold.bitcoin.template import Template
from poold.coinbase_planning import CoinbasePlanning
from poold.metrics import Metrics
from poold.stratum.server import ServerSettings, StratumServer
from poold.work.jobs import JobBook, PlannedPayout
from tests.work.builders import regtest_template, rig, script

FEE = bytes.fromhex("0014") + bytes(range(100, 120))


async def wait_for_template(r: object, template: Template) -> None:
    book = r.engine.book  # type: ignore[attr-defined]
    for _ in range(1000):
        if book.template is template:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"template {template.curtime} never reached the job book")


def setup(planner: object, **kw: object) -> tuple[object, CoinbasePlanning, Metrics]:
    r = rig()
    payouts = PlannedPayout()
    r.engine.book = JobBook(payouts, tag=b"/t/")
    server = StratumServer(r.ctx, ServerSettings())
    metrics = Metrics()
    planning = CoinbasePlanning(server, payouts, planner, FEE,  # type: ignore[arg-type]
                                metrics=metrics, **kw)  # type: ignore[arg-type]
    return r, planning, metrics


async def test_planned_payouts_fan_out_in_template_order() -> None:
    gates: dict[int, asyncio.Event] = {}

    async def planner(template: Template) -> Sequence[tuple[bytes, int]]:
        gate = gates.setdefault(template.curtime, asyncio.Event())
        await gate.wait()
        return [(script(), template.coinbase_value)]

    r, planning, _ = setup(planner)
    assert not planning.server.has_work.is_set()  # the daemon listens once this is set
    old = regtest_template(curtime=1000)
    new = regtest_template(curtime=2000)
    planning.on_template(old, True)
    planning.on_template(new, False)
    await asyncio.sleep(0)
    gates[2000].set()
    await wait_for_template(r, new)
    assert planning.server.has_work.is_set()
    gates[1000].set()
    await asyncio.sleep(0.05)
    assert r.engine.book.template is new  # type: ignore[attr-defined]
    job = r.engine.book.job_for(b"", r.clock.now)  # type: ignore[attr-defined]
    assert job.work.outputs[0].script_pubkey == script()
    assert job.work.outputs[0].value == new.coinbase_value
    assert planning.healthy


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_a_failed_plan_sends_the_safe_coinbase_at_once(
        failure: str, caplog: pytest.LogCaptureFixture) -> None:
    """The split plan raising (e.g. an account without an address) or hanging: the new template
    still goes out, paying the whole reward to the fee address; counted, logged, not ready."""
    fail = [True]

    async def planner(template: Template) -> Sequence[tuple[bytes, int]]:
        if fail[0]:
            if failure == "hangs":
                await asyncio.Event().wait()
            raise ValueError("account 'bob' has no payout address")
        return [(script(), template.coinbase_value)]

    head = (b"\x6a\x2d" + bytes(45), 0)  # the ledger's chain commitment (docs/AUDIT.md)
    r, planning, metrics = setup(planner, deadline_s=0.2, commitment=lambda: head)
    first = regtest_template(curtime=1000)
    planning.on_template(first, True)
    await wait_for_template(r, first)
    job = r.engine.book.job_for(b"", r.clock.now)  # type: ignore[attr-defined]
    assert [(o.script_pubkey, o.value) for o in job.work.outputs if o.value] == [
        (FEE, first.coinbase_value)]
    assert any(o.script_pubkey == head[0] for o in job.work.outputs)
    assert not planning.healthy
    reason = "timeout" if failure == "hangs" else "error"
    assert metrics.payout_plan_fallbacks.labels(reason)._value.get() == 1
    assert "pays the whole coinbase to pool.fee_address" in caplog.text
    assert ("no plan within" if failure == "hangs" else "bob") in caplog.text
    # Planning works again: the next template is split, readiness comes back.
    fail[0] = False
    second = regtest_template(curtime=2000)
    planning.on_template(second, True)
    await wait_for_template(r, second)
    job = r.engine.book.job_for(b"", r.clock.now)  # type: ignore[attr-defined]
    assert job.work.outputs[0].script_pubkey == script()
    assert planning.healthy
    await planning.aclose()
