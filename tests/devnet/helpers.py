"""Test helpers: a bare JSON-RPC caller (so auth and HTTP details are visible to the tests) and
a block builder that uses only poold's primitives on a devnet `getblocktemplate` answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from poold.bitcoin.block import assemble_block, parse_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root, witness_commitment
from poold.bitcoin.script import witness_commitment_script
from poold.bitcoin.target import bits_to_target
from poold.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from poold.devnet import Devnet
from poold.devnet.node import WITNESS_SCRIPT

COINBASE_VALUE = 50 * 100_000_000


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def http_post(
    url: str, body: bytes, auth: str | None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        text = await r.text()
        return r.status, dict(r.headers), (json.loads(text) if text.strip() else None)


async def rpc_raw(dn: Devnet, method: str, *params: Any, auth: str | None = None,
                  **extra: Any) -> tuple[int, Any]:
    """(HTTP status, reply object) of one JSON-RPC 1.0 call."""
    body = json.dumps({"method": method, "params": list(params), "id": "t", **extra}).encode()
    status, _, reply = await http_post(
        dn.rpc_url, body, auth if auth is not None else basic_auth(dn.rpc_user, dn.rpc_password)
    )
    return status, reply


async def rpc(dn: Devnet, method: str, *params: Any) -> Any:
    """The result of a call that must succeed."""
    status, reply = await rpc_raw(dn, method, *params)
    assert status == 200 and reply["error"] is None, (method, status, reply)
    return reply["result"]


async def rpc_error(dn: Devnet, method: str, *params: Any) -> tuple[int, str]:
    """(code, message) of a call that must fail."""
    _, reply = await rpc_raw(dn, method, *params)
    assert reply["result"] is None and reply["error"] is not None, (method, reply)
    return reply["error"]["code"], reply["error"]["message"]


@dataclass(frozen=True, slots=True)
class Built:
    raw: bytes
    header: BlockHeader


def build_block(
    gbt: dict[str, Any],
    *,
    payout_script: bytes,
    pay: int | None = None,
    height: int | None = None,
    commitment: bytes | str | None = "template",
    merkle_root_override: bytes | None = None,
    prevhash_hex: str | None = None,
    meet_target: bool = True,
    extranonce2: bytes = b"\0" * 8,
    drop_tx: int | None = None,
) -> Built:
    """A block from a GBT answer, assembled as poold would (coinbase, merkle, header, grind),
    with knobs that make it invalid in one specific way."""
    txs = [t for i, t in enumerate(gbt["transactions"]) if i != drop_tx]
    script: bytes | None
    if commitment == "template":
        script = bytes.fromhex(gbt["default_witness_commitment"])
    elif commitment == "recompute":
        script = witness_commitment_script(
            witness_commitment([hash_from_hex(t["hash"]) for t in txs])
        )
    elif isinstance(commitment, bytes):
        script = commitment
    else:
        script = None
    parts = build_coinbase(
        gbt["height"] if height is None else height,
        [TxOut(gbt["coinbasevalue"] if pay is None else pay, payout_script)],
        tag=b"/poold-test/",
        witness_commitment_script=script,
    )
    coinbase = parts.assemble(b"\x01\x02\x03\x04", extranonce2)
    root = merkle_root([coinbase.txid, *(hash_from_hex(t["txid"]) for t in txs)])
    if merkle_root_override is not None:
        root = merkle_root_override
    header = BlockHeader(
        version=gbt["version"],
        prevhash=hash_from_hex(prevhash_hex or gbt["previousblockhash"]),
        merkle_root=root,
        ntime=gbt["curtime"],
        bits=int(gbt["bits"], 16),
        nonce=0,
    )
    header = grind(header, meet_target)
    raw = assemble_block(header.serialize(), coinbase, [bytes.fromhex(t["data"]) for t in txs])
    return Built(raw, header)


def grind(header: BlockHeader, meet_target: bool) -> BlockHeader:
    """First nonce whose hash meets (or, for a high-hash test, misses) the target."""
    target = bits_to_target(header.bits)
    prefix = header.serialize()[:76]
    for nonce in range(1 << 32):
        h = hashlib.sha256(hashlib.sha256(prefix + nonce.to_bytes(4, "little")).digest()).digest()
        if (int.from_bytes(h, "little") <= target) == meet_target:
            return BlockHeader(header.version, header.prevhash, header.merkle_root,
                               header.ntime, header.bits, nonce)
    raise AssertionError("nonce space exhausted")


async def coinbase_outpoint(dn: Devnet, height: int) -> OutPoint:
    """The coinbase output of the active-chain block at `height`."""
    raw = bytes.fromhex(await rpc(dn, "getblock", await rpc(dn, "getblockhash", height), 0))
    _, txs = parse_block(raw)
    return OutPoint(txs[0].txid, 0)


def spend(prevout: OutPoint, value: int, *, script: bytes, witness: bytes = WITNESS_SCRIPT) -> Tx:
    """A one-in one-out spend of a devnet (P2WSH OP_TRUE) output; `witness` other than OP_TRUE
    makes it invalid."""
    return Tx(2, (TxIn(prevout, b"", 0xFFFFFFFD, (witness,)),), (TxOut(value, script),), 0)


async def busy_loop(stop: asyncio.Event) -> None:
    """A CPU miner's shape on the event loop: hashing in slices, yielding between them, never
    sleeping, until `stop` is set."""
    h = hashlib.sha256(b"\0" * 64)
    while not stop.is_set():
        for n in range(512):
            s = h.copy()
            s.update(n.to_bytes(4, "little"))
            hashlib.sha256(s.digest()).digest()
        await asyncio.sleep(0)
