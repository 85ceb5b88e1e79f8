"""Child process of the crash test: writes shares through a real Ledger until killed.

Usage: python -m tests.ledger.crash_child LEDGER_URL STATE_DIR RATE_PER_S

Shares carry job_id = sequence number and time = wall clock when recorded. Every 100 ms a found
block is recorded and, once `record_block` has returned, its hash is printed ("BLOCK <hash>") and
flushed: the parent kills this process with SIGKILL at some point and then checks the store.
"""

from __future__ import annotations

import asyncio
import sys
import time

from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import AcceptedShare
from tests.ledger.helpers import block


async def main(url: str, state_dir: str, rate: float) -> None:
    ledger = Ledger(LedgerConfig(url=url, state_dir=state_dir, flush_interval_ms=100,
                                 block_write_timeout_s=1.0))
    await ledger.start()
    print("READY", flush=True)
    seq = 0
    n_block = 0
    started = time.monotonic()
    next_block = started + 0.1
    while True:
        now = time.time()
        due = int((time.monotonic() - started) * rate)
        while seq < due:
            ledger.record_share(AcceptedShare(worker="w.rig", account="acct", difficulty=1.0,
                                              job_id=str(seq), height=1, time=now,
                                              instance_id=1))
            seq += 1
        if time.monotonic() >= next_block:
            n_block += 1
            b = block(n_block, t=now)
            await ledger.record_block(b)
            print(f"BLOCK {b.hash_hex}", flush=True)
            next_block += 0.1
        await asyncio.sleep(0.002)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
