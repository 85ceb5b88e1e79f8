"""Bitcoin Core's consensus engine for the devnet: libbitcoinkernel (PyPI py-bitcoinkernel).

One responsibility: hand raw blocks to the kernel and turn its verdict into what bitcoind's
`submitblock` answers (BIP22: null, or a reject reason string), plus the chain events (blocks
connected/disconnected) the rest of the devnet needs to keep its UTXO view, mempool and ZMQ
publisher in step.

How the verdict is decided mirrors Bitcoin Core's `submitblock` (src/rpc/mining.cpp): the block's
own `BlockChecked` validation state decides; no state for the block means it was stored but not
connected (stale or equal-work fork: "inconclusive") or, if it was not new, "duplicate". The kernel
API exposes only the coarse `BlockValidationResult`, so the reason *string* is read from the
kernel's own log line for the failed check (`AcceptBlock FAILED (<reason>, ...)`, `ConnectBlock
<hash> failed, <reason>, ...`): the exact text bitcoind would return.

Threading contract: a `Kernel` is confined to the thread that calls its methods (the devnet runs
it in a child process of its own, `kernel_process`, on that process's main thread). Validation
callbacks and log lines are delivered synchronously on that thread, which is how a log line is
tied to the call that caused it.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pbk
import pbk.capi.bindings as _capi
from pbk.script import PrecomputedTransactionData

from poold.errors import PooldError

log = logging.getLogger("poold.devnet.kernel")

_ZERO_HASH = b"\0" * 32

# Fallbacks only used if no log line carried the reason (e.g. kernel logging changed).
_FALLBACK_REASON = {
    pbk.BlockValidationResult.MISSING_PREV: "prev-blk-not-found",
    pbk.BlockValidationResult.INVALID_PREV: "bad-prevblk",
    pbk.BlockValidationResult.CACHED_INVALID: "duplicate-invalid",
    pbk.BlockValidationResult.TIME_FUTURE: "time-too-new",
}
# Core logs BlockValidationState::ToString() = reason [", " debug]; a reason may itself carry a
# parenthesised detail ("block-script-verify-flag-failed (Witness program hash mismatch)").
_ACCEPT_FAILED = re.compile(r"AcceptBlock FAILED \((.*)\)\s*$")
_CONNECT_FAILED = re.compile(r"ConnectBlock ([0-9a-f]{64}) failed, (.*?)\s*$")


class BlockDecodeError(PooldError, ValueError):
    """The bytes are not a block (bitcoind: -22 "Block decode failed")."""


class KernelError(PooldError, RuntimeError):
    """The kernel failed internally (not a verdict about the block)."""


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One block connected to or disconnected from the active chain, in kernel order."""

    kind: Literal["connected", "disconnected"]
    block_hash: bytes
    height: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """The kernel's verdict on one submitted block and what it did to the chain."""

    block_hash: bytes
    reason: str | None  # None: valid and checked; else the BIP22 string ("duplicate", ...)
    events: tuple[ChainEvent, ...]
    tip_hash: bytes
    tip_height: int


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """A block index entry: known header, maybe not on the active chain, maybe without data."""

    block_hash: bytes
    height: int
    header: bytes  # 80 bytes
    in_active_chain: bool
    median_time: int  # BIP113 median time past at this block


class _LogRouter:
    """The kernel's logger is process-global: one connection, lines routed to the calling thread.

    A thread that is validating installs a capture list; every kernel line emitted on that thread
    while it is installed lands there. All lines also go to the Python logger at DEBUG.
    """

    _instance: _LogRouter | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._local = threading.local()
        self._conn = pbk.LoggingConnection(self._on_line)

    @classmethod
    def get(cls) -> _LogRouter:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_line(self, line: str) -> None:
        # Called from C: must never raise.
        capture: list[str] | None = getattr(self._local, "capture", None)
        if capture is not None:
            capture.append(line)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", line.rstrip())

    def start_capture(self) -> list[str]:
        capture: list[str] = []
        self._local.capture = capture
        return capture

    def stop_capture(self) -> None:
        self._local.capture = None


class Kernel:
    """A regtest chainstate in `datadir` (created if needed). Thread-confined: see module doc."""

    def __init__(self, datadir: Path) -> None:
        self._router = _LogRouter.get()
        self._checked: dict[bytes, tuple[pbk.ValidationMode, pbk.BlockValidationResult]] = {}
        self._events: list[ChainEvent] = []
        callbacks = pbk.ValidationInterfaceCallbacks(
            block_checked=self._on_checked,
            block_connected=self._on_connected,
            block_disconnected=self._on_disconnected,
        )
        datadir.mkdir(parents=True, exist_ok=True)
        try:
            self._chainman: pbk.ChainstateManager | None = pbk.load_chainman(
                datadir, pbk.ChainType.REGTEST, validation_callbacks=callbacks
            )
        except RuntimeError as exc:
            raise KernelError(
                f"cannot open a regtest chainstate in {datadir} (already in use by another "
                f"process or devnet?): {exc}"
            ) from exc
        self._callbacks = callbacks

    # Callbacks run on the validating thread, inside process_block; they only record.
    def _on_checked(self, _ud: Any, block: pbk.Block, state: pbk.BlockValidationState) -> None:
        self._checked[bytes(block.block_hash)] = (
            state.validation_mode,
            state.block_validation_result,
        )

    def _on_connected(self, _ud: Any, block: pbk.Block, entry: pbk.BlockTreeEntry) -> None:
        self._events.append(
            ChainEvent("connected", bytes(block.block_hash), entry.height, bytes(block))
        )

    def _on_disconnected(self, _ud: Any, block: pbk.Block, entry: pbk.BlockTreeEntry) -> None:
        self._events.append(
            ChainEvent("disconnected", bytes(block.block_hash), entry.height, bytes(block))
        )

    @property
    def _cm(self) -> pbk.ChainstateManager:
        if self._chainman is None:
            raise KernelError("kernel is closed")
        return self._chainman

    def close(self) -> None:
        """Flush and release the datadir (the chainstate manager is destroyed here)."""
        self._chainman = None

    @staticmethod
    def parse_block(raw: bytes) -> pbk.Block:
        # pbk.Block(raw) unpacks every byte as a ctypes argument; copying the buffer is O(n).
        buf = (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw)
        ptr = _capi.btck_block_create(buf, len(raw))
        if not ptr:
            raise BlockDecodeError("Block decode failed")
        return pbk.Block._from_handle(ptr)

    def process_block(self, raw: bytes) -> ProcessResult:
        """Validate and store `raw`; the answer is bitcoind's submitblock answer (module doc)."""
        block = self.parse_block(raw)
        txs = block.transactions
        if len(txs) == 0 or not _is_coinbase(txs[0]):
            raise BlockDecodeError("Block does not start with a coinbase")
        block_hash = bytes(block.block_hash)
        self._checked.clear()
        self._events.clear()
        capture = self._router.start_capture()
        try:
            try:
                is_new = self._cm.process_block(block)
                accepted = True
            except pbk.ProcessBlockException:
                is_new, accepted = True, False
        finally:
            self._router.stop_capture()
        events = tuple(self._events)
        self._events.clear()
        state = self._checked.pop(block_hash, None)
        self._checked.clear()
        reason: str | None
        if state is None:
            reason = "duplicate" if (accepted and not is_new) else "inconclusive"
        else:
            mode, result = state
            if mode == pbk.ValidationMode.VALID:
                reason = None
            elif mode == pbk.ValidationMode.INTERNAL_ERROR:
                raise KernelError(f"kernel error validating block: {' '.join(capture)[-500:]}")
            else:
                reason = _reason_from_log(capture, block_hash) or _FALLBACK_REASON.get(
                    result, "rejected"
                )
        tip_hash, tip_height = self.tip()
        return ProcessResult(block_hash, reason, events, tip_hash, tip_height)

    def tip(self) -> tuple[bytes, int]:
        chain = self._cm.get_active_chain()
        height = chain.height
        entry = chain.block_tree_entries[height]
        return bytes(entry.block_hash), height

    def best_header_height(self) -> int:
        return int(self._cm.best_entry.height)

    def active_chain(self, start: int = 0) -> list[tuple[bytes, bytes]]:
        """(hash, 80-byte header) of each active-chain block from `start` to the tip."""
        chain = self._cm.get_active_chain()
        entries = chain.block_tree_entries
        return [
            (bytes(e.block_hash), bytes(e.block_header))
            for e in (entries[h] for h in range(start, chain.height + 1))
        ]

    def load(self) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """The active chain: (hash, header) from genesis to the tip, and every block after genesis
        (a persistent datadir may already hold blocks)."""
        entries = self.active_chain(0)
        raws = []
        for block_hash, _ in entries[1:]:
            raw = self.read_block(block_hash)
            if raw is None:
                raise KernelError(f"active-chain block {block_hash[::-1].hex()} has no data")
            raws.append(raw)
        return entries, raws

    def read_block(self, block_hash: bytes) -> bytes | None:
        """The stored block, or None if unknown or header-only."""
        entry = self._entry(block_hash)
        if entry is None:
            return None
        try:
            return bytes(self._cm.blocks[entry])
        except RuntimeError:  # header known, block data not stored
            return None

    def entry_info(self, block_hash: bytes) -> EntryInfo | None:
        entry = self._entry(block_hash)
        if entry is None:
            return None
        chain = self._cm.get_active_chain()
        times = [int(entry.block_header.timestamp.timestamp())]
        walk = entry
        while len(times) < 11 and walk.height > 0:
            walk = walk.previous
            times.append(int(walk.block_header.timestamp.timestamp()))
        times.sort()
        return EntryInfo(
            block_hash,
            int(entry.height),
            bytes(entry.block_header),
            entry in chain.block_tree_entries,
            times[len(times) // 2],
        )

    def _entry(self, block_hash: bytes) -> pbk.BlockTreeEntry | None:
        entries = self._cm.block_tree_entries
        key = pbk.BlockHash(block_hash)
        if key not in entries:
            return None
        return entries[key]


def verify_scripts(raw_tx: bytes, spent: list[tuple[bytes, int]]) -> str | None:
    """Run the kernel's script interpreter on every input with all consensus flags (P2SH, BIP66,
    BIP65, BIP112, BIP141/143, BIP341/342); None if all pass, else bitcoind's reject reason.
    Stateless (no chainstate): safe on any thread."""
    buf = (ctypes.c_ubyte * len(raw_tx)).from_buffer_copy(raw_tx)
    ptr = _capi.btck_transaction_create(buf, len(raw_tx))
    if not ptr:
        return "TX decode failed"
    tx = pbk.Transaction._from_handle(ptr)
    outputs = [pbk.TransactionOutput(pbk.ScriptPubkey(script), value) for script, value in spent]
    precomputed = PrecomputedTransactionData(tx, outputs)
    for index, (out, (_, value)) in enumerate(zip(outputs, spent, strict=True)):
        try:
            ok = out.script_pubkey.verify(
                value, tx, precomputed, index, pbk.ScriptVerificationFlags.ALL
            )
        except pbk.ScriptVerifyException as exc:
            return f"mandatory-script-verify-flag-failed (input {index}: {exc})"
        if not ok:
            return f"mandatory-script-verify-flag-failed (input {index} script failed)"
    return None


def _is_coinbase(tx: pbk.Transaction) -> bool:
    inputs = tx.inputs
    if len(inputs) != 1:
        return False
    out_point = inputs[0].out_point
    return out_point.index == 0xFFFFFFFF and bytes(out_point.txid) == _ZERO_HASH


def _reason_from_log(lines: list[str], block_hash: bytes) -> str | None:
    """Core's reject reason for `block_hash` from the kernel's log lines of one call."""
    hash_hex = block_hash[::-1].hex()
    for line in lines:
        m = _CONNECT_FAILED.search(line)
        if m is not None and m.group(1) == hash_hex:
            return m.group(2).split(", ", 1)[0]
    for line in lines:
        m = _ACCEPT_FAILED.search(line)
        if m is not None:
            return m.group(1).split(", ", 1)[0]
    return None
