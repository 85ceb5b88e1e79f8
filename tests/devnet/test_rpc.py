"""The devnet's JSON-RPC over real HTTP: auth (user/password and cookie), bitcoind's error
objects and status codes, JSON-RPC 2.0 and batches, and answers shaped like Bitcoin Core's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from poold.bitcoin.address import Network, p2wpkh_address
from poold.bitcoin.block import parse_block
from poold.bitcoin.header import BlockHeader
from poold.devnet import DEVNET_ADDRESS, Devnet
from tests.devnet.helpers import basic_auth, http_post, rpc, rpc_error, rpc_raw

VECTOR = Path(__file__).parents[1] / "vectors" / "gbt-regtest-bitcoind-v31.json"


async def test_password_auth_and_bad_credentials(devnet: Devnet) -> None:
    assert await rpc(devnet, "getblockcount") == 0
    wrong = (basic_auth(devnet.rpc_user, "wrong"), basic_auth("other", devnet.rpc_password))
    for auth in (None, *wrong, "Bearer x", "Basic !!!"):
        body = json.dumps({"method": "getblockcount", "params": [], "id": 1}).encode()
        status, headers, reply = await http_post(devnet.rpc_url, body, auth)
        assert status == 401, auth
        assert headers.get("WWW-Authenticate") == 'Basic realm="jsonrpc"'
        assert reply is None


async def test_cookie_auth(devnet: Devnet) -> None:
    assert devnet.cookie_file is not None
    user, _, secret = devnet.cookie_file.read_text().partition(":")
    assert user == "__cookie__" and len(secret) == 64
    assert devnet.cookie_file.stat().st_mode & 0o077 == 0
    status, reply = await rpc_raw(devnet, "getblockcount", auth=basic_auth(user, secret))
    assert (status, reply["result"]) == (200, 0)
    status, _ = await rpc_raw(devnet, "getblockcount", auth=basic_auth(user, secret[:-1] + "x"))
    assert status == 401


async def test_cookie_removed_on_stop(devnet_factory) -> None:  # type: ignore[no-untyped-def]
    dn = await devnet_factory()
    cookie = dn.cookie_file
    assert cookie.exists()
    await dn.stop()
    assert not cookie.exists()


async def test_error_objects_like_bitcoind(devnet: Devnet) -> None:
    status, reply = await rpc_raw(devnet, "nosuchmethod")
    assert status == 404
    assert reply == {"result": None, "error": {"code": -32601, "message": "Method not found"},
                     "id": "t"}
    status, reply = await rpc_raw(devnet, "getblockhash", 5)
    assert status == 500 and reply["error"] == {"code": -8, "message": "Block height out of range"}
    assert (await rpc_error(devnet, "getblockheader", "00" * 32))[0] == -5
    assert (await rpc_error(devnet, "getblockheader", "xyz"))[0] == -8
    assert (await rpc_error(devnet, "getblockhash", "1"))[0] == -3
    assert (await rpc_error(devnet, "getblockhash"))[0] == -1  # missing param: usage text
    code, msg = await rpc_error(devnet, "getblocktemplate", {"rules": []})
    assert code == -8 and "segwit" in msg
    status, _, reply = await http_post(
        devnet.rpc_url, b"{not json", basic_auth(devnet.rpc_user, devnet.rpc_password)
    )
    assert status == 500 and reply["error"]["code"] == -32700


async def test_jsonrpc2_batch_named_params(devnet: Devnet) -> None:
    auth = basic_auth(devnet.rpc_user, devnet.rpc_password)
    body = json.dumps([
        {"jsonrpc": "2.0", "method": "getblockhash", "params": {"height": 0}, "id": 1},
        {"jsonrpc": "2.0", "method": "nosuch", "id": 2},
        {"jsonrpc": "2.0", "method": "getblockcount"},  # notification: no reply
        {"method": "getblockcount", "id": 3},
    ]).encode()
    status, _, replies = await http_post(devnet.rpc_url, body, auth)
    assert status == 200
    assert replies[0] == {"jsonrpc": "2.0", "result": devnet.tip_hash_hex, "id": 1}
    assert replies[1] == {"jsonrpc": "2.0", "error": {"code": -32601,
                                                      "message": "Method not found"}, "id": 2}
    assert replies[2] == {"result": 0, "error": None, "id": 3}
    assert len(replies) == 3
    status, _, reply = await http_post(devnet.rpc_url, json.dumps(
        {"jsonrpc": "2.0", "method": "getblockhash", "params": {"bogus": 1}, "id": 9}).encode(),
        auth)
    assert status == 200 and reply["error"]["code"] == -8
    status, _, reply = await http_post(devnet.rpc_url, json.dumps(
        {"jsonrpc": "2.0", "method": "getblockcount"}).encode(), auth)
    assert (status, reply) == (204, None)


async def test_chain_queries_are_consistent(devnet: Devnet) -> None:
    hashes = await devnet.generate(3)
    info = await rpc(devnet, "getblockchaininfo")
    assert info["chain"] == "regtest" and info["blocks"] == info["headers"] == 3
    assert info["bestblockhash"] == hashes[-1] == await rpc(devnet, "getbestblockhash")
    assert info["initialblockdownload"] is False
    assert int(info["chainwork"], 16) == 4 * 2  # regtest: each block (and genesis) is work 2
    assert await rpc(devnet, "getblockhash", 2) == hashes[1]
    hdr = await rpc(devnet, "getblockheader", hashes[1])
    assert (hdr["height"], hdr["confirmations"], hdr["nTx"]) == (2, 2, 1)
    assert hdr["previousblockhash"] == hashes[0] and hdr["nextblockhash"] == hashes[2]
    raw_hdr = bytes.fromhex(await rpc(devnet, "getblockheader", hashes[1], False))
    assert BlockHeader.parse(raw_hdr).hash_hex == hashes[1]
    raw = bytes.fromhex(await rpc(devnet, "getblock", hashes[1], 0))
    header, txs = parse_block(raw)
    assert header.hash_hex == hashes[1] and header.nonce == hdr["nonce"]
    block = await rpc(devnet, "getblock", hashes[1])
    assert block["tx"] == [t.txid_hex for t in txs] and block["size"] == len(raw)
    mining = await rpc(devnet, "getmininginfo")
    assert mining["blocks"] == 3 and mining["next"]["height"] == 4 and mining["chain"] == "regtest"
    net = await rpc(devnet, "getnetworkinfo")
    assert isinstance(net["version"], int) and "poold-devnet" in net["subversion"]
    assert await rpc(devnet, "preciousblock", hashes[0]) is None
    assert (await rpc_error(devnet, "preciousblock", "11" * 32))[0] == -5


async def test_validateaddress(devnet: Devnet) -> None:
    ok = await rpc(devnet, "validateaddress", DEVNET_ADDRESS)
    assert ok["isvalid"] and ok["iswitness"] and ok["isscript"] and ok["witness_version"] == 0
    assert ok["scriptPubKey"] == devnet.script_pubkey.hex()
    wpkh = await rpc(devnet, "validateaddress", p2wpkh_address(b"\1" * 20, Network.REGTEST))
    assert wpkh["isvalid"] and not wpkh["isscript"] and wpkh["witness_program"] == "01" * 20
    mainnet = p2wpkh_address(b"\1" * 20, Network.MAIN)
    bad = await rpc(devnet, "validateaddress", mainnet)
    assert bad["isvalid"] is False and bad["error"]


async def test_template_has_the_fields_of_core_v31(devnet: Devnet) -> None:
    await devnet.generate(101)
    await devnet.send_test_transaction(fee_sat=2000)
    gbt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    core = json.loads(VECTOR.read_text())
    # The devnet has no BIP23 proposal mode, so it does not advertise the capability.
    assert set(core) - set(gbt) == {"capabilities"}
    assert set(gbt) <= set(core)
    for key in ("version", "rules", "vbavailable", "vbrequired", "coinbaseaux", "target",
                "mutable", "noncerange", "sigoplimit", "sizelimit", "weightlimit", "bits"):
        assert gbt[key] == core[key], key
    assert set(gbt["transactions"][0]) == set(core["transactions"][0])
    assert gbt["height"] == 102 and gbt["previousblockhash"] == devnet.tip_hash_hex
    assert gbt["curtime"] >= gbt["mintime"]
    assert gbt["longpollid"].startswith(devnet.tip_hash_hex)
    assert gbt["default_witness_commitment"].startswith("6a24aa21a9ed")
    # Core includes the commitment even without transactions (segwit active).
    await devnet.generate(1)
    empty = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    assert empty["transactions"] == [] and "default_witness_commitment" in empty


async def test_longpoll_returns_on_new_tip(devnet: Devnet) -> None:
    first = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    waiting = asyncio.create_task(rpc(devnet, "getblocktemplate", {
        "rules": ["segwit"], "longpollid": first["longpollid"]}))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # same tip: the call is held
    (new_tip,) = await devnet.generate(1)
    async with asyncio.timeout(5):
        second = await waiting
    assert second["previousblockhash"] == new_tip != first["previousblockhash"]
    # A stale longpollid answers at once.
    async with asyncio.timeout(5):
        third = await rpc(devnet, "getblocktemplate", {
            "rules": ["segwit"], "longpollid": first["longpollid"]})
    assert third["previousblockhash"] == new_tip


async def test_stop_releases_a_held_longpoll(devnet_factory) -> None:  # type: ignore[no-untyped-def]
    dn: Devnet = await devnet_factory()
    first = await rpc(dn, "getblocktemplate", {"rules": ["segwit"]})
    waiting = asyncio.create_task(rpc_raw(dn, "getblocktemplate", {
        "rules": ["segwit"], "longpollid": first["longpollid"]}))
    await asyncio.sleep(0.05)
    t0 = asyncio.get_running_loop().time()
    await dn.stop()
    assert asyncio.get_running_loop().time() - t0 < 1.5
    async with asyncio.timeout(5):
        status, reply = await waiting
    assert status == 200 and reply["result"]["previousblockhash"] == first["previousblockhash"]
