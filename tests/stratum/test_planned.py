"""Split payouts: the ledger plans each template's coinbase asynchronously before fan-out; a slow
plan for an old template never overrides a newer one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from poold.daemon import _planned
from poold.node.templates import Template
from poold.stratum.server import ServerSettings, StratumServer
from poold.work.jobs import JobBook, PlannedPayout
from tests.work.builders import regtest_template, rig, script


async def test_planned_payouts_fan_out_in_template_order() -> None:
    r = rig()
    payouts = PlannedPayout()
    r.engine.book = JobBook(payouts, tag=b"/t/")
    server = StratumServer(r.ctx, ServerSettings())
    gates: dict[int, asyncio.Event] = {}

    async def planner(template: Template) -> Sequence[tuple[bytes, int]]:
        gate = gates.setdefault(template.curtime, asyncio.Event())
        await gate.wait()
        return [(script(), template.coinbase_value)]

    callback = _planned(server, payouts, planner)
    old = regtest_template(curtime=1000)
    new = regtest_template(curtime=2000)
    callback(old, True)
    callback(new, False)
    await asyncio.sleep(0)
    gates[2000].set()
    for _ in range(100):
        if r.engine.book.template is new:
            break
        await asyncio.sleep(0.01)
    assert r.engine.book.template is new
    gates[1000].set()
    await asyncio.sleep(0.05)
    assert r.engine.book.template is new  # the late plan of the old template was dropped
    job = r.engine.book.job_for(b"", r.clock.now)
    assert job.work.outputs[0].script_pubkey == script()
    assert job.work.outputs[0].value == new.coinbase_value
