"""`poold demo` end to end: devnet + `poold run` + CPU miners, blocks verified on the chain."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_finds_blocks_that_pay_its_miners() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "poold", "demo", "--miners", "2", "--blocks", "2"],
        check=False, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    blocks = re.findall(r"BLOCK height (\d+) ([0-9a-f]{64}) is on the devnet's chain", out.stdout)
    assert len(blocks) >= 2, out.stdout
    # Found through the share path at difficulty 1e-4 (target ~2**242), display byte order.
    assert all(int(h, 16) <= 0xFFFF * 2**208 * 10**4 for _, h in blocks)
    assert re.search(r"coinbase pays 50\.0+ BTC to cpu-miner-\d \(bcrt1", out.stdout)
    summary = re.search(r"summary: (\d+) shares accepted, (\d+) rejected", out.stdout)
    assert summary is not None and int(summary.group(1)) > 0, out.stdout
    # The only honest rejection: a share on the old tip that raced the new block's clean job
    # (blocks come seconds apart on regtest). Anything else is a pool or miner bug.
    reasons = re.findall(r"share rejected \(([^)]*)\)", out.stdout)
    assert len(reasons) == int(summary.group(2)), out.stdout
    assert all(r in ("21 Stale job", "21 Job not found") for r in reasons), reasons
