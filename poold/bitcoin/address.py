"""Bitcoin addresses <-> scriptPubKey for main, test, testnet4, signet and regtest.

Implements Base58Check (P2PKH/P2SH), bech32 (BIP173, segwit v0: P2WPKH/P2WSH) and bech32m
(BIP350, witness v1+: P2TR). Every rejection raises AddressError naming the reason (bad checksum,
wrong network, bech32/bech32m mismatch, bad witness version or program length, mixed case, bad
character...), because an operator typing a payout address must learn what is wrong with it.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from poold.bitcoin.encoding import sha256, sha256d
from poold.bitcoin.script import (
    p2pkh_hash,
    p2pkh_script,
    p2sh_hash,
    p2sh_script,
    witness_program,
    witness_program_script,
)
from poold.errors import PooldError


class AddressError(PooldError, ValueError):
    """An address that cannot be paid to on the requested network; the message says why."""


class Network(StrEnum):
    """A Bitcoin chain; the value is the `chain` field of bitcoind's getblockchaininfo."""

    MAIN = "main"
    TEST = "test"
    TESTNET4 = "testnet4"
    SIGNET = "signet"
    REGTEST = "regtest"

    @property
    def chain_name(self) -> str:
        return self.value

    @property
    def bech32_hrp(self) -> str:
        return _HRP[self]

    @property
    def p2pkh_version(self) -> int:
        return 0x00 if self is Network.MAIN else 0x6F

    @property
    def p2sh_version(self) -> int:
        return 0x05 if self is Network.MAIN else 0xC4


_HRP = {
    Network.MAIN: "bc",
    Network.TEST: "tb",
    Network.TESTNET4: "tb",
    Network.SIGNET: "tb",
    Network.REGTEST: "bcrt",
}
_KNOWN_HRPS = ("bc", "tb", "bcrt")
# Longest valid address: bech32 (90 characters); base58 addresses are at most 35. The cap keeps
# base58's quadratic big-integer decoding cheap on garbage input.
MAX_ADDRESS_LENGTH = 90

# ---------------------------------------------------------------------------------------------
# bech32 / bech32m (BIP173, BIP350)

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
BECH32_MAX_LENGTH = 90


class Encoding(Enum):
    BECH32 = 1
    BECH32M = 0x2BC830A3  # BIP350's checksum constant; bech32's is 1

    @property
    def label(self) -> str:
        return "bech32" if self is Encoding.BECH32 else "bech32m"


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp: str, data: list[int], encoding: Encoding) -> str:
    """Encode 5-bit values under `hrp` with the bech32 or bech32m checksum."""
    values = _hrp_expand(hrp) + data
    mod = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ encoding.value
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def bech32_decode(s: str) -> tuple[str, list[int], Encoding]:
    """Decode a bech32/bech32m string to (hrp lowercased, 5-bit data without checksum, encoding).

    Raises AddressError for mixed case, bad characters, bad length, missing separator or a
    checksum that is valid under neither constant."""
    if len(s) > BECH32_MAX_LENGTH:
        raise AddressError(f"bech32 string too long ({len(s)} > {BECH32_MAX_LENGTH} characters)")
    for c in s:
        if not 33 <= ord(c) <= 126:
            raise AddressError(f"invalid character {c!r} (code {ord(c)}) in bech32 string")
    if s.lower() != s and s.upper() != s:
        raise AddressError("mixed upper and lower case in bech32 string")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1:
        raise AddressError("bech32 string has an empty human-readable part or no separator '1'")
    if pos + 7 > len(s):
        raise AddressError("bech32 checksum too short (fewer than 6 characters after '1')")
    hrp = s[:pos]
    data: list[int] = []
    for c in s[pos + 1 :]:
        if c not in _CHARSET_REV:
            raise AddressError(f"invalid bech32 data character {c!r}")
        data.append(_CHARSET_REV[c])
    const = _polymod(_hrp_expand(hrp) + data)
    for enc in Encoding:
        if const == enc.value:
            return hrp, data[:-6], enc
    raise AddressError("bad bech32/bech32m checksum")


def _convertbits(data: list[int] | bytes, frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise AddressError("invalid bech32 padding (more than 4 bits of padding)")
    elif (acc << (tobits - bits)) & maxv:
        raise AddressError("invalid bech32 padding (non-zero padding bits)")
    return out


def decode_segwit_address(hrp: str, address: str) -> tuple[int, bytes]:
    """(witness version, program) of a segwit address under `hrp`, validated per BIP173/BIP350."""
    got_hrp, data, enc = bech32_decode(address)
    if got_hrp != hrp:
        raise AddressError(f"wrong network: address prefix {got_hrp!r}, expected {hrp!r}")
    if not data:
        raise AddressError("segwit address has no witness version")
    version = data[0]
    if version > 16:
        raise AddressError(f"invalid witness version {version} (must be 0..16)")
    program = bytes(_convertbits(data[1:], 5, 8, False))
    if not 2 <= len(program) <= 40:
        raise AddressError(f"invalid witness program length {len(program)} (must be 2..40)")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError(
            f"invalid witness v0 program length {len(program)} (must be 20 or 32 bytes)"
        )
    if version == 0 and enc is not Encoding.BECH32:
        raise AddressError("witness v0 address must use bech32, not bech32m (BIP350)")
    if version != 0 and enc is not Encoding.BECH32M:
        raise AddressError(f"witness v{version} address must use bech32m, not bech32 (BIP350)")
    return version, program


def encode_segwit_address(hrp: str, version: int, program: bytes) -> str:
    """Segwit address: bech32 for v0, bech32m for v1+ (BIP350)."""
    if not 0 <= version <= 16:
        raise AddressError(f"invalid witness version {version}")
    if not 2 <= len(program) <= 40 or (version == 0 and len(program) not in (20, 32)):
        raise AddressError(f"invalid witness program length {len(program)} for v{version}")
    enc = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [version, *_convertbits(program, 8, 5, True)], enc)


# ---------------------------------------------------------------------------------------------
# Base58Check

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_REV = {c: i for i, c in enumerate(_B58)}


def base58_encode(b: bytes) -> str:
    n = int.from_bytes(b, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(b) - len(b.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def base58_decode(s: str) -> bytes:
    n = 0
    for i, c in enumerate(s):
        if c not in _B58_REV:
            raise AddressError(f"invalid base58 character {c!r} at position {i}")
        n = n * 58 + _B58_REV[c]
    zeros = len(s) - len(s.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def base58check_encode(payload: bytes) -> str:
    return base58_encode(payload + sha256d(payload)[:4])


def base58check_decode(s: str) -> bytes:
    """Payload of a Base58Check string (checksum verified and stripped)."""
    if not s:
        raise AddressError("empty address")
    raw = base58_decode(s)
    if len(raw) < 5:
        raise AddressError("base58 string too short to carry a checksum")
    payload, checksum = raw[:-4], raw[-4:]
    if sha256d(payload)[:4] != checksum:
        raise AddressError("bad base58check checksum")
    return payload


# ---------------------------------------------------------------------------------------------
# address <-> scriptPubKey


def _looks_bech32(address: str) -> str | None:
    low = address.lower()
    for hrp in sorted(_KNOWN_HRPS, key=len, reverse=True):
        if low.startswith(hrp + "1"):
            return hrp
    return None


def _networks_for_hrp(hrp: str) -> str:
    return "/".join(n.value for n in Network if n.bech32_hrp == hrp)


def address_to_script(
    address: str, network: Network, *, allow_future_witness: bool = False
) -> bytes:
    """scriptPubKey paying `address` on `network`.

    Witness versions 2..16 (and v1 programs that are not 32 bytes) are valid BIP350 addresses but
    are not yet defined by any soft fork, so paying to them gives the coins away; they are refused
    unless `allow_future_witness` is set (used by the BIP350 vector tests)."""
    if not isinstance(address, str):
        raise AddressError(f"address must be a string, got {type(address).__name__}")
    if address != address.strip():
        raise AddressError("address has leading or trailing whitespace")
    if not address:
        raise AddressError("empty address")
    if len(address) > MAX_ADDRESS_LENGTH:
        raise AddressError(f"address too long ({len(address)} characters)")
    hrp = _looks_bech32(address)
    if hrp is not None:
        if hrp != network.bech32_hrp:
            raise AddressError(
                f"wrong network: {hrp!r} address is for {_networks_for_hrp(hrp)}, "
                f"not {network.value} (expected prefix {network.bech32_hrp!r})"
            )
        version, program = decode_segwit_address(hrp, address)
        defined = version == 0 or (version == 1 and len(program) == 32)
        if not defined and not allow_future_witness:
            raise AddressError(
                f"witness v{version} with a {len(program)}-byte program is not defined by any "
                "soft fork yet; refusing to pay to it"
            )
        return witness_program_script(version, program)
    payload = base58check_decode(address)
    if len(payload) != 21:
        raise AddressError(f"base58 address payload must be 21 bytes, got {len(payload)}")
    version_byte, h = payload[0], payload[1:]
    if version_byte == network.p2pkh_version:
        return p2pkh_script(h)
    if version_byte == network.p2sh_version:
        return p2sh_script(h)
    for other in Network:
        if version_byte in (other.p2pkh_version, other.p2sh_version):
            raise AddressError(
                f"wrong network: base58 version byte 0x{version_byte:02x} is for "
                f"{other.value}, not {network.value}"
            )
    raise AddressError(f"unknown base58 address version byte 0x{version_byte:02x}")


def script_to_address(script: bytes, network: Network) -> str | None:
    """The address of a standard scriptPubKey on `network`, or None for non-address scripts."""
    h = p2pkh_hash(script)
    if h is not None:
        return base58check_encode(bytes((network.p2pkh_version,)) + h)
    h = p2sh_hash(script)
    if h is not None:
        return base58check_encode(bytes((network.p2sh_version,)) + h)
    wp = witness_program(script)
    if wp is not None:
        version, program = wp
        if version == 0 and len(program) not in (20, 32):
            return None
        return encode_segwit_address(network.bech32_hrp, version, program)
    return None


def p2pkh_address(h160: bytes, network: Network) -> str:
    if len(h160) != 20:
        raise AddressError("P2PKH hash must be 20 bytes")
    return base58check_encode(bytes((network.p2pkh_version,)) + h160)


def p2sh_address(h160: bytes, network: Network) -> str:
    if len(h160) != 20:
        raise AddressError("P2SH hash must be 20 bytes")
    return base58check_encode(bytes((network.p2sh_version,)) + h160)


def p2wpkh_address(pubkey_hash: bytes, network: Network) -> str:
    if len(pubkey_hash) != 20:
        raise AddressError("P2WPKH key hash must be 20 bytes")
    return encode_segwit_address(network.bech32_hrp, 0, pubkey_hash)


def p2wsh_address(script: bytes, network: Network) -> str:
    """P2WSH address of a witness script (committed to by its SHA-256)."""
    return encode_segwit_address(network.bech32_hrp, 0, sha256(script))


def p2tr_address(xonly: bytes, network: Network) -> str:
    if len(xonly) != 32:
        raise AddressError("P2TR output key must be 32 bytes (x-only)")
    return encode_segwit_address(network.bech32_hrp, 1, xonly)
