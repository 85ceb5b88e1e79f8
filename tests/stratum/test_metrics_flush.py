"""Share counters reach Prometheus at the sweep (plain ints on the hot path), with the reject
reason names as labels; the workers gauge, hashrate and sampled check time too."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from poold.metrics import Metrics
from poold.stratum.server import Connection, ServerSettings, StratumServer
from poold.stratum.session import SAMPLE_EVERY
from tests.bench.submit_path import NullTransport
from tests.work.builders import ADDRESS, regtest_template, rig


def test_counters_flush_into_prometheus() -> None:
    r = rig(regtest_template(hard=True), start=1e-12, min_difficulty=1e-13)
    metrics = Metrics(CollectorRegistry())
    server = StratumServer(r.ctx, ServerSettings(), metrics=metrics, clock=r.clock)
    conn = Connection(server, r.clock.now)
    conn.connection_made(NullTransport())
    conn.data_received(
        b'{"id":1,"method":"mining.subscribe","params":["m"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["%s","x"]}\n' % ADDRESS.encode()
    )
    server.sweep(r.clock.now)  # first hashrate sample
    job = next(reversed(r.book.jobs))
    ntime = r.book.jobs[job].work.template.curtime
    lines: list[Any] = []
    for i in range(SAMPLE_EVERY):
        lines.append(
            b'{"id":%d,"method":"mining.submit","params":["%s","%s","%016x","%08x","00000000"]}\n'
            % (i, ADDRESS.encode(), job.encode(), i, ntime)
        )
    lines.append(b'{"id":"x","method":"mining.submit","params":["%s","nope","00","00","00"]}\n'
                 % ADDRESS.encode())
    conn.data_received(b"".join(lines))
    r.clock.now += 2.0
    server.sweep(r.clock.now)
    text = generate_latest(metrics.registry).decode()
    assert f'poold_shares_total{{reason="none",result="accepted"}} {SAMPLE_EVERY}.0' in text
    assert 'poold_shares_total{reason="job_not_found",result="rejected"} 1.0' in text
    assert "poold_stratum_connections 1.0" in text
    assert "poold_workers 1.0" in text
    assert "poold_share_check_seconds_count 1.0" in text
    # 256 shares at difficulty 1e-12 in 2 s
    assert server.hashrate == pytest.approx(SAMPLE_EVERY * 1e-12 * 2**32 / 2.0)
