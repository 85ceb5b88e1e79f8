"""The pool's coinbase transaction, split into Stratum's coinb1/coinb2 around the extranonce.

Layout (legacy serialization, docs/STRATUM.md §7):
`version | 01 | null prevout | len | scriptSig | ffffffff | n_out | outputs | locktime`, with
scriptSig = BIP34 height push (Core's `CScript() << height`) || tag || extranonce1 || extranonce2.
coinb1 ends exactly where extranonce1 starts, coinb2 starts right after extranonce2. Outputs are
the payouts, then the BIP141 witness commitment from GBT's `default_witness_commitment` (its
value does not depend on the coinbase, so it stays valid for any coinbase we build).

Limits checked here: scriptSig 2..100 bytes (consensus, "bad-cb-length"), at least one output,
and the legacy size <= max_size: ASIC firmware caps the coinbase it accepts (DATUM ships 730
bytes as its generic Antminer class) and GBT leaves only a few thousand weight units for it.
Not checked: sigops. Consensus counts opcodes in the tag, the extranonce bytes and the payout
scripts, and Core reserves 400 sigop cost for the coinbase; standard payouts (P2WPKH, P2TR,
P2PKH) stay far below that, bare-multisig payouts would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from poold.bitcoin.encoding import compact_size, u32le
from poold.bitcoin.script import bip34_height_push, is_witness_commitment_script
from poold.bitcoin.tx import NULL_OUTPOINT, SEQUENCE_FINAL, Tx, TxIn, TxOut
from poold.errors import PooldError

DEFAULT_MAX_COINBASE_SIZE = 730
MIN_SCRIPT_SIG = 2
MAX_SCRIPT_SIG = 100
WITNESS_RESERVED_VALUE = b"\0" * 32
COINBASE_VERSION = 2


class CoinbaseError(PooldError, ValueError):
    """The requested coinbase cannot be built (size limits, bad extranonce, bad outputs)."""


@dataclass(frozen=True, slots=True)
class CoinbaseParts:
    """A coinbase split for `mining.notify`: legacy bytes = coinb1 || en1 || en2 || coinb2."""

    coinb1: bytes
    coinb2: bytes
    extranonce1_size: int
    extranonce2_size: int
    has_witness_commitment: bool

    def legacy_bytes(self, extranonce1: bytes, extranonce2: bytes) -> bytes:
        """The legacy serialization for one extranonce pair (what the txid hashes)."""
        if len(extranonce1) != self.extranonce1_size:
            raise CoinbaseError(
                f"extranonce1 must be {self.extranonce1_size} bytes, got {len(extranonce1)}"
            )
        if len(extranonce2) != self.extranonce2_size:
            raise CoinbaseError(
                f"extranonce2 must be {self.extranonce2_size} bytes, got {len(extranonce2)}"
            )
        return self.coinb1 + extranonce1 + extranonce2 + self.coinb2

    def assemble(self, extranonce1: bytes, extranonce2: bytes) -> Tx:
        """The coinbase Tx as it goes into a block: with the 32-byte zero witness reserved value
        as its input's witness when the block commits to witnesses (BIP141)."""
        tx = Tx.parse(self.legacy_bytes(extranonce1, extranonce2))
        if not self.has_witness_commitment:
            return tx
        txin = tx.inputs[0]
        with_witness = TxIn(txin.prevout, txin.script_sig, txin.sequence, (WITNESS_RESERVED_VALUE,))
        return Tx(tx.version, (with_witness,), tx.outputs, tx.locktime)

    @property
    def size(self) -> int:
        """Legacy size in bytes of any coinbase built from these parts."""
        return len(self.coinb1) + self.extranonce1_size + self.extranonce2_size + len(self.coinb2)


def build_coinbase(
    height: int,
    outputs: Sequence[TxOut],
    *,
    tag: bytes,
    witness_commitment_script: bytes | None,
    extranonce1_size: int = 4,
    extranonce2_size: int = 8,
    max_size: int = DEFAULT_MAX_COINBASE_SIZE,
    max_value: int | None = None,
    version: int = COINBASE_VERSION,
) -> CoinbaseParts:
    """Build the coinbase for block `height` paying `outputs` (in order), then the witness
    commitment output if `witness_commitment_script` (GBT `default_witness_commitment`) is set.

    `max_value`, when given (GBT `coinbasevalue`), bounds the sum of the payout values."""
    if height < 1:
        raise CoinbaseError(f"coinbase height must be >= 1, got {height}")
    if extranonce1_size < 0 or extranonce2_size < 1:
        raise CoinbaseError("extranonce1 size must be >= 0 and extranonce2 size >= 1")
    for i, out in enumerate(outputs):
        if out.value < 0:
            raise CoinbaseError(f"output {i} has a negative value {out.value}")
    total = sum(o.value for o in outputs)
    if max_value is not None and total > max_value:
        raise CoinbaseError(f"outputs pay {total} sat, more than the coinbase value {max_value}")
    all_outputs = list(outputs)
    if witness_commitment_script is not None:
        if not is_witness_commitment_script(witness_commitment_script):
            raise CoinbaseError(
                "witness commitment script must start with 6a24aa21a9ed and be >= 38 bytes, "
                f"got {witness_commitment_script[:8].hex()}..."
            )
        all_outputs.append(TxOut(0, witness_commitment_script))
    if not all_outputs:
        raise CoinbaseError("a coinbase needs at least one output")

    script_prefix = bip34_height_push(height) + tag
    script_len = len(script_prefix) + extranonce1_size + extranonce2_size
    if not MIN_SCRIPT_SIG <= script_len <= MAX_SCRIPT_SIG:
        raise CoinbaseError(
            f"coinbase scriptSig would be {script_len} bytes (height push "
            f"{len(script_prefix) - len(tag)} + tag {len(tag)} + extranonce "
            f"{extranonce1_size + extranonce2_size}); consensus allows "
            f"{MIN_SCRIPT_SIG}..{MAX_SCRIPT_SIG}"
        )
    coinb1 = (
        u32le(version)
        + compact_size(1)
        + NULL_OUTPOINT.serialize()
        + compact_size(script_len)
        + script_prefix
    )
    coinb2 = (
        u32le(SEQUENCE_FINAL)
        + compact_size(len(all_outputs))
        + b"".join(o.serialize() for o in all_outputs)
        + u32le(0)  # locktime
    )
    parts = CoinbaseParts(
        coinb1=coinb1,
        coinb2=coinb2,
        extranonce1_size=extranonce1_size,
        extranonce2_size=extranonce2_size,
        has_witness_commitment=witness_commitment_script is not None,
    )
    if parts.size > max_size:
        raise CoinbaseError(
            f"coinbase would be {parts.size} bytes, above the limit of {max_size} "
            f"({len(all_outputs)} outputs); reduce outputs or the tag, or raise max_size"
        )
    return parts
