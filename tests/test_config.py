"""Config: defaults, overrides, credentials, errors that name key and file, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.bitcoin.address import Network
from poold.config import OPTIONS, config_from_dict, load_config, reload_diff, render_example
from poold.errors import ConfigError

MINIMAL = """
[pool]
network = "regtest"
[[nodes]]
rpc_url = "http://127.0.0.1:18443"
rpc_user = "u"
rpc_password = "p"
[stratum]
listen = "127.0.0.1:3333"
start_difficulty = 0.001
min_difficulty = 0.00001
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "poold.toml"
    p.write_text(text)
    return p


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    assert cfg.pool.network is Network.REGTEST
    assert cfg.stratum.listen == ("127.0.0.1", 3333)
    assert cfg.stratum.version_mask == 0x1FFFE000
    assert cfg.stratum.start_difficulty == 0.001
    assert cfg.nodes[0].name == "node0"
    assert cfg.api.listen == ("127.0.0.1", 9332)
    assert cfg.ledger_url.endswith("/var/lib/poold/ledger.sqlite3")


def test_issue_example_config_loads(tmp_path: Path) -> None:
    text = MINIMAL.replace('network = "regtest"', 'network = "regtest"\npayout = "solo"\n'
                           'coinbase_tag = "/poold/"\ninstance_id = 1')
    text += 'max_difficulty = 1e15\nshare_interval_s = 10\nversion_mask = "1fffe000"\n'
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.stratum.max_difficulty == 1e15
    assert cfg.pool.instance_id == 1


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        (("[stratum]", "[stratum]\nlisten_port = 1"), "stratum.listen_port"),
        (('listen = "127.0.0.1:3333"', 'listen = "nowhere"'), "stratum.listen"),
        (('network = "regtest"', 'network = "mainnet"'), "pool.network"),
        (("start_difficulty = 0.001", "start_difficulty = 1e20"), "stratum.start_difficulty"),
        (("start_difficulty = 0.001", 'start_difficulty = "x"'), "stratum.start_difficulty"),
        (('rpc_url = "http://127.0.0.1:18443"', 'rpc_url = "127.0.0.1"'), "nodes[0].rpc_url"),
        (('rpc_password = "p"', ""), "nodes[0].rpc_user"),
        (("[pool]", "[pool]\npayout = \"reserve\""), "pool.reserve_address"),
        (("[pool]", "[pool]\nreserve_address = \"bc1qnotanaddress\""), "pool.reserve_address"),
        (("[pool]", "[pool]\ninstance_id = 300"), "pool.instance_id"),
        (("[stratum]", "[stratum]\nversion_mask = \"ffffffff\""), "stratum.version_mask"),
        (("[pool]", "[pools]\n[pool]"), "pools"),
    ],
)
def test_errors_name_the_key_and_file(tmp_path: Path, patch: tuple[str, str], key: str) -> None:
    path = write(tmp_path, MINIMAL.replace(*patch, 1))
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.key == key
    assert str(path) in str(exc.value)


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[pool\n")
    with pytest.raises(ConfigError, match=r"poold\.toml"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", env={})


def test_env_overrides_and_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, env={"POOLD_NODES_0_RPC_PASSWORD": "secret",
                                 "POOLD_STRATUM_SHARE_INTERVAL_S": "5"})
    assert cfg.nodes[0].rpc_password == "secret"
    assert cfg.stratum.share_interval_s == 5.0
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={"POOLD_STRATUM_MAX_PER_IP": "many"})
    assert exc.value.key == "stratum.max_per_ip"
    assert exc.value.source == "env:POOLD_STRATUM_MAX_PER_IP"


def test_systemd_credentials_for_secrets(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "nodes.0.rpc_password").write_text("from-credential\n")
    (creds / "api.write_tokens").write_text("tok1,tok2")
    cfg = load_config(write(tmp_path, MINIMAL), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.nodes[0].rpc_password == "from-credential"
    assert cfg.api.write_tokens == ("tok1", "tok2")


def test_secrets_not_in_repr(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={"POOLD_API_WRITE_TOKENS": "hunter2"})
    assert "hunter2" not in repr(cfg)
    assert "rpc_password" not in repr(cfg.nodes[0])


def test_example_is_complete_and_loads(tmp_path: Path) -> None:
    text = render_example()
    for opt in OPTIONS:
        assert f"\n{opt.key} = " in text, opt.dotted
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.pool.network is Network.MAIN


def test_deploy_example_matches_generator() -> None:
    example = Path(__file__).parent.parent / "deploy" / "poold.toml.example"
    assert example.read_text() == render_example(), (
        "deploy/poold.toml.example is stale: run `poold config example > deploy/poold.toml.example`"
    )


def test_reload_diff_splits_safe_and_unsafe(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, MINIMAL), env={})
    b = config_from_dict(
        {"pool": {"network": "regtest"},
         "nodes": [{"rpc_url": "http://127.0.0.1:18443", "rpc_user": "u", "rpc_password": "p"}],
         "stratum": {"listen": "127.0.0.1:4444", "start_difficulty": 0.001,
                     "min_difficulty": 0.0001}},
        env={})
    applied, ignored = reload_diff(a, b)
    assert applied == ["stratum.min_difficulty"]
    assert ignored == ["stratum.listen"]


def test_ledger_tuning_reaches_the_ledger(tmp_path: Path) -> None:
    from poold.ledger.config import LedgerConfig

    text = MINIMAL + (
        "[ledger]\nshare_retention_s = 604800\nbatch_max_shares = 5000\n"
        "block_write_timeout_s = 2.5\nsplit_refresh_s = 10\nsplit_max_output_bytes = 430\n"
    )
    lc = LedgerConfig.from_config(load_config(write(tmp_path, text), env={}))
    assert (lc.share_retention_s, lc.batch_max_shares, lc.block_write_timeout_s,
            lc.split_refresh_s, lc.split_max_output_bytes) == (604800, 5000, 2.5, 10, 430)
    # A retention shorter than the PPLNS window and maturity could need names the key.
    short = load_config(write(tmp_path, MINIMAL + "[ledger]\nshare_retention_s = 3600\n"), env={})
    with pytest.raises(ConfigError, match=r"ledger\.share_retention_s"):
        LedgerConfig.from_config(short)


def test_accounts_map_names_to_addresses(tmp_path: Path) -> None:
    from poold.bitcoin.address import p2wpkh_address

    alice, bob, fee = (p2wpkh_address(bytes([i]) * 20, Network.REGTEST) for i in (1, 2, 3))
    pooled = MINIMAL.replace('network = "regtest"',
                             f'network = "regtest"\npayout = "split"\nfee_address = "{fee}"\n'
                             f'accounts_file = "{tmp_path / "accounts.txt"}"')
    (tmp_path / "accounts.txt").write_text(f"# name address\nbob {bob}\n\n")
    cfg = load_config(write(tmp_path, pooled + f'\n[accounts]\nalice = "{alice}"\n'), env={})
    assert dict(cfg.accounts) == {"alice": alice, "bob": bob}
    # Errors name the key (and the line of the file).
    mainnet = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, pooled + f'\n[accounts]\nalice = "{mainnet}"\n'), env={})
    assert exc.value.key == "accounts" and "alice" in str(exc.value)
    (tmp_path / "accounts.txt").write_text(f"bob {bob}\ncarol\n")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, pooled), env={})
    assert exc.value.key == "pool.accounts_file" and "line 2" in str(exc.value)
    # The fee address is the safe coinbase of split mode and the wallet of pplns: required.
    for payout in ("split", "pplns"):
        text = MINIMAL.replace('network = "regtest"',
                               f'network = "regtest"\npayout = "{payout}"')
        with pytest.raises(ConfigError) as exc:
            load_config(write(tmp_path, text), env={})
        assert exc.value.key == "pool.fee_address"
    # A changed map is applied on SIGHUP.
    (tmp_path / "accounts.txt").write_text(f"bob {bob}\n")
    a = load_config(write(tmp_path, pooled), env={})
    (tmp_path / "accounts.txt").write_text(f"bob {alice}\n")
    b = load_config(write(tmp_path, pooled), env={})
    assert "accounts" in reload_diff(a, b)[0]


BROKEN_FIVE_WAYS = """
[pool]
network = "regtest"
instance_id = 300
payout = "reserve"
[[nodes]]
rpc_url = "127.0.0.1:18443"
rpc_user = "u"
rpc_password = "p"
[stratum]
listen = "127.0.0.1:3333"
start_difficulty = "x"
max_per_ip = "many"
colour = "blue"
"""


def test_every_error_is_reported_in_one_run(tmp_path: Path) -> None:
    from poold.config import ConfigErrors

    path = write(tmp_path, BROKEN_FIVE_WAYS)
    with pytest.raises(ConfigErrors) as exc:
        load_config(path, env={})
    keys = [e.key for e in exc.value.errors]
    assert sorted(keys) == sorted([
        "pool.instance_id", "nodes[0].rpc_url", "stratum.start_difficulty",
        "stratum.max_per_ip", "stratum.colour", "pool.reserve_address"]), keys
    assert all(e.source == str(path) for e in exc.value.errors)
    # Still a ConfigError naming the first key and the file, for callers that catch one.
    assert isinstance(exc.value, ConfigError) and str(path) in str(exc.value)
    # A bad value is not checked again against its neighbours (start_difficulty was taken at
    # its default, so "must lie within [min, max]" would only repeat the error).
    assert keys.count("stratum.start_difficulty") == 1


def test_check_config_lists_every_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from poold.cli import main

    path = write(tmp_path, BROKEN_FIVE_WAYS)
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if line.startswith("poold: config error: ")]) == 6, err
    assert err[-1] == f"poold: 6 errors in {path}"
    assert main(["check-config", "-c", str(write(tmp_path, MINIMAL))]) == 0
