"""Framing, the JSON codec and the message classes (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.stratum import codec, messages
from poold.stratum.framing import LineFramer, LineTooLong
from poold.stratum.messages import Authorize, Configure, MalformedParams, Submit, Subscribe


def test_framing_across_reads_and_many_per_read() -> None:
    f = LineFramer(64)
    assert f.feed(b'{"a":') == []
    assert f.pending == 5
    assert f.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert f.feed(b":3}\r\n") == [b'{"c":3}\r']


def test_framing_limits_complete_and_partial_lines() -> None:
    f = LineFramer(16)
    assert f.feed(b"x" * 16 + b"\n") == [b"x" * 16]
    with pytest.raises(LineTooLong):
        LineFramer(16).feed(b"x" * 17 + b"\n")
    g = LineFramer(16)
    g.feed(b"x" * 10)
    with pytest.raises(LineTooLong):
        g.feed(b"x" * 10)


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.integers(min_value=1, max_value=50),
)
def test_framing_any_chunking_gives_the_same_lines(lines: list[bytes], chunk: int) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    f = LineFramer(1 << 20)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out.extend(f.feed(stream[i : i + chunk]))
    assert out == lines


@pytest.mark.parametrize(
    ("msg_id", "encoded"),
    [
        (7, b"7"),
        (-1, b"-1"),
        ("abc", b'"abc"'),
        (None, b"null"),
        (1.5, b"1.5"),
        ('q"x', b'"q\\"x"'),
    ],
)
def test_ids_are_echoed_verbatim(msg_id: object, encoded: bytes) -> None:
    assert codec.encode_id(msg_id) == encoded
    line = codec.result_line(msg_id, True)
    assert json.loads(line) == {"id": msg_id, "result": True, "error": None}


def test_error_line_shape() -> None:
    line = codec.error_line(3, 23, "Low difficulty share")
    assert line.endswith(b"\n")
    assert json.loads(line) == {
        "id": 3,
        "result": None,
        "error": [23, "Low difficulty share", None],
    }


def test_invalid_json_is_a_protocol_error() -> None:
    with pytest.raises(codec.StratumProtocolError):
        codec.loads(b"{nope")
    with pytest.raises(codec.StratumProtocolError):
        codec.loads(b"\xff\xfe")


def test_subscribe_shapes() -> None:
    assert Subscribe.from_params(["bosminer-plus-tuner 0.9.0", None]) == Subscribe(
        "bosminer-plus-tuner 0.9.0", None
    )
    assert Subscribe.from_params([]) == Subscribe("", None)
    assert Subscribe.from_params(None) == Subscribe("", None)
    assert Subscribe.from_params(["ua", "01000002", "host", 3333]).session_id == "01000002"
    with pytest.raises(MalformedParams):
        Subscribe.from_params([5])
    with pytest.raises(MalformedParams):
        Subscribe.from_params({"ua": 1})


def test_authorize_hints_and_redacted_repr() -> None:
    a = Authorize.from_params(["addr.rig1", "x,d=1024.5;md=512"])
    assert a.hints() == (1024.5, 512.0)
    assert "x,d=" not in repr(a) and "redacted" in repr(a)
    assert Authorize.from_params(["u", None]).hints() == (None, None)
    assert Authorize.from_params(["u", "d=0"]).hints() == (None, None)
    assert Authorize.from_params(["u", "md=1e3 d=0.0001"]).hints() == (0.0001, 1000.0)
    with pytest.raises(MalformedParams):
        Authorize.from_params([""])


def test_submit_five_or_six_strings() -> None:
    five = ["w", "1", "00" * 8, "6b0996ab", "00000001"]
    assert Submit.from_params(five) == Submit(*five, None)
    assert Submit.from_params([*five, "00002000"]).version_bits == "00002000"
    for bad in (five[:4], [*five, "a", "b"], ["w", 1, "00", "00", "00"], "x", None):
        with pytest.raises(MalformedParams):
            Submit.from_params(bad)


def test_configure_shapes() -> None:
    c = Configure.from_params([["version-rolling"], {"version-rolling.mask": "ffffffff"}])
    assert c.extensions == ("version-rolling",)
    assert Configure.from_params([["info"]]).params == {}
    with pytest.raises(MalformedParams):
        Configure.from_params([["a", 1]])


def test_server_messages() -> None:
    assert json.loads(messages.set_difficulty(0.5)) == {
        "id": None,
        "method": "mining.set_difficulty",
        "params": [0.5],
    }
    assert json.loads(messages.set_version_mask(0x1FFFE000))["params"] == ["1fffe000"]
    assert json.loads(messages.set_extranonce(b"\x01\x02\x03\x04", 8))["params"] == ["01020304", 8]
    assert json.loads(messages.reconnect())["params"] == []
    assert json.loads(messages.reconnect("pool2", 3334, 5))["params"] == ["pool2", 3334, 5]
    assert json.loads(messages.show_message("hi"))["method"] == "client.show_message"


def test_stdlib_fallback_writes_the_same_bytes() -> None:
    import subprocess
    import sys

    script = (
        "from poold.stratum import codec, messages\n"
        "print(codec.JSON_BACKEND)\n"
        "print(codec.result_line('x', [[['mining.notify', 'ab']], 'ab', 8]).hex())\n"
        "print(codec.error_line(None, 21, 'Stale job').hex())\n"
        "print(messages.set_difficulty(0.001).hex())\n"
    )
    env = {**__import__("os").environ, "POOLD_STDLIB_JSON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out[0] == "json"
    assert bytes.fromhex(out[1]) == codec.result_line("x", [[["mining.notify", "ab"]], "ab", 8])
    assert bytes.fromhex(out[2]) == codec.error_line(None, 21, "Stale job")
    assert bytes.fromhex(out[3]) == messages.set_difficulty(0.001)
