"""In-process cost of one mining.submit through poold's code: bytes in -> reply bytes out.

    python -m tests.bench.submit_path [--n 200000]

Feeds submit lines (random nonces, unique extranonce2, one line per read) to a real
`Connection.data_received` with a null transport: framing, JSON parse, dispatch, Submit parsing,
job lookup, ntime check, the native share check, the reply bytes and the counters. Sockets and the
event loop are not included (see tests.bench.stratum_throughput). The template has a mainnet nBits,
so the share path is measured (answer: 23 low difficulty), never block submission. Baseline in the
same run: parse the line and build a constant reply (what a bare responder does per message).

Last line exactly:
    submit_path us_per_submit=<x> us_per_submit_4_per_read=<y> baseline_us=<z> json=<backend>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from poold.stratum import codec
from poold.stratum.server import Connection, ServerSettings, StratumServer
from poold.stratum.session import SessionSettings
from tests.work.builders import ADDRESS, regtest_template, rig


class NullTransport(asyncio.Transport):
    def write(self, data: Any) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    n = p.parse_args().n
    r = rig(regtest_template(hard=True), start=1.0, settings=SessionSettings(invalid_limit=0))
    server = StratumServer(r.ctx, ServerSettings())
    conn = Connection(server, time.time())
    conn.connection_made(NullTransport())
    conn.data_received(
        b'{"id":1,"method":"mining.subscribe","params":["bench"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["%s","x"]}\n' % ADDRESS.encode()
    )
    job = next(reversed(r.book.jobs))
    template = r.book.template
    assert template is not None
    lines = [
        b'{"id":%d,"method":"mining.submit","params":["%s","%s","%016x","%08x","%s"]}\n'
        % (i, ADDRESS.encode(), job.encode(), i, template.curtime, os.urandom(4).hex().encode())
        for i in range(n)
    ]

    t0 = time.process_time()
    for line in lines:
        codec.loads(line[:-1])
        b'{"id":' + b"1" + codec.RESULT_FALSE_TAIL
    baseline = (time.process_time() - t0) / n

    t0 = time.process_time()
    for line in lines:
        conn.data_received(line)
    one = (time.process_time() - t0) / n
    rejected = sum(r.ctx.counters.rejected)
    assert rejected == n, rejected

    batches = [b"".join(lines[i : i + 4]) for i in range(0, n, 4)]
    r.book.jobs[job].work.seen.clear()
    t0 = time.process_time()
    for batch in batches:
        conn.data_received(batch)
    four = (time.process_time() - t0) / n

    print(f"submits: {n}, json backend: {codec.JSON_BACKEND}; all answered 23 (low difficulty)")
    print(f"  baseline (parse + constant reply): {baseline * 1e6:.2f} us")
    print(f"  poold, one submit per read:        {one * 1e6:.2f} us  ({one / baseline:.1f}x)")
    print(f"  poold, four submits per read:      {four * 1e6:.2f} us  ({four / baseline:.1f}x)")
    print(
        f"submit_path us_per_submit={one * 1e6:.2f} us_per_submit_4_per_read={four * 1e6:.2f} "
        f"baseline_us={baseline * 1e6:.2f} json={codec.JSON_BACKEND}"
    )


if __name__ == "__main__":
    main()
