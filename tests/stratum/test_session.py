"""The session state machine, fed with lines (no sockets): any order, one reply per id,
configure/authorize/suggest semantics, rejection codes over the protocol, the invalid ladder."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.stratum.session import Session, SessionSettings
from tests.work.builders import ADDRESS, Rig, rig


def send(s: Session, r: Rig, *msgs: dict[str, Any] | bytes) -> list[dict[str, Any]]:
    lines = [m if isinstance(m, bytes) else json.dumps(m).encode() for m in msgs]
    out = s.feed(lines, r.clock.now)
    return [json.loads(x) for x in out.splitlines()]


def req(i: Any, method: str, *params: Any) -> dict[str, Any]:
    return {"id": i, "method": method, "params": list(params)}


def replies(out: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {m["id"]: m for m in out if "method" not in m}


def pushed(out: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [m for m in out if m.get("method") == method]


def working(r: Rig, **kw: Any) -> tuple[Session, list[dict[str, Any]]]:
    s = r.session()
    out = send(
        s, r, req(1, "mining.subscribe", "test/1.0"), req(2, "mining.authorize", ADDRESS, "x"), **kw
    )
    return s, out


@pytest.mark.parametrize(
    "order",
    [
        ("configure", "subscribe", "suggest", "authorize"),  # ESP-Miner 2025
        ("subscribe", "configure", "suggest", "authorize"),  # Bitaxe 2024
        ("authorize", "subscribe", "configure", "suggest"),
        ("suggest", "authorize", "configure", "subscribe"),
    ],
)
def test_any_order_one_reply_per_id_and_work_once_ready(order: tuple[str, ...]) -> None:
    r = rig(start=1e-3, min_difficulty=1e-9)
    s = r.session()
    msgs = {
        "configure": req(
            "c",
            "mining.configure",
            ["version-rolling"],
            {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2},
        ),
        "subscribe": req(None, "mining.subscribe", "bitaxe/2.0", None),
        "suggest": req(17, "mining.suggest_difficulty", 0.5),
        "authorize": req(4.5, "mining.authorize", f"{ADDRESS}.rig1", "x"),
    }
    out: list[dict[str, Any]] = []
    for name in order:
        out += send(s, r, msgs[name])
    ids = [m["id"] for m in out if "method" not in m]
    assert sorted(ids, key=str) == sorted(["c", None, 17, 4.5], key=str)
    assert all(m["error"] is None for m in out if "method" not in m)
    diffs = pushed(out, "mining.set_difficulty")
    notifies = pushed(out, "mining.notify")
    assert len(notifies) >= 1 and len(diffs) >= 1
    assert diffs[-1]["params"] == [0.5]  # the suggestion, whenever it came
    assert s.work is not None and s.work.mask == 0x1FFFE000


def test_subscribe_result_and_notify_shape() -> None:
    r = rig()
    _s, out = working(r)
    sub = replies(out)[1]["result"]
    en1 = sub[1]
    assert sub[0] == [["mining.set_difficulty", en1], ["mining.notify", en1]]
    assert len(en1) == 8 and en1.startswith("07") and sub[2] == 8
    (notify,) = pushed(out, "mining.notify")
    p = notify["params"]
    assert len(p) == 9 and isinstance(p[4], list) and p[8] is False
    assert all(len(x) == 8 for x in (p[5], p[6], p[7]))
    t = r.book.template
    assert t is not None and int(p[7], 16) == t.curtime and int(p[6], 16) == t.bits


def test_unknown_method_gets_error_20_and_session_goes_on() -> None:
    r = rig()
    s, _ = working(r)
    out = send(s, r, req(9, "mining.get_transactions", "1"), req(10, "mining.ping"))
    assert replies(out)[9]["error"][0] == 20
    assert replies(out)[10]["result"] == "pong"
    assert s.close_reason is None


def test_garbage_and_replies_from_the_client() -> None:
    r = rig()
    s = r.session()
    out = send(
        s, r, b"not json", b"[1,2]", b"   ", json.dumps({"id": 5, "result": "cgminer"}).encode()
    )
    assert [m["id"] for m in out] == [None, None]
    assert all(m["error"][0] == 20 for m in out)


def test_malformed_params_of_known_methods_are_error_20() -> None:
    r = rig()
    s = r.session()
    out = send(
        s,
        r,
        req(1, "mining.subscribe", 5),
        req(2, "mining.suggest_difficulty", "x"),
        req(3, "mining.configure", "nope"),
        req(4, "mining.authorize"),
    )
    assert [m["error"][0] for m in out] == [20, 20, 20, 20]


def test_configure_answers_every_extension() -> None:
    r = rig()
    s = r.session()
    (reply,) = send(
        s,
        r,
        req(
            1,
            "mining.configure",
            [
                "version-rolling",
                "minimum-difficulty",
                "subscribe-extranonce",
                "info",
                "something-new",
            ],
            {
                "version-rolling.mask": "0000ffff",
                "version-rolling.min-bit-count": 2,
                "minimum-difficulty.value": 2048,
                "info.connection-url": "x",
                "info.hw-version": "S19",
            },
        ),
    )
    res = reply["result"]
    assert res["version-rolling"] is True
    assert res["version-rolling.mask"] == f"{0x1FFFE000 & 0xFFFF:08x}"
    assert res["minimum-difficulty"] is True and res["subscribe-extranonce"] is True
    assert res["info"] is True and res["something-new"] is False
    assert s.floor_min == 2048 and s.extranonce_subscribed


def test_configure_min_bit_count_not_met() -> None:
    r = rig()
    s = r.session()
    (reply,) = send(
        s,
        r,
        req(
            1,
            "mining.configure",
            ["version-rolling"],
            {"version-rolling.mask": "00006000", "version-rolling.min-bit-count": 4},
        ),
    )
    assert reply["result"] == {"version-rolling": False}


def test_minimum_difficulty_floor_applies_to_the_first_job() -> None:
    r = rig(start=1e-3, min_difficulty=1e-9)
    s = r.session()
    send(s, r, req(1, "mining.configure", ["minimum-difficulty"], {"minimum-difficulty.value": 64}))
    out = send(s, r, req(2, "mining.subscribe", "x"), req(3, "mining.authorize", ADDRESS, "d=2"))
    assert pushed(out, "mining.set_difficulty")[-1]["params"] == [64]


def test_password_hints_d_and_md() -> None:
    r = rig(start=1e-3, min_difficulty=1e-9)
    s = r.session()
    out = send(s, r, req(1, "mining.subscribe", "x"), req(2, "mining.authorize", ADDRESS, "d=5"))
    assert pushed(out, "mining.set_difficulty")[-1]["params"] == [5]
    s2 = r.session()
    out = send(
        s2, r, req(1, "mining.subscribe", "x"), req(2, "mining.authorize", ADDRESS, "md=9,d=5")
    )
    assert pushed(out, "mining.set_difficulty")[-1]["params"] == [9]


@pytest.mark.parametrize(
    ("username", "fragment"),
    [
        ("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "wrong network"),
        ("nonsense", "invalid payout address"),
        (p2wpkh_address(bytes(20), Network.REGTEST)[:-1] + "x", "invalid payout address"),
    ],
)
def test_solo_authorize_checks_the_address(username: str, fragment: str) -> None:
    r = rig()
    s = r.session()
    (reply,) = send(s, r, req(1, "mining.authorize", username, "x"))
    assert reply["error"][0] == 24 and fragment in reply["error"][1]
    assert not s.authorized


def test_submit_codes_before_subscribe_before_authorize_and_wrong_worker() -> None:
    r = rig()
    s = r.session()
    submit = ["w", "1", "00" * 8, "6b0996ab", "00000000"]
    assert send(s, r, req(1, "mining.submit", *submit))[0]["error"][0] == 25
    send(s, r, req(2, "mining.subscribe", "x"))
    assert send(s, r, req(3, "mining.submit", *submit))[0]["error"][0] == 24
    send(s, r, req(4, "mining.authorize", f"{ADDRESS}.a", "x"))
    assert send(s, r, req(5, "mining.submit", *submit))[0]["error"][0] == 24  # not that worker
    bad = send(s, r, req(6, "mining.submit", f"{ADDRESS}.a", "1", "00"))[0]
    assert bad["error"][0] == 20


def test_submit_over_the_protocol_accept_stale_and_six_params() -> None:
    r = rig(start=1e-12, min_difficulty=1e-13)
    s, out = working(r)
    job = pushed(out, "mining.notify")[0]["params"]
    ok = send(
        s,
        r,
        req(7, "mining.submit", ADDRESS, job[0], "00" * 8, job[7], "00000001"),
        req(8, "mining.submit", ADDRESS, job[0], "00" * 8, job[7], "00000001", "00002000"),
        req(9, "mining.submit", ADDRESS, job[0], "00" * 8, job[7], "00000001"),
    )
    by_id = replies(ok)
    assert by_id[7]["result"] is True and by_id[8]["result"] is True
    assert by_id[9]["error"][0] == 22
    assert r.ctx.counters.accepted == 2


def test_suggest_difficulty_after_authorize_sends_a_new_job_without_clean() -> None:
    r = rig(start=1e-3, min_difficulty=1e-9)
    s, out = working(r)
    first = pushed(out, "mining.notify")[0]["params"][0]
    out = send(s, r, req(5, "mining.suggest_difficulty", 0.0001))
    assert replies(out)[5]["result"] is True
    assert pushed(out, "mining.set_difficulty")[0]["params"] == [0.0001]
    (notify,) = pushed(out, "mining.notify")
    assert notify["params"][0] != first and notify["params"][8] is False
    out = send(s, r, req(6, "mining.suggest_target", "00000000ffff" + "0" * 52))
    assert pushed(out, "mining.set_difficulty")[0]["params"] == [1.0]


def test_invalid_share_ladder_warns_then_disconnects_stale_does_not_count() -> None:
    r = rig(start=1e6, settings=SessionSettings(invalid_limit=10))
    s, out = working(r)
    job = pushed(out, "mining.notify")[0]["params"]
    msgs = []
    for i in range(9):
        msgs += send(
            s, r, req(100 + i, "mining.submit", ADDRESS, job[0], "00" * 8, job[7], f"{i:08x}")
        )
    assert len(pushed(msgs, "client.show_message")) == 1
    assert s.close_reason is None
    send(s, r, req(200, "mining.submit", ADDRESS, "nope", "00" * 8, job[7], "00000000"))
    assert s.close_reason is not None and "10" in s.close_reason


def test_extranonce_subscribe_and_set_extranonce() -> None:
    r = rig()
    s, _ = working(r)
    assert s.set_extranonce(b"\x01\x02\x03\x04") == b""
    (reply,) = send(s, r, req(3, "mining.extranonce.subscribe"))
    assert reply["result"] is True
    assert json.loads(s.set_extranonce(b"\x01\x02\x03\x04"))["params"] == ["01020304", 8]


def test_session_resume_restores_extranonce1() -> None:
    r = rig()
    s, out = working(r)
    en1 = replies(out)[1]["result"][1]
    s.closed(r.clock.now)
    r.clock.now += 60
    s2 = r.session()
    (reply, *_) = send(s2, r, req(1, "mining.subscribe", "x", en1))
    assert reply["result"][1] == en1
    s3 = r.session()
    (reply, *_) = send(s3, r, req(1, "mining.subscribe", "x", en1))
    assert reply["result"][1] != en1  # held by s2


def test_multiple_workers_same_payout() -> None:
    r = rig(start=1e-12, min_difficulty=1e-13)
    s, out = working(r)
    job = pushed(out, "mining.notify")[0]["params"]
    assert send(s, r, req(3, "mining.authorize", f"{ADDRESS}.b", "x"))[0]["result"] is True
    res = send(s, r, req(4, "mining.submit", f"{ADDRESS}.b", job[0], "00" * 8, job[7], "00000009"))
    assert res[0]["result"] is True
    assert r.shares[-1].worker == f"{ADDRESS}.b"


def test_pooled_mode_usernames_are_account_dot_worker() -> None:
    from poold.bitcoin.address import Network
    from poold.stratum.auth import Authorizer, StratumAuthError

    auth = Authorizer(Network.REGTEST, solo=False)
    ident = auth.authorize("alice.rig7")
    assert (ident.worker, ident.account, ident.payout_script) == ("alice.rig7", "alice", None)
    assert auth.authorize("bob").account == "bob"
    for bad in ("", ".rig", "a b.rig", "x" * 65):
        with pytest.raises(StratumAuthError):
            auth.authorize(bad)


def test_pooled_payouts_refuse_accounts_without_an_address() -> None:
    """pplns/split: a plain name that is neither an address nor mapped is refused (error 24),
    so it can never leave the split coinbase a credit it cannot pay."""
    from poold.accounts import AccountBook
    from poold.bitcoin.address import Network
    from poold.stratum.auth import Authorizer, StratumAuthError

    book = AccountBook.of(Network.REGTEST, {"alice": ADDRESS})
    auth = Authorizer(Network.REGTEST, solo=False, accounts=book)
    assert auth.authorize("alice.rig7").account == "alice"
    assert auth.authorize(f"{ADDRESS}.rig").account == ADDRESS
    with pytest.raises(StratumAuthError, match="unknown account 'bob'"):
        auth.authorize("bob.rig")
    main_net = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"  # BIP173 example, not regtest
    with pytest.raises(StratumAuthError, match="unknown account"):
        auth.authorize(main_net)
    r = rig()
    r.ctx.authorizer = auth
    s = r.session()
    out = send(s, r, req(1, "mining.subscribe", "cgminer/4.12"),
               req(2, "mining.authorize", "bob.rig", "x"))
    reply = next(m for m in out if m.get("id") == 2)
    assert reply["result"] is None and reply["error"][0] == 24
    assert "bob" in reply["error"][1]


def roll(mask: str) -> dict[str, Any]:
    return req(1, "mining.configure", ["version-rolling"], {"version-rolling.mask": mask})


def test_pool_mask_change_sends_set_version_mask() -> None:
    r = rig()
    s = r.session()
    send(s, r, roll("ffffffff"),
         req(2, "mining.subscribe", "bitaxe/2.0"), req(3, "mining.authorize", ADDRESS, "x"))
    plain, _ = working(r)  # never sent mining.configure
    assert s.work is not None and s.work.mask == 0x1FFFE000
    r.ctx.settings = dataclasses.replace(r.ctx.settings, version_mask=0x1FE00000)
    assert json.loads(s.pool_mask_changed()) == {
        "id": None, "method": "mining.set_version_mask", "params": ["1fe00000"]}
    assert s.work.mask == 0x1FE00000  # valid immediately (BIP310)
    assert s.pool_mask_changed() == b""  # unchanged: nothing to say
    assert plain.pool_mask_changed() == b""  # no negotiation, no message; the new mask applies
    assert plain.work is not None and plain.work.mask == 0x1FE00000


def test_pool_mask_change_respects_the_miners_mask() -> None:
    r = rig()
    s = r.session()
    send(s, r, roll("00ffe000"),
         req(2, "mining.subscribe", "bmminer/2.0"), req(3, "mining.authorize", ADDRESS, "x"))
    assert s.work is not None and s.work.mask == 0x00FFE000
    r.ctx.settings = dataclasses.replace(r.ctx.settings, version_mask=0x1FE00000)
    assert json.loads(s.pool_mask_changed())["params"] == ["00e00000"]  # pool AND miner


@pytest.mark.parametrize("raw_id", [
    b"123456789012345678901234567890",  # beyond 64 bits: the fast parser reads a float
    b"-98765432109876543210987654321",
    b"18446744073709551616",  # 2**64
    b"9223372036854775807",  # int64 max: exact either way
    b"1.5",
    b'"abc"',
])
def test_ids_of_any_size_are_echoed_verbatim(raw_id: bytes) -> None:
    r = rig()
    s = r.session()
    for method, params in ((b"mining.ping", b"[]"), (b"mining.submit", b'["x"]'),
                           (b"no.such.method", b"[]")):
        line = b'{"id":' + raw_id + b',"method":"' + method + b'","params":' + params + b"}"
        out = s.feed([line], r.clock.now)
        assert out.startswith(b'{"id":' + raw_id + b","), out
