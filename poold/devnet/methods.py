"""The devnet's RPC methods: bitcoind's answers for the subset poold and its tests use.

One responsibility: parameter checking and result shaping, field by field as Bitcoin Core v31
prints them (src/rpc/blockchain.cpp, mining.cpp, rawtransaction.cpp, net.cpp), over the node's
state. Deliberate differences, because libbitcoinkernel exposes no API for them:
`getblocktemplate` has no BIP23 proposal mode (so no "capabilities"), `preciousblock` only
checks that the block exists, and `initialblockdownload` is always false.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poold import __version__
from poold.bitcoin.address import AddressError, address_to_script
from poold.bitcoin.block import parse_block
from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.encoding import DecodeError
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.script import witness_program
from poold.bitcoin.target import bits_to_target, target_to_difficulty
from poold.bitcoin.tx import Tx
from poold.devnet import mining
from poold.devnet.chainstate import block_work
from poold.devnet.kernel import BlockDecodeError
from poold.devnet.mempool import TxRejected
from poold.devnet.rpc import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPC_TYPE_ERROR,
    Method,
    RpcError,
)

if TYPE_CHECKING:  # the node builds its method table from this module (no import back)
    from poold.devnet.node import Devnet

CLIENT_VERSION = 310000  # the Bitcoin Core release whose RPC answers these are modelled on
SUBVERSION = f"/Satoshi:31.0.0/poold-devnet:{__version__}/"
DEFAULT_MAX_FEE_PER_KVB = 10_000_000  # 0.10 BTC/kvB, sendrawtransaction's default maxfeerate
LONGPOLL_MEMPOOL_WAIT_S = 60.0  # Core returns a longpoll on mempool change only after a minute


def method_table(dn: Devnet) -> Mapping[str, Method]:
    m = _Methods(dn)
    return {
        "getbestblockhash": Method(m.getbestblockhash),
        "getblockcount": Method(m.getblockcount),
        "getblockhash": Method(m.getblockhash, ("height",), 1),
        "getblockheader": Method(m.getblockheader, ("blockhash", "verbose"), 1),
        "getblock": Method(m.getblock, ("blockhash", "verbosity"), 1),
        "getblockchaininfo": Method(m.getblockchaininfo),
        "getmininginfo": Method(m.getmininginfo),
        "getnetworkinfo": Method(m.getnetworkinfo),
        "getblocktemplate": Method(m.getblocktemplate, ("template_request",)),
        "submitblock": Method(m.submitblock, ("hexdata", "dummy"), 1),
        "preciousblock": Method(m.preciousblock, ("blockhash",), 1),
        "validateaddress": Method(m.validateaddress, ("address",), 1),
        "generatetoaddress": Method(m.generatetoaddress, ("nblocks", "address", "maxtries"), 2),
        "sendrawtransaction": Method(m.sendrawtransaction, ("hexstring", "maxfeerate"), 1),
        "getrawmempool": Method(m.getrawmempool, ("verbose",)),
        "getrawtransaction": Method(m.getrawtransaction, ("txid", "verbose", "blockhash"), 1),
        "getzmqnotifications": Method(m.getzmqnotifications),
    }


def _hash_param(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise RpcError(RPC_TYPE_ERROR, f"JSON value of type {_jtype(value)} is not of expected "
                       "type string")
    if len(value) != 64:
        raise RpcError(
            RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')"
        )
    try:
        return bytes.fromhex(value)[::-1]
    except ValueError:
        raise RpcError(
            RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')"
        ) from None


def _int_param(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RpcError(RPC_TYPE_ERROR, f"JSON value of type {_jtype(value)} for field {name} is "
                       "not of expected type number")
    return value


def _hex_param(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RpcError(RPC_TYPE_ERROR, f"JSON value of type {_jtype(value)} is not of expected "
                       "type string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RpcError(RPC_DESERIALIZATION_ERROR, f"{what} decode failed") from None


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _signed32(n: int) -> int:
    return n - (1 << 32) if n & 0x80000000 else n


class _Methods:
    def __init__(self, dn: Devnet) -> None:
        self.dn = dn

    # -- chain -----------------------------------------------------------------------------

    async def getbestblockhash(self) -> str:
        return self.dn.tip_hash_hex

    async def getblockcount(self) -> int:
        return self.dn.height

    async def getblockhash(self, height: Any) -> str:
        h = _int_param(height, "height")
        if not 0 <= h <= self.dn.height:
            raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range")
        return hash_to_hex(self.dn.view.hash_at(h))

    async def _header_fields(self, block_hash: bytes) -> tuple[dict[str, Any], bytes]:
        """Core's blockheaderToJSON for a known block, and the 80 header bytes."""
        view = self.dn.view
        height = view.height_of(block_hash)
        ntx = self.dn.ntx(block_hash)
        if height is not None:
            header = view.header_at(height)
            mtp = view.median_time_past(height)
            chainwork = view.chainwork_at(height)
            active = True
        else:
            info = await self.dn.entry_info(block_hash)
            if info is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
            header = BlockHeader.parse(info.header)
            height, mtp, active = info.height, info.median_time, False
            # Regtest never retargets: every block has the same work.
            chainwork = view.chainwork_at(0) + height * block_work(header.bits)
        if ntx is None:
            raw = await self.dn.read_block(block_hash)
            ntx = 0 if raw is None else len(parse_block(raw)[1])
        target = bits_to_target(header.bits)
        fields: dict[str, Any] = {
            "hash": hash_to_hex(block_hash),
            "confirmations": view.height - height + 1 if active else -1,
            "height": height,
            "version": _signed32(header.version),
            "versionHex": f"{header.version:08x}",
            "merkleroot": header.merkle_root_hex,
            "time": header.ntime,
            "mediantime": mtp,
            "nonce": header.nonce,
            "bits": f"{header.bits:08x}",
            "target": f"{target:064x}",
            "difficulty": target_to_difficulty(target),
            "chainwork": f"{chainwork:064x}",
            "nTx": ntx,
        }
        if height > 0:
            fields["previousblockhash"] = header.prevhash_hex
        if active and height < view.height:
            fields["nextblockhash"] = hash_to_hex(view.hash_at(height + 1))
        return fields, header.serialize()

    async def getblockheader(self, blockhash: Any, verbose: Any = True) -> Any:
        block_hash = _hash_param(blockhash, "blockhash")
        fields, raw_header = await self._header_fields(block_hash)
        return fields if verbose is None or verbose else raw_header.hex()

    async def getblock(self, blockhash: Any, verbosity: Any = 1) -> Any:
        block_hash = _hash_param(blockhash, "blockhash")
        level = 1 if verbosity is None else int(verbosity)  # Core also accepts true/false
        fields, _ = await self._header_fields(block_hash)
        raw = await self.dn.read_block(block_hash)
        if raw is None:
            raise RpcError(RPC_MISC_ERROR, "Block not available (not fully downloaded)")
        if level == 0:
            return raw.hex()
        if level != 1:
            raise RpcError(RPC_INVALID_PARAMETER, "the devnet supports getblock verbosity 0 and 1")
        _, txs = parse_block(raw)
        stripped = 80 + len(raw) - 80 - sum(len(t.serialize()) - len(t.serialize_legacy())
                                            for t in txs)
        fields["strippedsize"] = stripped
        fields["size"] = len(raw)
        fields["weight"] = stripped * 3 + len(raw)
        fields["tx"] = [t.txid_hex for t in txs]
        return fields

    async def getblockchaininfo(self) -> dict[str, Any]:
        view, dn = self.dn.view, self.dn
        tip = view.tip_header
        target = bits_to_target(tip.bits)
        return {
            "chain": dn.network.chain_name,
            "blocks": view.height,
            "headers": await dn.best_header_height(),
            "bestblockhash": dn.tip_hash_hex,
            "bits": f"{tip.bits:08x}",
            "target": f"{target:064x}",
            "difficulty": target_to_difficulty(target),
            "time": tip.ntime,
            "mediantime": view.median_time_past(),
            "verificationprogress": 1.0,
            "initialblockdownload": False,
            "chainwork": f"{view.chainwork_at(view.height):064x}",
            "size_on_disk": await asyncio.to_thread(_dir_size, dn.datadir),
            "pruned": False,
            "warnings": [],
        }

    async def preciousblock(self, blockhash: Any) -> None:
        block_hash = _hash_param(blockhash, "blockhash")
        if self.dn.view.height_of(block_hash) is None and await self.dn.entry_info(
            block_hash
        ) is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")

    # -- mining ----------------------------------------------------------------------------

    async def getmininginfo(self) -> dict[str, Any]:
        view, dn = self.dn.view, self.dn
        c = dn.block_candidate()
        target = bits_to_target(view.tip_header.bits)
        next_target = bits_to_target(c.bits)
        return {
            "blocks": view.height,
            "bits": f"{view.tip_header.bits:08x}",
            "difficulty": target_to_difficulty(target),
            "target": f"{target:064x}",
            "networkhashps": _network_hashps(dn),
            "pooledtx": len(dn.mempool),
            "chain": dn.network.chain_name,
            "next": {
                "height": c.height,
                "bits": f"{c.bits:08x}",
                "difficulty": target_to_difficulty(next_target),
                "target": f"{next_target:064x}",
            },
            "warnings": [],
        }

    async def getblocktemplate(self, template_request: Any = None) -> dict[str, Any]:
        req = {} if template_request is None else template_request
        if not isinstance(req, dict):
            raise RpcError(RPC_TYPE_ERROR, "template_request must be an object")
        mode = req.get("mode", "template")
        if mode == "proposal":
            raise RpcError(RPC_INVALID_PARAMETER, "the devnet has no BIP23 proposal mode")
        if mode != "template":
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid mode")
        rules = req.get("rules", [])
        if not isinstance(rules, list) or "segwit" not in rules:
            raise RpcError(
                RPC_INVALID_PARAMETER,
                'getblocktemplate must be called with the segwit rule set (call with '
                '{"rules": ["segwit"]})',
            )
        longpollid = req.get("longpollid")
        if isinstance(longpollid, str):
            await self._longpoll(longpollid)
        return mining.template_json(self.dn.block_candidate(), self.dn.longpollid)

    async def _longpoll(self, longpollid: str) -> None:
        """BIP22 long polling: return on a new tip, or on mempool change after a minute."""
        try:
            tip = bytes.fromhex(longpollid[:64])[::-1]
            updates = int(longpollid[64:] or "0")
        except ValueError:
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid longpollid") from None
        while self.dn.tip_hash == tip:
            if await self.dn.wait_tip_change(tip, LONGPOLL_MEMPOOL_WAIT_S):
                return
            if self.dn.mempool.updates != updates:
                return

    async def submitblock(self, hexdata: Any, dummy: Any = None) -> str | None:
        raw = _hex_param(hexdata, "Block")
        try:
            return await self.dn.submit_block(raw)
        except BlockDecodeError as exc:
            raise RpcError(RPC_DESERIALIZATION_ERROR, str(exc)) from None

    async def generatetoaddress(self, nblocks: Any, address: Any, maxtries: Any = None) -> Any:
        n = _int_param(nblocks, "nblocks")
        tries = 1_000_000 if maxtries is None else _int_param(maxtries, "maxtries")
        if not isinstance(address, str):
            raise RpcError(RPC_TYPE_ERROR, "address must be a string")
        try:
            address_to_script(address, self.dn.network)
        except AddressError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
        return await self.dn.generate(n, address, tries)

    # -- addresses and transactions ----------------------------------------------------------

    async def validateaddress(self, address: Any) -> dict[str, Any]:
        if not isinstance(address, str):
            raise RpcError(RPC_TYPE_ERROR, "address must be a string")
        try:
            script = address_to_script(address, self.dn.network)
        except AddressError as exc:
            return {"isvalid": False, "error_locations": [], "error": str(exc)}
        result: dict[str, Any] = {
            "isvalid": True,
            "address": address,
            "scriptPubKey": script.hex(),
        }
        program = witness_program(script)
        result["isscript"] = (program is not None and program[0] == 0 and len(program[1]) == 32) \
            or (len(script) == 23 and script[0] == 0xA9)
        result["iswitness"] = program is not None
        if program is not None:
            result["witness_version"] = program[0]
            result["witness_program"] = program[1].hex()
        return result

    async def sendrawtransaction(self, hexstring: Any, maxfeerate: Any = None) -> str:
        raw = _hex_param(hexstring, "TX")
        try:
            tx = Tx.parse(raw)
        except (DecodeError, ValueError):
            raise RpcError(
                RPC_DESERIALIZATION_ERROR,
                "TX decode failed. Make sure the tx has at least one input.",
            ) from None
        if maxfeerate is None:
            max_fee = DEFAULT_MAX_FEE_PER_KVB
        else:
            try:
                max_fee = round(float(maxfeerate) * 100_000_000)
            except (TypeError, ValueError):
                raise RpcError(RPC_TYPE_ERROR, "maxfeerate must be a number") from None
        try:
            entry = self.dn.accept_transaction(tx, max_fee_per_kvb=max_fee)
        except TxRejected as exc:
            raise RpcError(exc.code, exc.reason) from None
        await self.dn.relay(entry)
        return hash_to_hex(entry.txid)

    async def getrawmempool(self, verbose: Any = False) -> Any:
        if verbose:
            return {
                hash_to_hex(e.txid): {
                    "vsize": (e.weight + 3) // 4,
                    "weight": e.weight,
                    "wtxid": hash_to_hex(e.wtxid),
                    "fees": {"base": e.fee / 100_000_000},
                    "depends": [hash_to_hex(p) for p in sorted(e.parents)],
                }
                for e in self.dn.mempool.entries()
            }
        return [hash_to_hex(e.txid) for e in self.dn.mempool.entries()]

    async def getrawtransaction(self, txid: Any, verbose: Any = False,
                                blockhash: Any = None) -> Any:
        """As bitcoind with -txindex=1: the mempool, then the block `blockhash` or the whole
        active chain (newest first; a devnet chain is short)."""
        tid = _hash_param(txid, "parameter 1")
        dn = self.dn
        entry = dn.mempool.get(tid)
        found: tuple[Tx, bytes | None] | None = None
        if entry is not None and blockhash is None:
            found = (entry.tx, None)
        else:
            if blockhash is not None:
                block_hash = _hash_param(blockhash, "parameter 3")
                if dn.view.height_of(block_hash) is None:
                    raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
                candidates = [block_hash]
            else:
                candidates = [dn.view.hash_at(h) for h in range(dn.height, 0, -1)]
            for block_hash in candidates:
                raw = await dn.read_block(block_hash)
                if raw is None:
                    continue
                tx = next((t for t in parse_block(raw)[1] if t.txid == tid), None)
                if tx is not None:
                    found = (tx, block_hash)
                    break
        if found is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY,
                           "No such mempool or blockchain transaction. Use gettransaction for "
                           "wallet transactions.")
        tx, in_block = found
        if not verbose:
            return tx.serialize().hex()
        out: dict[str, Any] = {
            "txid": tx.txid_hex, "hash": tx.wtxid_hex, "version": tx.version,
            "size": len(tx.serialize()), "vsize": tx.vsize, "weight": tx.weight,
            "locktime": tx.locktime,
            "vout": [{"value": o.value / 100_000_000, "n": n,
                      "scriptPubKey": {"hex": o.script_pubkey.hex()}}
                     for n, o in enumerate(tx.outputs)],
            "hex": tx.serialize().hex(),
        }
        if in_block is not None:
            height = dn.view.height_of(in_block)
            header = dn.view.header_at(height) if height is not None else None
            out["blockhash"] = hash_to_hex(in_block)
            out["confirmations"] = dn.height - height + 1 if height is not None else 0
            if header is not None:
                out["time"] = out["blocktime"] = header.ntime
        return out

    # -- network ---------------------------------------------------------------------------

    async def getnetworkinfo(self) -> dict[str, Any]:
        return {
            "version": CLIENT_VERSION,
            "subversion": SUBVERSION,
            "protocolversion": 70016,
            "localservices": "0000000000000408",
            "localservicesnames": ["WITNESS", "NETWORK_LIMITED"],
            "localrelay": True,
            "timeoffset": 0,
            "networkactive": True,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": 0.000001,
            "incrementalfee": 0.000001,
            "localaddresses": [],
            "warnings": [],
        }

    async def getzmqnotifications(self) -> list[dict[str, Any]]:
        return [
            {"type": f"pub{topic}", "address": self.dn.zmq_url, "hwm": 1000}
            for topic in ("hashblock", "hashtx", "rawblock", "rawtx")
        ]


def _network_hashps(dn: Devnet, lookup: int = 120) -> float:
    """Core's getnetworkhashps: work over time across the last `lookup` blocks."""
    view = dn.view
    top = view.height
    bottom = max(0, top - lookup)
    if top == bottom:
        return 0.0
    span = max(view.header_at(h).ntime for h in range(bottom, top + 1)) - min(
        view.header_at(h).ntime for h in range(bottom, top + 1)
    )
    if span <= 0:
        return 0.0
    return (view.chainwork_at(top) - view.chainwork_at(bottom)) / span


def _dir_size(path: Path | None) -> int:
    if path is None:
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

