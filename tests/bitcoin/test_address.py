"""address.py against BIP173/BIP350 and Bitcoin Core's key_io vectors, plus the error reasons an
operator sees for a bad payout address."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.address import (
    AddressError,
    Encoding,
    Network,
    address_to_script,
    base58check_encode,
    bech32_decode,
    bech32_encode,
    p2pkh_address,
    p2sh_address,
    p2tr_address,
    p2wpkh_address,
    p2wsh_address,
    script_to_address,
)

from ._vectors import load_json

BIP = load_json("bip173-bip350.json")
KEY_IO = load_json("core-key-io-addresses.json")


def _network_for(address: str) -> Network:
    low = address.lower()
    if low.startswith("bc1"):
        return Network.MAIN
    if low.startswith("tb1"):
        return Network.TEST
    if low.startswith("bcrt1"):
        return Network.REGTEST
    raise AssertionError(address)


def _invalid_string(v: dict[str, Any]) -> str:
    s = str(v["s"])
    if "prefix_byte" in v:
        s = chr(v["prefix_byte"]) + s
    if "suffix_byte" in v:
        s = s + chr(v["suffix_byte"])
    return s


def test_network_params() -> None:
    assert [n.chain_name for n in Network] == ["main", "test", "testnet4", "signet", "regtest"]
    assert Network("regtest") is Network.REGTEST
    assert (Network.MAIN.bech32_hrp, Network.MAIN.p2pkh_version, Network.MAIN.p2sh_version) == (
        "bc",
        0x00,
        0x05,
    )
    for n in (Network.TEST, Network.TESTNET4, Network.SIGNET):
        assert (n.bech32_hrp, n.p2pkh_version, n.p2sh_version) == ("tb", 0x6F, 0xC4)
    assert Network.REGTEST.bech32_hrp == "bcrt"


# -- generic bech32 / bech32m strings -----------------------------------------------------------


@pytest.mark.parametrize("s", BIP["bech32_valid"])
def test_bech32_valid_strings(s: str) -> None:
    hrp, _, enc = bech32_decode(s)
    assert enc is Encoding.BECH32
    assert hrp == s[: s.rfind("1")].lower()


@pytest.mark.parametrize("s", BIP["bech32m_valid"])
def test_bech32m_valid_strings(s: str) -> None:
    _, _, enc = bech32_decode(s)
    assert enc is Encoding.BECH32M


@pytest.mark.parametrize(
    "v", BIP["bech32_invalid"] + BIP["bech32m_invalid"], ids=lambda v: v["reason"]
)
def test_bech32_invalid_strings(v: dict[str, Any]) -> None:
    with pytest.raises(AddressError):
        bech32_decode(_invalid_string(v))


def test_bech32_error_reasons() -> None:
    cases = {
        " 1nwldj5": "invalid character",
        "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio"
        "1569pvx": "too long",
        "pzry9x0s0muk": "no separator",
        "1pzry9x0s0muk": "empty human-readable",
        "x1b4n0q5v": "invalid bech32 data character",
        "li1dgmt3": "checksum too short",
        "A1G7SGD8": "checksum",
        "a12UEL5L": "mixed upper and lower case",
    }
    for s, reason in cases.items():
        with pytest.raises(AddressError, match=f"(?i){reason}"):
            bech32_decode(s)


# -- segwit addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "script_hex"), BIP["bip350_valid_addresses"])
def test_bip350_valid_addresses(address: str, script_hex: str) -> None:
    net = _network_for(address)
    script = address_to_script(address, net, allow_future_witness=True)
    assert script.hex() == script_hex
    # Encoding back gives the canonical lower-case form.
    assert script_to_address(script, net) == address.lower()


@pytest.mark.parametrize(("address", "script_hex"), BIP["bip173_valid_v0_addresses"])
def test_bip173_valid_v0_addresses(address: str, script_hex: str) -> None:
    assert address_to_script(address, _network_for(address)).hex() == script_hex


@pytest.mark.parametrize("address", BIP["bip173_superseded_v1plus_addresses"])
def test_bip173_v1plus_bech32_is_rejected_after_bip350(address: str) -> None:
    with pytest.raises(AddressError, match="must use bech32m"):
        address_to_script(address, Network.MAIN, allow_future_witness=True)


@pytest.mark.parametrize(
    ("address", "reason"), BIP["bip173_invalid_addresses"] + BIP["bip350_invalid_addresses"]
)
def test_invalid_segwit_addresses(address: str, reason: str) -> None:
    for net in Network:
        with pytest.raises(AddressError):
            address_to_script(address, net, allow_future_witness=True)


def test_segwit_error_reasons() -> None:
    def reason_of(address: str) -> str:
        with pytest.raises(AddressError) as e:
            address_to_script(address, _network_for(address), allow_future_witness=True)
        return str(e.value)

    inv = dict(BIP["bip350_invalid_addresses"])
    by_reason = {r: a for a, r in inv.items()}
    assert "must use bech32m" in reason_of(
        by_reason["Invalid checksum (Bech32 instead of Bech32m)"]
    )
    assert "must use bech32, not bech32m" in reason_of(
        by_reason["Invalid checksum (Bech32m instead of Bech32)"]
    )
    assert "invalid witness version" in reason_of(by_reason["Invalid witness version"])
    assert "program length 1" in reason_of(by_reason["Invalid program length (1 byte)"])
    assert "program length 41" in reason_of(by_reason["Invalid program length (41 bytes)"])
    assert "v0 program length" in reason_of(
        by_reason["Invalid program length for witness version 0 (per BIP141)"]
    )
    assert "mixed" in reason_of(by_reason["Mixed case"])
    assert "more than 4 bits" in reason_of(by_reason["zero padding of more than 4 bits"])
    assert "non-zero padding" in reason_of(by_reason["Non-zero padding in 8-to-5 conversion"])
    assert "no witness version" in reason_of("bc1gmk9yu")
    assert "checksum" in reason_of("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5")


def test_wrong_network_is_named() -> None:
    with pytest.raises(AddressError, match=r"wrong network.*'bc'.*main.*not regtest"):
        address_to_script("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", Network.REGTEST)
    with pytest.raises(AddressError, match=r"wrong network.*for main, not test"):
        address_to_script("1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo", Network.TEST)
    with pytest.raises(AddressError, match="wrong network"):
        address_to_script("2MxFajLApXpYk4VodBSZSt7rw8y4ryABkfA", Network.MAIN)


def test_future_witness_refused_by_default() -> None:
    with pytest.raises(AddressError, match="not defined by any soft fork"):
        address_to_script("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", Network.MAIN)
    # v1 with a non-32-byte program is also undefined (BIP341 only gives meaning to 32 bytes).
    with pytest.raises(AddressError, match="not defined"):
        address_to_script("bc1z2rksukkjr8", Network.MAIN)


def test_regtest_op_true_p2wsh() -> None:
    # Core's test framework ADDRESS_BCRT1_P2WSH_OP_TRUE: P2WSH of the script "OP_TRUE" on regtest.
    addr = "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85"
    assert p2wsh_address(b"\x51", Network.REGTEST) == addr
    assert address_to_script(addr, Network.REGTEST)[:2] == b"\x00\x20"


# -- Bitcoin Core key_io vectors ----------------------------------------------------------------


def _core_chain(chain: str) -> Network:
    return Network(chain)


@pytest.mark.parametrize(("address", "script_hex", "chain"), KEY_IO["valid"])
def test_core_key_io_valid(address: str, script_hex: str, chain: str) -> None:
    net = _core_chain(chain)
    assert address_to_script(address, net, allow_future_witness=True).hex() == script_hex
    assert script_to_address(bytes.fromhex(script_hex), net) == address
    if address[:2].lower() in ("bc", "tb"):
        # tryCaseFlip: Core also checks the all-upper-case form of bech32 addresses.
        assert address_to_script(address.upper(), net, allow_future_witness=True).hex() == (
            script_hex
        )


@pytest.mark.parametrize("address", KEY_IO["invalid"])
def test_core_key_io_invalid(address: str) -> None:
    for net in Network:
        with pytest.raises(AddressError):
            address_to_script(address, net, allow_future_witness=True)


# -- base58 -------------------------------------------------------------------------------------


def test_base58_errors() -> None:
    good = "1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo"
    with pytest.raises(AddressError, match="invalid base58 character '0'"):
        address_to_script(good[:5] + "0" + good[6:], Network.MAIN)
    with pytest.raises(AddressError, match="checksum"):
        address_to_script(good[:-1] + ("n" if good[-1] != "n" else "p"), Network.MAIN)
    with pytest.raises(AddressError, match="empty"):
        address_to_script("", Network.MAIN)
    with pytest.raises(AddressError, match="whitespace"):
        address_to_script(good + " ", Network.MAIN)
    with pytest.raises(AddressError, match="payload must be 21 bytes"):
        address_to_script(base58check_encode(b"\x00" + b"\x11" * 21), Network.MAIN)
    with pytest.raises(AddressError, match="unknown base58 address version byte 0x30"):
        address_to_script(base58check_encode(b"\x30" + b"\x11" * 20), Network.MAIN)


def test_base58_leading_zeros() -> None:
    # Version 0 and an all-zero hash: every zero byte is a leading '1' (Base58Check rule).
    addr = p2pkh_address(b"\0" * 20, Network.MAIN)
    assert addr == "1111111111111111111114oLvT2"
    assert address_to_script(addr, Network.MAIN).hex() == "76a914" + "00" * 20 + "88ac"


def test_script_to_address_non_standard() -> None:
    assert script_to_address(b"\x6a\x00", Network.MAIN) is None
    assert script_to_address(b"\x00\x15" + b"\0" * 21, Network.MAIN) is None  # v0 of 21 bytes
    assert script_to_address(b"", Network.MAIN) is None


# -- Hypothesis round trips ---------------------------------------------------------------------

networks = st.sampled_from(list(Network))


@given(st.binary(min_size=20, max_size=20), networks)
def test_roundtrip_20_byte_hashes(h: bytes, net: Network) -> None:
    for addr, prefix in (
        (p2wpkh_address(h, net), "0014"),
        (p2pkh_address(h, net), "76a914"),
        (p2sh_address(h, net), "a914"),
    ):
        script = address_to_script(addr, net)
        assert script.hex().startswith(prefix)
        assert h in script
        assert script_to_address(script, net) == addr


@given(st.binary(min_size=32, max_size=32), networks)
def test_roundtrip_taproot(xonly: bytes, net: Network) -> None:
    addr = p2tr_address(xonly, net)
    assert address_to_script(addr, net) == b"\x51\x20" + xonly
    assert script_to_address(b"\x51\x20" + xonly, net) == addr


@given(st.binary(max_size=200), networks)
def test_roundtrip_p2wsh(witness_script: bytes, net: Network) -> None:
    addr = p2wsh_address(witness_script, net)
    script = address_to_script(addr, net)
    assert script_to_address(script, net) == addr


@given(st.text(max_size=100), networks)
def test_garbage_never_crashes(s: str, net: Network) -> None:
    try:
        address_to_script(s, net, allow_future_witness=True)
    except AddressError:
        pass


@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)
    .map(str.lower)
    .filter(lambda h: h != "" and "1" not in h),
    st.lists(st.integers(min_value=0, max_value=31), max_size=40),
    st.sampled_from(list(Encoding)),
)
def test_bech32_generic_roundtrip(hrp: str, data: list[int], enc: Encoding) -> None:
    s = bech32_encode(hrp, data, enc)
    assert bech32_decode(s) == (hrp, data, enc)
    assert bech32_decode(s.upper()) == (hrp, data, enc)


@given(st.binary(min_size=20, max_size=20), st.integers(min_value=0), st.integers(1, 31))
def test_single_substitution_always_detected(h: bytes, pos: int, delta: int) -> None:
    # BIP173: the checksum detects any error affecting at most 4 characters.
    addr = p2wpkh_address(h, Network.MAIN)
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    i = 3 + pos % (len(addr) - 3)
    bad = addr[:i] + charset[(charset.index(addr[i]) + delta) % 32] + addr[i + 1 :]
    with pytest.raises(AddressError):
        address_to_script(bad, Network.MAIN, allow_future_witness=True)
