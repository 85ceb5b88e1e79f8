"""The devnet's Python-side view of the kernel's active chain: headers by height and the UTXO set.

One responsibility: mirror what the kernel connected and disconnected (in its order), so RPC
answers (tip, median time past, chainwork) and mempool checks (inputs exist, coinbase maturity,
amounts) need no call into the kernel. The kernel stays the authority: this view is only ever
changed from the kernel's `block_connected` / `block_disconnected` events, or rebuilt from the
kernel's stored blocks at startup. Pure: no I/O.

Regtest facts used (Bitcoin Core chainparams / validation): subsidy halves every 150 blocks,
coinbase outputs mature after 100 blocks (COINBASE_MATURITY), no difficulty retargeting, the
genesis coinbase is not in the UTXO set, median time past is over the last 11 blocks (BIP113).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from poold.bitcoin.header import BlockHeader
from poold.bitcoin.target import bits_to_target
from poold.bitcoin.tx import OutPoint, Tx

COIN = 100_000_000
REGTEST_HALVING_INTERVAL = 150
COINBASE_MATURITY = 100
MEDIAN_TIME_SPAN = 11


def block_subsidy(height: int) -> int:
    """Regtest block subsidy in satoshis (GetBlockSubsidy with a 150-block halving interval)."""
    halvings = height // REGTEST_HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def block_work(bits: int) -> int:
    """GetBlockProof: expected number of hashes for a block at `bits`."""
    target = bits_to_target(bits)
    return (1 << 256) // (target + 1)


@dataclass(frozen=True, slots=True)
class Coin:
    """An unspent output and where it was created."""

    value: int
    script_pubkey: bytes
    height: int
    is_coinbase: bool


class ChainView:
    """Active-chain headers by height with cumulative work. Genesis is height 0."""

    def __init__(self, genesis_hash: bytes, genesis_header: BlockHeader) -> None:
        self._hashes: list[bytes] = [genesis_hash]
        self._headers: list[BlockHeader] = [genesis_header]
        self._work: list[int] = [block_work(genesis_header.bits)]
        self._heights: dict[bytes, int] = {genesis_hash: 0}

    @property
    def height(self) -> int:
        return len(self._hashes) - 1

    @property
    def tip_hash(self) -> bytes:
        return self._hashes[-1]

    @property
    def tip_header(self) -> BlockHeader:
        return self._headers[-1]

    def hash_at(self, height: int) -> bytes:
        if not 0 <= height <= self.height:
            raise IndexError(f"height {height} out of range 0..{self.height}")
        return self._hashes[height]

    def header_at(self, height: int) -> BlockHeader:
        return self._headers[height]

    def height_of(self, block_hash: bytes) -> int | None:
        """Height of `block_hash` if it is on the active chain."""
        return self._heights.get(block_hash)

    def chainwork_at(self, height: int) -> int:
        return self._work[height]

    def median_time_past(self, height: int | None = None) -> int:
        """BIP113 median of the last 11 block times ending at `height` (default: tip)."""
        h = self.height if height is None else height
        times = sorted(hd.ntime for hd in self._headers[max(0, h - MEDIAN_TIME_SPAN + 1) : h + 1])
        return times[len(times) // 2]

    def connect(self, block_hash: bytes, header: BlockHeader, height: int) -> None:
        if height != self.height + 1 or header.prevhash != self.tip_hash:
            raise ValueError(
                f"block at height {height} does not extend the view's tip (height {self.height})"
            )
        self._hashes.append(block_hash)
        self._headers.append(header)
        self._work.append(self._work[-1] + block_work(header.bits))
        self._heights[block_hash] = height

    def disconnect(self, block_hash: bytes) -> None:
        if block_hash != self.tip_hash or self.height == 0:
            raise ValueError("only the tip (above genesis) can be disconnected")
        self._hashes.pop()
        self._headers.pop()
        self._work.pop()
        del self._heights[block_hash]


class UtxoSet:
    """The UTXO set plus, per connected block, the coins it spent (to undo a disconnect)."""

    def __init__(self) -> None:
        self._coins: dict[OutPoint, Coin] = {}
        self._undo: dict[bytes, list[tuple[OutPoint, Coin]]] = {}

    def __len__(self) -> int:
        return len(self._coins)

    def get(self, outpoint: OutPoint) -> Coin | None:
        return self._coins.get(outpoint)

    def __contains__(self, outpoint: object) -> bool:
        return outpoint in self._coins

    def items(self) -> Iterable[tuple[OutPoint, Coin]]:
        return self._coins.items()

    def connect_block(self, block_hash: bytes, height: int, txs: Sequence[Tx]) -> None:
        """Apply a block the kernel connected (so every input is known to exist)."""
        spent: list[tuple[OutPoint, Coin]] = []
        for tx in txs:
            coinbase = tx.is_coinbase
            if not coinbase:
                for txin in tx.inputs:
                    coin = self._coins.pop(txin.prevout, None)
                    if coin is None:
                        raise ValueError(
                            f"UTXO view out of step with the kernel: {txin.prevout} missing"
                        )
                    spent.append((txin.prevout, coin))
            txid = tx.txid
            for vout, out in enumerate(tx.outputs):
                if _is_unspendable(out.script_pubkey):
                    continue
                self._coins[OutPoint(txid, vout)] = Coin(
                    out.value, out.script_pubkey, height, coinbase
                )
        self._undo[block_hash] = spent

    def disconnect_block(self, block_hash: bytes, txs: Sequence[Tx]) -> None:
        """Undo `connect_block` for the block the kernel just disconnected."""
        for tx in txs:
            txid = tx.txid
            for vout in range(len(tx.outputs)):
                self._coins.pop(OutPoint(txid, vout), None)
        for outpoint, coin in self._undo.pop(block_hash, []):
            self._coins[outpoint] = coin


def _is_unspendable(script: bytes) -> bool:
    # CScript::IsUnspendable: OP_RETURN outputs (and oversized scripts) never enter the UTXO set.
    return (len(script) > 0 and script[0] == 0x6A) or len(script) > 10_000
