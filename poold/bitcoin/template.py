"""Block templates: one immutable `Template` per piece of work bitcoind hands out.

Parses a BIP22/BIP23 `getblocktemplate` answer (with the BIP9 `rules` negotiation and the BIP141
`default_witness_commitment`) into a frozen value object, and builds the coinbase-only template
that lets miners switch to a new tip before the full template is ready.

Pure: no I/O. Byte order is in the name (see `poold.bitcoin`): `prevhash`, `txid`, `wtxid` are
internal bytes, the RPC's display hex goes through `poold.bitcoin.byteorder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from poold.bitcoin.byteorder import hash_from_hex, hash_to_hex
from poold.bitcoin.target import bits_to_target
from poold.errors import PooldError

# "!"-prefixed GBT rules are ones a client must understand to use the template (BIP9 "rules",
# https://github.com/bitcoin/bips/blob/master/bip-0009.mediawiki#getblocktemplate-changes).
# We build segwit coinbases (BIP141 commitment) and accept the signet rule: nothing else.
SUPPORTED_MANDATORY_RULES = frozenset({"segwit", "signet"})

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
MAX_BLOCK_WEIGHT = 4_000_000
U32_MAX = 0xFFFFFFFF
# Bitcoin Core chainparams: nSubsidyHalvingInterval (regtest uses 150).
HALVING_INTERVAL = {"main": 210_000, "test": 210_000, "testnet4": 210_000, "signet": 210_000,
                    "regtest": 150}
# Bitcoin Core consensus: DifficultyAdjustmentInterval() = 2016 on every network.
RETARGET_INTERVAL = 2016


class TemplateError(PooldError, ValueError):
    """A getblocktemplate answer poold cannot (or must not) mine on."""


@dataclass(frozen=True, slots=True)
class TemplateTx:
    """One non-coinbase transaction of a template, in block order."""

    data: bytes  # serialized, witness form when it has witnesses (as GBT "data")
    txid: bytes  # internal byte order
    wtxid: bytes  # internal byte order (GBT "hash")
    fee: int  # satoshis
    weight: int


@dataclass(frozen=True, slots=True)
class Template:
    """Everything needed to build jobs for one tip; immutable, shared by every session."""

    height: int
    prevhash: bytes  # internal byte order
    version: int
    bits: int
    target: int
    curtime: int
    mintime: int
    coinbase_value: int  # subsidy + fees of `transactions`, satoshis
    transactions: tuple[TemplateTx, ...]
    witness_commitment_script: bytes | None  # the whole scriptPubKey (OP_RETURN aa21a9ed...)
    is_empty: bool
    received_at: float  # time.time() when poold had it
    source: str = ""  # name of the node it came from (logs, failover decisions)

    @property
    def prevhash_hex(self) -> str:
        return hash_to_hex(self.prevhash)

    @property
    def txids(self) -> tuple[bytes, ...]:
        """Non-coinbase txids in block order (the merkle leaves after the coinbase)."""
        return tuple(tx.txid for tx in self.transactions)

    @property
    def wtxids(self) -> tuple[bytes, ...]:
        return tuple(tx.wtxid for tx in self.transactions)

    @property
    def fees(self) -> int:
        return sum(tx.fee for tx in self.transactions)

    def empty_variant(self) -> Template:
        """The coinbase-only template for the same tip.

        Fees leave with the transactions; a block without witness data needs no witness
        commitment (BIP141: "the commitment is optional if all transactions have no witness").
        """
        if self.is_empty:
            return self
        return replace(
            self,
            coinbase_value=self.coinbase_value - self.fees,
            transactions=(),
            witness_commitment_script=None,
            is_empty=True,
        )


def block_subsidy(height: int, chain: str) -> int:
    """Block reward without fees at `height` (Bitcoin Core GetBlockSubsidy)."""
    halvings = height // HALVING_INTERVAL.get(chain, 210_000)
    if halvings >= 64:
        return 0
    return (50 * COIN) >> halvings


def next_bits_predictable(chain: str, height: int) -> bool:
    """Whether the block at `height` must carry its parent's nBits (Core GetNextWorkRequired).

    regtest never retargets (fPowNoRetargeting) and every block is at powLimit. main and signet
    keep the parent's bits except at a 2016-block boundary. testnet allows min-difficulty blocks
    depending on the timestamp (fPowAllowMinDifficultyBlocks), so its bits are never predicted.
    """
    if chain == "regtest":
        return True
    if chain in ("main", "signet"):
        return height % RETARGET_INTERVAL != 0
    return False


def empty_template_for_tip(
    previous: Template,
    *,
    tip_hash: bytes,
    tip_height: int,
    tip_bits: int,
    tip_mediantime: int,
    chain: str,
    now: int,
    received_at: float,
    source: str = "",
) -> Template | None:
    """A coinbase-only template on the new tip `tip_hash`, built before getblocktemplate answers.

    The tip's facts (height, nBits, median time past) come from `getblockheader` of the new tip,
    which is the node's truth and cheap; only the block version is carried over from the previous
    template (version bits only change at deployment period boundaries, and any version with the
    top bits 001 is valid). Returns None when the next nBits cannot be known without the node
    (retarget boundary, testnet), in which case the caller waits for the full template.
    """
    height = tip_height + 1
    if not next_bits_predictable(chain, height):
        return None
    target = bits_to_target(tip_bits)
    mintime = tip_mediantime + 1
    return Template(
        height=height,
        prevhash=tip_hash,
        version=previous.version,
        bits=tip_bits,
        target=target,
        curtime=max(now, mintime),
        mintime=mintime,
        coinbase_value=block_subsidy(height, chain),
        transactions=(),
        witness_commitment_script=None,
        is_empty=True,
        received_at=received_at,
        source=source,
    )


def parse_gbt(result: Mapping[str, Any], *, received_at: float, source: str = "") -> Template:
    """Parse a getblocktemplate result; raise TemplateError naming the bad field."""
    if not isinstance(result, Mapping):
        raise TemplateError(f"getblocktemplate result is {type(result).__name__}, not an object")
    rules = _field(result, "rules", list)
    names = set()
    for rule in rules:
        if not isinstance(rule, str):
            raise TemplateError(f"rules: {rule!r} is not a string")
        mandatory = rule.startswith("!")
        name = rule[1:] if mandatory else rule
        if mandatory and name not in SUPPORTED_MANDATORY_RULES:
            raise TemplateError(
                f"rules: the node requires rule {rule!r}, which poold does not implement; "
                "refusing the template (mining on it could produce invalid blocks)"
            )
        names.add(name)
    if "segwit" not in names:
        raise TemplateError(
            f"rules: segwit is not active in this template (rules={rules!r}); poold builds "
            "segwit blocks only"
        )
    transactions = tuple(
        _parse_tx(i, tx) for i, tx in enumerate(_field(result, "transactions", list))
    )
    commitment_hex = result.get("default_witness_commitment")
    if commitment_hex is not None and not isinstance(commitment_hex, str):
        raise TemplateError("default_witness_commitment: not a hex string")
    commitment = _hex(commitment_hex, "default_witness_commitment") if commitment_hex else None
    if commitment is None and any(tx.txid != tx.wtxid for tx in transactions):
        raise TemplateError(
            "default_witness_commitment: missing although the template has witness transactions"
        )
    bits_hex = _field(result, "bits", str)
    target_hex = _field(result, "target", str)
    try:
        bits = int(bits_hex, 16)
        target = int(target_hex, 16)
    except ValueError as e:
        raise TemplateError(f"bits/target: not hex ({bits_hex!r}, {target_hex!r})") from e
    if bits > U32_MAX or not 0 < target < 2**256:
        raise TemplateError(f"bits/target: out of range ({bits_hex!r}, {target_hex!r})")
    curtime = _int(result, "curtime", limit=U32_MAX)
    return Template(
        height=_int(result, "height", limit=2**31 - 1),
        prevhash=_hash(_field(result, "previousblockhash", str), "previousblockhash"),
        version=_int(result, "version", limit=U32_MAX),
        bits=bits,
        target=target,
        curtime=curtime,
        mintime=_int(result, "mintime", limit=U32_MAX) if "mintime" in result else curtime,
        coinbase_value=_int(result, "coinbasevalue", limit=MAX_MONEY),
        transactions=transactions,
        witness_commitment_script=commitment,
        is_empty=False,
        received_at=received_at,
        source=source,
    )


def _parse_tx(index: int, tx: object) -> TemplateTx:
    if not isinstance(tx, Mapping):
        raise TemplateError(f"transactions[{index}]: not an object")
    where = f"transactions[{index}]"
    txid = _hash(_field(tx, "txid", str, where), f"{where}.txid")
    # Pre-segwit nodes omit "hash"; then wtxid == txid.
    wtxid = _hash(_field(tx, "hash", str, where), f"{where}.hash") if "hash" in tx else txid
    return TemplateTx(
        data=_hex(_field(tx, "data", str, where), f"{where}.data"),
        txid=txid,
        wtxid=wtxid,
        fee=_int(tx, "fee", where, limit=MAX_MONEY),
        weight=_int(tx, "weight", where, limit=MAX_BLOCK_WEIGHT),
    )


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise TemplateError(f"{name}: missing from getblocktemplate result")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TemplateError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str = "", *, limit: int) -> int:
    value: int = _field(obj, key, int, where)
    if not 0 <= value <= limit:
        raise TemplateError(f"{where + '.' if where else ''}{key}: out of range ({value})")
    return value


def _hex(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as e:
        raise TemplateError(f"{name}: not hex") from e


def _hash(value: str, name: str) -> bytes:
    if len(value) != 64:
        raise TemplateError(f"{name}: expected 64 hex digits, got {len(value)}")
    try:
        return hash_from_hex(value)
    except ValueError as e:
        raise TemplateError(f"{name}: not hex") from e
