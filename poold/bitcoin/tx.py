"""Transactions: value objects, legacy and BIP144 (segwit) serialization, txid vs wtxid,
weight and vsize (BIP141).

`Tx.serialize()` writes the witness form (marker 0x00, flag 0x01, per-input witness stacks) when
any input carries a witness, else the legacy form; `txid` always hashes the legacy form and
`wtxid` the full form. Parsing follows Core's rules for the optional-data flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.encoding import (
    ByteReader,
    DecodeError,
    compact_size,
    i64le,
    sha256d,
    u32le,
    var_bytes,
)

NULL_TXID = b"\0" * 32
COINBASE_VOUT = 0xFFFFFFFF
SEQUENCE_FINAL = 0xFFFFFFFF
WITNESS_SCALE_FACTOR = 4


@dataclass(frozen=True, slots=True)
class OutPoint:
    txid: bytes  # internal byte order
    vout: int

    def __post_init__(self) -> None:
        if len(self.txid) != 32:
            raise ValueError(f"outpoint txid must be 32 bytes, got {len(self.txid)}")
        if not 0 <= self.vout <= 0xFFFFFFFF:
            raise ValueError(f"outpoint index out of u32 range: {self.vout}")

    @property
    def is_null(self) -> bool:
        """The coinbase's prevout: all-zero txid and index 0xffffffff."""
        return self.txid == NULL_TXID and self.vout == COINBASE_VOUT

    def serialize(self) -> bytes:
        return self.txid + u32le(self.vout)


NULL_OUTPOINT = OutPoint(NULL_TXID, COINBASE_VOUT)


@dataclass(frozen=True, slots=True)
class TxIn:
    prevout: OutPoint
    script_sig: bytes
    sequence: int = SEQUENCE_FINAL
    witness: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.sequence <= 0xFFFFFFFF:
            raise ValueError(f"sequence out of u32 range: {self.sequence}")

    def serialize(self) -> bytes:
        return self.prevout.serialize() + var_bytes(self.script_sig) + u32le(self.sequence)


@dataclass(frozen=True, slots=True)
class TxOut:
    value: int  # satoshis
    script_pubkey: bytes

    def __post_init__(self) -> None:
        if not -(2**63) <= self.value < 2**63:
            raise ValueError(f"output value out of int64 range: {self.value}")

    def serialize(self) -> bytes:
        return i64le(self.value) + var_bytes(self.script_pubkey)


@dataclass(frozen=True, slots=True)
class Tx:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    def __post_init__(self) -> None:
        # Core (since v28) treats the tx version as uint32; negative versions are written as such.
        if not 0 <= self.version <= 0xFFFFFFFF:
            raise ValueError(f"tx version out of u32 range: {self.version}")
        if not 0 <= self.locktime <= 0xFFFFFFFF:
            raise ValueError(f"locktime out of u32 range: {self.locktime}")

    # -- serialization ---------------------------------------------------------------------

    @property
    def has_witness(self) -> bool:
        return any(i.witness for i in self.inputs)

    def _body(self) -> tuple[bytes, bytes]:
        ins = compact_size(len(self.inputs)) + b"".join(i.serialize() for i in self.inputs)
        outs = compact_size(len(self.outputs)) + b"".join(o.serialize() for o in self.outputs)
        return ins, outs

    def serialize_legacy(self) -> bytes:
        """Serialization without witness data (what the txid and the merkle tree hash)."""
        ins, outs = self._body()
        return u32le(self.version) + ins + outs + u32le(self.locktime)

    def serialize(self) -> bytes:
        """BIP144 witness serialization if any input has a witness, else the legacy form."""
        if not self.has_witness:
            return self.serialize_legacy()
        ins, outs = self._body()
        wit = b"".join(
            compact_size(len(i.witness)) + b"".join(var_bytes(item) for item in i.witness)
            for i in self.inputs
        )
        return u32le(self.version) + b"\x00\x01" + ins + outs + wit + u32le(self.locktime)

    # -- identity and size -----------------------------------------------------------------

    @property
    def txid(self) -> bytes:
        """sha256d of the legacy serialization, internal byte order."""
        return sha256d(self.serialize_legacy())

    @property
    def wtxid(self) -> bytes:
        """sha256d of the witness serialization (equals txid without witness), internal order."""
        return sha256d(self.serialize())

    @property
    def txid_hex(self) -> str:
        return hash_to_hex(self.txid)

    @property
    def wtxid_hex(self) -> str:
        return hash_to_hex(self.wtxid)

    @property
    def weight(self) -> int:
        """BIP141 weight: legacy size * 3 + full size."""
        return len(self.serialize_legacy()) * (WITNESS_SCALE_FACTOR - 1) + len(self.serialize())

    @property
    def vsize(self) -> int:
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].prevout.is_null

    # -- parsing ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> Tx:
        """Parse exactly one transaction; trailing bytes are a DecodeError."""
        r = ByteReader(data)
        tx = cls.read(r)
        r.expect_done("transaction")
        return tx

    @classmethod
    def read(cls, r: ByteReader) -> Tx:
        """Read one transaction (legacy or BIP144) from the reader's position.

        As in Core: an empty input list followed by a non-zero flag byte means extended
        serialization; flag bit 0 = witness data follows; unknown flag bits and a witness flag
        with all-empty witnesses are errors."""
        version = r.u32()
        n_in = r.compact_size()
        flags = 0
        if n_in == 0:
            flags = r.u8()
            if flags:
                n_in = r.compact_size()
        inputs = [_read_txin(r) for _ in range(n_in)]
        outputs = [_read_txout(r) for _ in range(r.compact_size())]
        if flags & 1:
            flags ^= 1
            with_wit = []
            for txin in inputs:
                items = tuple(r.var_bytes() for _ in range(r.compact_size()))
                with_wit.append(TxIn(txin.prevout, txin.script_sig, txin.sequence, items))
            inputs = with_wit
            if not any(i.witness for i in inputs):
                raise DecodeError("superfluous witness record (witness flag with no witness)")
        if flags:
            raise DecodeError(f"unknown transaction optional data flag 0x{flags:02x}")
        locktime = r.u32()
        return cls(version, tuple(inputs), tuple(outputs), locktime)


def _read_txin(r: ByteReader) -> TxIn:
    prevout = OutPoint(r.read(32), r.u32())
    script_sig = r.var_bytes()
    return TxIn(prevout, script_sig, r.u32())


def _read_txout(r: ByteReader) -> TxOut:
    value = r.i64()
    return TxOut(value, r.var_bytes())


def txids(txs: Sequence[Tx]) -> list[bytes]:
    return [t.txid for t in txs]
