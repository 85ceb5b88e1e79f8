"""`poold check-config` warns when the pool fee can never be paid (below dust at the current
subsidy), with the subsidy estimated from the consensus halving schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.cli import main
from poold.ledger.config import LedgerConfig, estimated_subsidy_sat, fee_warnings

MAIN = """
[pool]
network = "main"
payout = "{payout}"
fee_address = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
fee_percent = {fee}
[ledger]
dust_sat = 100000000
[[nodes]]
rpc_url = "http://127.0.0.1:8332"
rpc_user = "u"
rpc_password = "p"
"""


def test_subsidy_follows_the_halvings() -> None:
    assert estimated_subsidy_sat("main", 1_713_571_767.0) == 312_500_000  # block 840,000
    assert estimated_subsidy_sat("main", 1_713_571_767.0 + 210_000 * 600) == 156_250_000
    assert estimated_subsidy_sat("regtest", 2e9) == 5_000_000_000


def test_split_fee_below_dust_is_named() -> None:
    cfg = LedgerConfig(payout="split", network="main", fee_address="x", fee_percent=1.5,
                       dust_sat=100_000_000)
    [w] = fee_warnings(cfg, 1_713_571_767.0)
    assert "pool.fee_percent" in w and "4687500 sat" in w and "32%" in w
    assert fee_warnings(LedgerConfig(payout="split", network="main", fee_address="x",
                                     fee_percent=40.0, dust_sat=100_000_000), 1.8e9) == []
    assert fee_warnings(LedgerConfig(payout="pplns", network="main", fee_address="x",
                                     fee_percent=1.5, dust_sat=100_000_000), 1.8e9) == []


@pytest.mark.parametrize(("payout", "fee", "warned"), [("split", 1.5, True),
                                                        ("split", 50.0, False),
                                                        ("pplns", 1.5, False)])
def test_check_config_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str], payout: str,
                            fee: float, warned: bool) -> None:
    path = tmp_path / "poold.toml"
    path.write_text(MAIN.format(payout=payout, fee=fee))
    assert main(["check-config", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("warning: pool.fee_percent" in err) is warned, err
