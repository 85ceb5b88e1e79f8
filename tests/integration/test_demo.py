"""`poold demo` end to end: devnet + `poold run` + CPU miners, blocks verified on the chain."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    importlib.util.find_spec("poold.daemon") is None, reason="poold.daemon not available yet"
)
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
    assert re.search(r"summary: \d+ shares accepted, 0 rejected", out.stdout), out.stdout
