"""The devnet node: a regtest bitcoind look-alike whose consensus is Bitcoin Core's kernel.

One responsibility: wiring and lifecycle. The kernel (`kernel.Kernel`) runs in a child process of
its own (`kernel_process`: a busy event loop here cannot slow validation down); every other piece
of state (chain view, UTXO set, mempool) lives on the event loop and changes only from the
kernel's connect/disconnect events, applied in order under one lock, so RPC answers never wait on
the kernel except for block submission and block reads. The JSON-RPC server (`rpc`, methods in
`methods`) and the ZMQ publisher (`zmqpub`) are the node's I/O edges.

Data layout mirrors bitcoind's: `<datadir>/regtest/{blocks,chainstate}` and the RPC cookie
`<datadir>/regtest/.cookie` (`__cookie__:<64 hex>`, mode 0600, removed on stop). A datadir that
is not given is a fresh temporary directory, deleted on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from poold.bitcoin.address import Network, address_to_script, p2wsh_address
from poold.bitcoin.block import parse_block
from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.script import OP_TRUE, p2wsh_script
from poold.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from poold.devnet import mining
from poold.devnet.chainstate import COINBASE_MATURITY, ChainView, Coin, UtxoSet
from poold.devnet.kernel import EntryInfo, ProcessResult, verify_scripts
from poold.devnet.kernel_process import KernelProcess
from poold.devnet.mempool import Mempool, MempoolEntry
from poold.devnet.methods import method_table
from poold.devnet.rpc import Credentials, RpcServer
from poold.devnet.zmqpub import ZmqPublisher

log = logging.getLogger("poold.devnet")

NETWORK = Network.REGTEST
# The devnet's own coins: P2WSH of `OP_TRUE`, spendable by anyone with witness [OP_TRUE].
# Consensus-valid (BIP141 v0 P2WSH, clean stack), so no keys or secp256k1 are needed.
WITNESS_SCRIPT = bytes([OP_TRUE])
DEVNET_SCRIPT = p2wsh_script(WITNESS_SCRIPT)
DEVNET_ADDRESS = p2wsh_address(WITNESS_SCRIPT, NETWORK)


class Devnet:
    """A regtest node served over JSON-RPC and ZMQ. `async with Devnet() as dn:`."""

    def __init__(
        self,
        datadir: Path | None = None,
        rpc_host: str = "127.0.0.1",
        rpc_port: int = 0,
        zmq_port: int = 0,
        rpc_user: str = "poold",
        rpc_password: str | None = None,
        *,
        zmq_host: str = "127.0.0.1",
    ) -> None:
        self._datadir_arg = datadir
        self._rpc_host = rpc_host
        self._rpc_port = rpc_port
        self._zmq_endpoint = f"tcp://{zmq_host}:{zmq_port}"
        self.rpc_user = rpc_user
        self.rpc_password = rpc_password if rpc_password is not None else secrets.token_hex(16)
        self.address = DEVNET_ADDRESS
        self.script_pubkey = DEVNET_SCRIPT
        self.network = NETWORK
        self.datadir: Path | None = None
        self.cookie_file: Path | None = None
        self.rpc_url = ""
        self.zmq_url = ""
        self.chain: ChainView | None = None
        self.utxos = UtxoSet()
        self.mempool = Mempool()
        self.started_at = 0.0
        self._ntx: dict[bytes, int] = {}
        self._kernel: KernelProcess | None = None
        self._rpc: RpcServer | None = None
        self._zmq: ZmqPublisher | None = None
        self._lock = asyncio.Lock()
        self._tip_changed = asyncio.Condition()
        self._extranonce = 0
        self._owns_datadir = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._kernel is not None:
            raise RuntimeError("devnet already started")
        self.started_at = time.monotonic()
        self._stopping = False
        if self._datadir_arg is None:
            self.datadir = Path(tempfile.mkdtemp(prefix="poold-devnet-"))
            self._owns_datadir = True
        else:
            self.datadir = self._datadir_arg
        netdir = self.datadir / "regtest"
        self._kernel = KernelProcess()
        try:
            await self._kernel.start(netdir)
            await self._load_chain()
            cookie = secrets.token_hex(32)
            self.cookie_file = _write_cookie(netdir / ".cookie", cookie)
            self._rpc = RpcServer(
                method_table(self), Credentials(self.rpc_user, self.rpc_password, cookie)
            )
            await self._rpc.start(self._rpc_host, self._rpc_port)
            self.rpc_url = f"http://{_host_for_url(self._rpc.host)}:{self._rpc.port}"
            self._zmq = ZmqPublisher()
            self.zmq_url = self._zmq.bind(self._zmq_endpoint)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "devnet up in %.0f ms: rpc %s zmq %s height %d datadir %s",
            (time.monotonic() - self.started_at) * 1000,
            self.rpc_url,
            self.zmq_url,
            self.height,
            self.datadir,
        )

    async def stop(self) -> None:
        """Stop serving, flush the kernel, remove the cookie (and a temporary datadir)."""
        self._stopping = True
        async with self._tip_changed:  # release long-polling getblocktemplate calls
            self._tip_changed.notify_all()
        if self._rpc is not None:
            await self._rpc.stop()
            self._rpc = None
        if self._zmq is not None:
            await self._zmq.close()
            self._zmq = None
        async with self._lock:
            if self._kernel is not None:
                kernel, self._kernel = self._kernel, None
                await kernel.close()
        if self.cookie_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.cookie_file.unlink()
            self.cookie_file = None
        if self._owns_datadir and self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)
            self._owns_datadir = False

    async def __aenter__(self) -> Devnet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _load_chain(self) -> None:
        """Build the Python-side view from the kernel's active chain (a persistent datadir may
        already hold blocks)."""
        entries, raws = await self._require_kernel().load()
        genesis_hash, genesis_header = entries[0]
        chain = ChainView(genesis_hash, BlockHeader.parse(genesis_header))
        self._ntx[genesis_hash] = 1
        for height, ((block_hash, _), raw) in enumerate(zip(entries[1:], raws, strict=True), 1):
            header, txs = parse_block(raw)
            chain.connect(block_hash, header, height)
            self.utxos.connect_block(block_hash, height, txs)
            self._ntx[block_hash] = len(txs)
        self.chain = chain

    # -- state -----------------------------------------------------------------------------

    def _require_kernel(self) -> KernelProcess:
        if self._kernel is None:
            raise RuntimeError("devnet is not running")
        return self._kernel

    @property
    def kernel_pid(self) -> int | None:
        """The process id of the kernel's child process (None when stopped)."""
        return self._kernel.pid if self._kernel is not None else None

    @property
    def failure(self) -> str | None:
        """Why the devnet's kernel process can no longer answer (None while it can)."""
        return self._kernel.failure if self._kernel is not None else None

    @property
    def view(self) -> ChainView:
        if self.chain is None:
            raise RuntimeError("devnet is not running")
        return self.chain

    @property
    def height(self) -> int:
        return self.view.height

    @property
    def tip_hash(self) -> bytes:
        return self.view.tip_hash

    @property
    def tip_hash_hex(self) -> str:
        return hash_to_hex(self.view.tip_hash)

    def ntx(self, block_hash: bytes) -> int | None:
        return self._ntx.get(block_hash)

    @property
    def longpollid(self) -> str:
        return f"{self.tip_hash_hex}{self.mempool.updates}"

    async def wait_zmq_subscribers(self, topic: str = "hashblock", count: int = 1) -> None:
        """Wait until `count` ZMQ subscriptions cover `topic` (avoids ZMQ's slow-joiner race).
        Bound it with `asyncio.timeout`."""
        if self._zmq is None:
            raise RuntimeError("devnet is not running")
        await self._zmq.wait_subscribers(topic, count)

    async def wait_tip_change(self, tip_hash: bytes, limit_s: float) -> bool:
        """Wait until the tip is not `tip_hash` (or the devnet stops); False on timeout."""
        async with self._tip_changed:
            try:
                await asyncio.wait_for(
                    self._tip_changed.wait_for(
                        lambda: self._stopping or self.tip_hash != tip_hash
                    ),
                    limit_s,
                )
            except TimeoutError:
                return False
        return True

    # -- blocks ----------------------------------------------------------------------------

    async def submit_block(self, raw: bytes) -> str | None:
        """bitcoind's submitblock: None if the block is valid and was checked, else the BIP22
        reason. Raises kernel.BlockDecodeError for bytes that are not a block."""
        async with self._lock:
            return await self._submit_locked(raw)

    async def _submit_locked(self, raw: bytes) -> str | None:
        result = await self._require_kernel().process_block(raw)
        await self._apply(result)
        return result.reason

    async def _apply(self, result: ProcessResult) -> None:
        """Mirror the kernel's chain events into the view, UTXO set and mempool; notify."""
        chain = self.view
        old_tip = chain.tip_hash
        disconnected: list[Tx] = []
        connected_txs: list[Tx] = []
        tip_raw = b""
        for ev in result.events:
            header, txs = parse_block(ev.raw)
            if ev.kind == "connected":
                chain.connect(ev.block_hash, header, ev.height)
                self.utxos.connect_block(ev.block_hash, ev.height, txs)
                self._ntx[ev.block_hash] = len(txs)
                self.mempool.remove_for_block(txs)
                connected_txs.extend(txs)
                tip_raw = ev.raw
            else:
                chain.disconnect(ev.block_hash)
                self.utxos.disconnect_block(ev.block_hash, txs)
                disconnected.extend(txs[1:])
        if disconnected:
            for tx, why in self.mempool.rebuild(disconnected, self.utxos, chain):
                log.info("reorg dropped tx %s from the mempool: %s", tx.txid_hex, why.reason)
        if chain.tip_hash != result.tip_hash:
            log.error(
                "devnet view out of step with the kernel: view tip %s, kernel tip %s",
                hash_to_hex(chain.tip_hash),
                hash_to_hex(result.tip_hash),
            )
        if chain.tip_hash == old_tip:
            return
        if self._zmq is not None:
            for tx in connected_txs:
                await self._zmq.publish("hashtx", tx.txid[::-1])
                await self._zmq.publish("rawtx", tx.serialize())
            await self._zmq.publish("hashblock", chain.tip_hash[::-1])
            await self._zmq.publish("rawblock", tip_raw)
        async with self._tip_changed:
            self._tip_changed.notify_all()

    async def read_block(self, block_hash: bytes) -> bytes | None:
        """The stored block (any branch), or None if unknown or header-only."""
        return await self._require_kernel().read_block(block_hash)

    async def entry_info(self, block_hash: bytes) -> EntryInfo | None:
        """The kernel's block index entry (any branch), or None if the block is unknown."""
        return await self._require_kernel().entry_info(block_hash)

    async def best_header_height(self) -> int:
        return await self._require_kernel().best_header_height()

    def block_candidate(self) -> mining.BlockCandidate:
        return mining.candidate(self.view, self.mempool.select(), int(time.time()))

    async def generate(
        self, n: int, address: str | None = None, max_tries: int = 1_000_000
    ) -> list[str]:
        """Mine `n` blocks paying `address` (default: the devnet's own anyone-can-spend
        address), each with the mempool's transactions, through the submitblock path."""
        script = DEVNET_SCRIPT if address is None else address_to_script(address, NETWORK)
        hashes: list[str] = []
        for _ in range(n):
            async with self._lock:
                c = self.block_candidate()
                self._extranonce += 1
                header = mining.grind(mining.build_block(c, script, self._extranonce), max_tries)
                if header is None:
                    break
                raw = mining.assemble(c, header, script, self._extranonce)
                reason = await self._submit_locked(raw)
            if reason is not None:
                raise RuntimeError(f"generated block {header.hash_hex} rejected: {reason}")
            hashes.append(header.hash_hex)
        return hashes

    # -- transactions ----------------------------------------------------------------------

    def accept_transaction(self, tx: Tx, max_fee_per_kvb: int | None = None) -> MempoolEntry:
        """Mempool acceptance with the kernel's script check; raises mempool.TxRejected."""
        entry = self.mempool.accept(
            tx, self.utxos, self.view, verify=_kernel_script_check, max_fee_per_kvb=max_fee_per_kvb
        )
        return entry

    async def relay(self, entry: MempoolEntry) -> None:
        if self._zmq is not None:
            await self._zmq.publish("hashtx", entry.txid[::-1])
            await self._zmq.publish("rawtx", entry.raw)

    def spendable_coins(self, include_unconfirmed: bool = False) -> list[tuple[OutPoint, Coin]]:
        """The devnet's own coins spendable in the next block, oldest first."""
        next_height = self.height + 1
        coins = [
            (op, coin)
            for op, coin in self.utxos.items()
            if coin.script_pubkey == DEVNET_SCRIPT
            and self.mempool.spender(op) is None
            and (not coin.is_coinbase or next_height - coin.height >= COINBASE_MATURITY)
        ]
        coins.sort(key=lambda item: item[1].height)
        if include_unconfirmed:
            for entry in self.mempool.entries():
                for vout, out in enumerate(entry.tx.outputs):
                    op = OutPoint(entry.txid, vout)
                    if out.script_pubkey == DEVNET_SCRIPT and self.mempool.spender(op) is None:
                        coins.append((op, Coin(out.value, out.script_pubkey, next_height, False)))
        return coins

    async def send_test_transaction(
        self,
        fee_sat: int = 1000,
        outputs: Sequence[tuple[str | bytes, int]] = (),
        *,
        unconfirmed: bool = False,
    ) -> str:
        """Spend one of the devnet's matured coinbase outputs (or, with `unconfirmed`, the
        newest unconfirmed devnet output, so the template gets a `depends`) as a segwit
        transaction paying `outputs` ((address or script, sats) pairs) plus change back to the
        devnet, with `fee_sat` fee; put it in the mempool and return its txid (hex)."""
        coins = self.spendable_coins(include_unconfirmed=unconfirmed)
        if unconfirmed:
            coins = [c for c in coins if c[0].txid in self.mempool]
        if not coins:
            raise RuntimeError(
                "no spendable devnet coin: mine 101+ blocks to the devnet's address first "
                "(await devnet.generate(101))"
                if not unconfirmed
                else "no unconfirmed devnet output in the mempool"
            )
        outpoint, coin = coins[-1] if unconfirmed else coins[0]
        tx_outputs = [
            TxOut(value, dest if isinstance(dest, bytes) else address_to_script(dest, NETWORK))
            for dest, value in outputs
        ]
        change = coin.value - sum(o.value for o in tx_outputs) - fee_sat
        if change < 0:
            raise ValueError(
                f"coin of {coin.value} sat cannot pay outputs {coin.value - change - fee_sat} "
                f"+ fee {fee_sat}"
            )
        if change > 0 or not tx_outputs:
            tx_outputs.append(TxOut(change, DEVNET_SCRIPT))
        tx = Tx(
            version=2,
            inputs=(TxIn(outpoint, b"", 0xFFFFFFFD, (WITNESS_SCRIPT,)),),
            outputs=tuple(tx_outputs),
            locktime=0,
        )
        entry = self.accept_transaction(tx)
        await self.relay(entry)
        return hash_to_hex(entry.txid)


def _kernel_script_check(tx: Tx, coins: Sequence[Coin]) -> str | None:
    return verify_scripts(tx.serialize(), [(c.script_pubkey, c.value) for c in coins])


def _write_cookie(path: Path, secret: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"__cookie__:{secret}")
    os.replace(tmp, path)
    return path


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
