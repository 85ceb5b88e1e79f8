"""getblocktemplate parsing and the empty-block template (pure)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.target import bits_to_target
from poold.bitcoin.template import (
    Template,
    TemplateError,
    block_subsidy,
    empty_template_for_tip,
    next_bits_predictable,
    parse_gbt,
)

VECTOR = Path(__file__).parent.parent / "vectors" / "gbt-regtest-bitcoind-v31.json"


@pytest.fixture
def gbt() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(VECTOR.read_text())
    return result


def test_parses_bitcoind_v31_template(gbt: dict[str, Any]) -> None:
    t = parse_gbt(gbt, received_at=123.5, source="core")
    assert t.height == 102
    assert t.prevhash_hex == gbt["previousblockhash"]
    assert t.prevhash == bytes.fromhex(gbt["previousblockhash"])[::-1]
    assert t.version == 0x20000000
    assert t.bits == 0x207FFFFF
    assert t.target == int(gbt["target"], 16) == bits_to_target(t.bits)
    assert (t.curtime, t.mintime) == (gbt["curtime"], gbt["mintime"])
    assert t.coinbase_value == 5_000_004_900
    assert t.witness_commitment_script == bytes.fromhex(gbt["default_witness_commitment"])
    assert not t.is_empty and t.received_at == 123.5 and t.source == "core"
    assert len(t.transactions) == 3
    for tx, raw in zip(t.transactions, gbt["transactions"], strict=True):
        assert tx.data == bytes.fromhex(raw["data"])
        assert hash_to_hex(tx.txid) == raw["txid"]
        assert hash_to_hex(tx.wtxid) == raw["hash"]
        assert (tx.fee, tx.weight) == (raw["fee"], raw["weight"])
    assert t.txids == tuple(tx.txid for tx in t.transactions)
    assert t.fees == 1410 + 1410 + 2080
    # Subsidy at 102 on regtest (halving every 150) + the fees.
    assert t.coinbase_value == block_subsidy(102, "regtest") + t.fees


def test_template_is_immutable(gbt: dict[str, Any]) -> None:
    t = parse_gbt(gbt, received_at=0.0)
    with pytest.raises(AttributeError):
        t.height = 5  # type: ignore[misc]


@pytest.mark.parametrize("rule", ["!vbfancy", "!csv"])
def test_unknown_mandatory_rule_is_refused(gbt: dict[str, Any], rule: str) -> None:
    gbt["rules"] = ["!segwit", rule]
    with pytest.raises(TemplateError, match=rule):
        parse_gbt(gbt, received_at=0.0)


def test_known_rules_and_optional_unknown_rules_are_accepted(gbt: dict[str, Any]) -> None:
    gbt["rules"] = ["segwit", "!signet", "somefuturesoftfork"]
    assert parse_gbt(gbt, received_at=0.0).height == 102


def test_template_without_segwit_is_refused(gbt: dict[str, Any]) -> None:
    gbt["rules"] = ["csv", "taproot"]
    with pytest.raises(TemplateError, match="segwit"):
        parse_gbt(gbt, received_at=0.0)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("height",), "102", "height"),
        (("height",), -1, "height"),
        (("version",), 2**32, "version"),
        (("curtime",), 2**40, "curtime"),
        (("coinbasevalue",), 21_000_001 * 100_000_000, "coinbasevalue"),
        (("target",), "00" * 32, "target"),
        (("transactions", 2, "hash"), 5, r"transactions\[2\].hash"),
        (("bits",), "zz", "bits"),
        (("previousblockhash",), "00" * 31, "previousblockhash"),
        (("transactions", 1, "txid"), "xy" * 32, r"transactions\[1\].txid"),
        (("transactions", 0, "fee"), None, r"transactions\[0\].fee"),
        (("coinbasevalue",), True, "coinbasevalue"),
        (("default_witness_commitment",), 7, "default_witness_commitment"),
    ],
)
def test_bad_fields_are_named(
    gbt: dict[str, Any], path: tuple[Any, ...], value: Any, match: str
) -> None:
    target: Any = gbt
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(TemplateError, match=match):
        parse_gbt(gbt, received_at=0.0)


def test_missing_field_is_named(gbt: dict[str, Any]) -> None:
    for key in ("previousblockhash", "coinbasevalue", "curtime", "bits", "transactions"):
        broken = copy.deepcopy(gbt)
        del broken[key]
        with pytest.raises(TemplateError, match=key):
            parse_gbt(broken, received_at=0.0)


def test_witness_transactions_need_a_commitment(gbt: dict[str, Any]) -> None:
    del gbt["default_witness_commitment"]
    with pytest.raises(TemplateError, match="default_witness_commitment"):
        parse_gbt(gbt, received_at=0.0)


def test_empty_variant_drops_transactions_and_their_fees(gbt: dict[str, Any]) -> None:
    t = parse_gbt(gbt, received_at=1.0)
    e = t.empty_variant()
    assert e.is_empty and e.transactions == () and e.witness_commitment_script is None
    assert e.coinbase_value == t.coinbase_value - t.fees == block_subsidy(102, "regtest")
    assert (e.height, e.prevhash, e.bits, e.curtime, e.version) == (
        t.height, t.prevhash, t.bits, t.curtime, t.version)
    assert e.empty_variant() is e


@pytest.mark.parametrize(
    ("height", "chain", "btc"),
    [(0, "main", 50), (209_999, "main", 50), (210_000, "main", 25), (840_000, "main", 3.125),
     (149, "regtest", 50), (150, "regtest", 25), (300, "regtest", 12.5),
     (64 * 210_000, "main", 0)],
)
def test_block_subsidy(height: int, chain: str, btc: float) -> None:
    assert block_subsidy(height, chain) == int(btc * 100_000_000)


def test_bits_prediction() -> None:
    assert next_bits_predictable("regtest", 2016)
    assert next_bits_predictable("main", 2017)
    assert not next_bits_predictable("main", 4032)
    assert not next_bits_predictable("signet", 2016)
    assert not next_bits_predictable("test", 5)


def test_empty_template_for_new_tip(gbt: dict[str, Any]) -> None:
    previous = parse_gbt(gbt, received_at=1.0)
    tip = bytes(range(32))
    e = empty_template_for_tip(
        previous, tip_hash=tip, tip_height=102, tip_bits=0x207FFFFF,
        tip_mediantime=1_795_790_600, chain="regtest", now=1_795_790_000, received_at=2.0,
        source="n1",
    )
    assert isinstance(e, Template)
    assert e.is_empty and e.transactions == () and e.witness_commitment_script is None
    assert e.height == 103 and e.prevhash == tip and e.bits == 0x207FFFFF
    assert e.target == bits_to_target(0x207FFFFF)
    # curtime never below the median-time-past rule.
    assert e.mintime == 1_795_790_601 and e.curtime == e.mintime
    assert e.coinbase_value == block_subsidy(103, "regtest")
    assert e.version == previous.version


def test_no_empty_template_at_a_retarget_boundary(gbt: dict[str, Any]) -> None:
    previous = parse_gbt(gbt, received_at=1.0)
    e = empty_template_for_tip(
        previous, tip_hash=bytes(32), tip_height=2015, tip_bits=0x1703A30C,
        tip_mediantime=0, chain="main", now=10, received_at=2.0,
    )
    assert e is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=70)
    | st.sampled_from(["00" * 32, "ff" * 32, "207fffff", "6a24aa21a9ed" + "00" * 32]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=10,
)


@given(key=st.sampled_from(sorted(json.loads(VECTOR.read_text()))), value=json_values)
def test_any_corrupted_field_is_a_template_error_or_a_template(key: str, value: Any) -> None:
    gbt = json.loads(VECTOR.read_text())
    gbt[key] = value
    try:
        t = parse_gbt(gbt, received_at=0.0)
    except TemplateError:
        return
    assert isinstance(t, Template)


@given(index=st.integers(0, 2), key=st.sampled_from(["data", "txid", "hash", "fee", "weight"]),
       value=json_values)
def test_any_corrupted_transaction_is_a_template_error_or_a_template(
    index: int, key: str, value: Any
) -> None:
    gbt = json.loads(VECTOR.read_text())
    gbt["transactions"][index][key] = value
    try:
        parse_gbt(gbt, received_at=0.0)
    except TemplateError as e:
        assert f"transactions[{index}]" in str(e) or "witness" in str(e)
