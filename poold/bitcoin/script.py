"""Script building blocks: opcodes, data pushes, CScriptNum, the BIP34 height push, and the
standard output scripts (P2PKH, P2SH, segwit v0 P2WPKH/P2WSH per BIP141, v1 P2TR per BIP341,
the BIP141 witness commitment).

Pushes follow Bitcoin Core's `CScript::operator<<`: `push_data` is `<< std::vector` (no OP_N
shortcut), `push_int` is `<< int64` (OP_0, OP_1NEGATE, OP_1..OP_16, else a CScriptNum push).
"""

from __future__ import annotations

from poold.bitcoin.encoding import sha256

OP_0 = 0x00
OP_FALSE = OP_0
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_TRUE = OP_1
OP_16 = 0x60
OP_RETURN = 0x6A
OP_DUP = 0x76
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC

# BIP141: the commitment output's script is OP_RETURN, push 36, then this 4-byte header.
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")
WITNESS_COMMITMENT_PREFIX = bytes((OP_RETURN, 0x24)) + WITNESS_COMMITMENT_HEADER


def push_data(b: bytes) -> bytes:
    """Push `b` as data with the shortest PUSHDATA form (Core's `CScript() << vector`)."""
    n = len(b)
    if n < OP_PUSHDATA1:
        return bytes((n,)) + b
    if n <= 0xFF:
        return bytes((OP_PUSHDATA1, n)) + b
    if n <= 0xFFFF:
        return bytes((OP_PUSHDATA2,)) + n.to_bytes(2, "little") + b
    if n <= 0xFFFFFFFF:
        return bytes((OP_PUSHDATA4,)) + n.to_bytes(4, "little") + b
    raise ValueError("push too large")


def script_num(n: int) -> bytes:
    """CScriptNum serialization: minimal little-endian magnitude, sign in the top bit of the last
    byte (an extra 0x00/0x80 byte when the magnitude already uses that bit); 0 is empty."""
    if n == 0:
        return b""
    neg = n < 0
    mag = -n if neg else n
    out = bytearray()
    while mag:
        out.append(mag & 0xFF)
        mag >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0x00)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def push_int(n: int) -> bytes:
    """Push an integer as Core's `CScript() << int64` does: OP_0, OP_1NEGATE, OP_1..OP_16 for
    small values, otherwise push_data(script_num(n))."""
    if n == 0:
        return bytes((OP_0,))
    if n == -1:
        return bytes((OP_1NEGATE,))
    if 1 <= n <= 16:
        return bytes((OP_1 + n - 1,))
    return push_data(script_num(n))


def bip34_height_push(height: int) -> bytes:
    """The scriptSig prefix BIP34 requires of a coinbase at `height`.

    Consensus (Core's ContextualCheckBlock) demands the scriptSig start with `CScript() << nHeight`,
    so heights 1..16 are the single opcodes OP_1..OP_16 and larger heights a minimal CScriptNum
    data push (e.g. 17 -> 01 11, 128 -> 02 80 00)."""
    if height < 0:
        raise ValueError(f"block height must be >= 0, got {height}")
    return push_int(height)


def decode_script_num(b: bytes) -> int:
    """Inverse of script_num (little-endian magnitude, sign in the top bit of the last byte)."""
    if not b:
        return 0
    n = int.from_bytes(b, "little")
    if b[-1] & 0x80:
        return -(n & ~(0x80 << (8 * (len(b) - 1))))
    return n


def bip34_height(script_sig: bytes) -> int | None:
    """The block height a coinbase scriptSig starts with (BIP34), or None if it starts with no
    number push. Used to audit blocks; consensus itself compares against bip34_height_push."""
    if not script_sig:
        return None
    op = script_sig[0]
    if op == OP_0:
        return 0
    if OP_1 <= op <= OP_16:
        return op - OP_1 + 1
    if 1 <= op <= 8 and len(script_sig) > op:
        return decode_script_num(script_sig[1 : 1 + op])
    return None


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    _check_len(pubkey_hash, 20, "P2PKH key hash")
    return bytes((OP_DUP, OP_HASH160, 20)) + pubkey_hash + bytes((OP_EQUALVERIFY, OP_CHECKSIG))


def p2sh_script(script_hash: bytes) -> bytes:
    _check_len(script_hash, 20, "P2SH script hash")
    return bytes((OP_HASH160, 20)) + script_hash + bytes((OP_EQUAL,))


def witness_program_script(version: int, program: bytes) -> bytes:
    """scriptPubKey for a witness program: OP_n followed by a 2..40-byte push (BIP141)."""
    if not 0 <= version <= 16:
        raise ValueError(f"witness version must be 0..16, got {version}")
    if not 2 <= len(program) <= 40:
        raise ValueError(f"witness program must be 2..40 bytes, got {len(program)}")
    op = OP_0 if version == 0 else OP_1 + version - 1
    return bytes((op, len(program))) + program


def p2wpkh_script(pubkey_hash: bytes) -> bytes:
    _check_len(pubkey_hash, 20, "P2WPKH key hash")
    return witness_program_script(0, pubkey_hash)


def p2wsh_script(witness_script: bytes) -> bytes:
    """P2WSH scriptPubKey committing to `witness_script` (its single SHA-256, per BIP141)."""
    return witness_program_script(0, sha256(witness_script))


def p2tr_script(xonly_pubkey: bytes) -> bytes:
    _check_len(xonly_pubkey, 32, "P2TR x-only key")
    return witness_program_script(1, xonly_pubkey)


def op_return_script(data: bytes) -> bytes:
    return bytes((OP_RETURN,)) + push_data(data)


def witness_commitment_script(commitment: bytes) -> bytes:
    """The BIP141 commitment output script: 6a 24 aa21a9ed <32-byte commitment>."""
    _check_len(commitment, 32, "witness commitment")
    return WITNESS_COMMITMENT_PREFIX + commitment


def is_witness_commitment_script(script: bytes) -> bool:
    """BIP141's match rule: at least 38 bytes starting with 6a24aa21a9ed (extra bytes allowed)."""
    return len(script) >= 38 and script[:6] == WITNESS_COMMITMENT_PREFIX


def witness_program(script: bytes) -> tuple[int, bytes] | None:
    """(version, program) if `script` is a witness program per BIP141, else None."""
    if not 4 <= len(script) <= 42:
        return None
    op = script[0]
    if op != OP_0 and not OP_1 <= op <= OP_16:
        return None
    if script[1] + 2 != len(script):
        return None
    version = 0 if op == OP_0 else op - OP_1 + 1
    return version, script[2:]


def p2pkh_hash(script: bytes) -> bytes | None:
    """The key hash if `script` is exactly a P2PKH scriptPubKey."""
    if (
        len(script) == 25
        and script[:3] == bytes((OP_DUP, OP_HASH160, 20))
        and script[23:] == bytes((OP_EQUALVERIFY, OP_CHECKSIG))
    ):
        return script[3:23]
    return None


def p2sh_hash(script: bytes) -> bytes | None:
    """The script hash if `script` is exactly a P2SH scriptPubKey."""
    if len(script) == 23 and script[:2] == bytes((OP_HASH160, 20)) and script[22] == OP_EQUAL:
        return script[2:22]
    return None


def _check_len(b: bytes, n: int, what: str) -> None:
    if len(b) != n:
        raise ValueError(f"{what} must be {n} bytes, got {len(b)}")
