"""The devnet's mempool: which transactions the next template carries.

One responsibility: accept a transaction if it could go into the next block on the current tip
(inputs exist in the UTXO view or in the mempool and are not spent twice, coinbase maturity,
amounts, BIP113 finality, BIP68 relative locks), keep accepted ones in dependency order, select
them for a template within the BIP141 weight and sigop-cost limits, and drop what a new tip mined
or conflicted. Script validity is checked by the caller with the kernel's script interpreter
(`verify` hook), never here. Pure: no I/O.

Reject reasons and RPC codes follow Bitcoin Core's sendrawtransaction (-25 missing inputs,
-26 rejected with Core's reason string, -27 outputs already in the UTXO set). Not modelled:
replacement (RBF: a conflicting spend is simply refused), package and ancestor limits, eviction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from poold.bitcoin.tx import OutPoint, Tx
from poold.devnet.chainstate import COINBASE_MATURITY, ChainView, Coin, UtxoSet
from poold.errors import PooldError

RPC_TRANSACTION_ERROR = -25
RPC_TRANSACTION_REJECTED = -26
RPC_TRANSACTION_ALREADY_IN_CHAIN = -27

MAX_MONEY = 21_000_000 * 100_000_000
MAX_BLOCK_WEIGHT = 4_000_000
MAX_BLOCK_SIGOPS_COST = 80_000
WITNESS_SCALE_FACTOR = 4
MIN_RELAY_FEE_PER_KVB = 100  # sat per 1000 vbytes (Core's DEFAULT_MIN_RELAY_TX_FEE since v29)
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_LOCKTIME_DISABLE_FLAG = 1 << 31
SEQUENCE_LOCKTIME_TYPE_FLAG = 1 << 22
SEQUENCE_LOCKTIME_MASK = 0xFFFF
SEQUENCE_LOCKTIME_GRANULARITY = 9
MEMPOOL_HEIGHT = 0x7FFFFFFF


class TxRejected(PooldError):
    """A transaction refused, with bitcoind's RPC error code and reject reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MempoolEntry:
    tx: Tx
    raw: bytes  # witness serialization, as GBT's `data`
    txid: bytes
    wtxid: bytes
    fee: int
    weight: int
    sigop_cost: int
    parents: frozenset[bytes]  # txids of in-mempool parents


ScriptVerifier = Callable[[Tx, Sequence[Coin]], str | None]


class Mempool:
    """Accepted transactions in dependency order (a parent is always before its children)."""

    def __init__(self) -> None:
        self._entries: dict[bytes, MempoolEntry] = {}
        self._spent_by: dict[OutPoint, bytes] = {}
        self.updates = 0  # bumped on every change (feeds GBT's longpollid)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, txid: object) -> bool:
        return txid in self._entries

    def entries(self) -> Iterator[MempoolEntry]:
        return iter(self._entries.values())

    def get(self, txid: bytes) -> MempoolEntry | None:
        return self._entries.get(txid)

    def spender(self, outpoint: OutPoint) -> bytes | None:
        return self._spent_by.get(outpoint)

    def coin(self, outpoint: OutPoint, utxos: UtxoSet) -> Coin | None:
        """An output spendable by a new transaction: confirmed and unspent in the mempool, or
        created by a mempool transaction and not yet spent by another."""
        if outpoint in self._spent_by:
            return None
        coin = utxos.get(outpoint)
        if coin is not None:
            return coin
        parent = self._entries.get(outpoint.txid)
        if parent is None or outpoint.vout >= len(parent.tx.outputs):
            return None
        out = parent.tx.outputs[outpoint.vout]
        return Coin(out.value, out.script_pubkey, MEMPOOL_HEIGHT, False)

    def accept(
        self,
        tx: Tx,
        utxos: UtxoSet,
        chain: ChainView,
        *,
        verify: ScriptVerifier | None = None,
        max_fee_per_kvb: int | None = None,
    ) -> MempoolEntry:
        """Validate `tx` against the next block on `chain`'s tip and add it; the existing entry
        if the same transaction is already in. Raises TxRejected."""
        txid = tx.txid
        existing = self._entries.get(txid)
        if existing is not None:
            if existing.wtxid == tx.wtxid:
                return existing
            raise TxRejected(RPC_TRANSACTION_REJECTED, "txn-same-nonwitness-data-in-mempool")
        _check_tx(tx)
        if tx.is_coinbase:
            raise TxRejected(RPC_TRANSACTION_REJECTED, "coinbase")
        if any(OutPoint(txid, i) in utxos for i in range(len(tx.outputs))):
            raise TxRejected(
                RPC_TRANSACTION_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set"
            )
        next_height = chain.height + 1
        mtp = chain.median_time_past()
        if not _is_final(tx, next_height, mtp):
            raise TxRejected(RPC_TRANSACTION_REJECTED, "non-final")
        for txin in tx.inputs:
            if txin.prevout in self._spent_by:
                raise TxRejected(RPC_TRANSACTION_REJECTED, "txn-mempool-conflict")
        coins: list[Coin] = []
        for txin in tx.inputs:
            coin = self.coin(txin.prevout, utxos)
            if coin is None:
                raise TxRejected(RPC_TRANSACTION_ERROR, "bad-txns-inputs-missingorspent")
            coins.append(coin)
        for coin in coins:
            if coin.is_coinbase and next_height - coin.height < COINBASE_MATURITY:
                raise TxRejected(
                    RPC_TRANSACTION_REJECTED,
                    "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth "
                    f"{next_height - coin.height}",
                )
        if not _sequence_locks_ok(tx, coins, chain):
            raise TxRejected(RPC_TRANSACTION_REJECTED, "non-BIP68-final")
        value_in = sum(c.value for c in coins)
        value_out = sum(o.value for o in tx.outputs)
        if value_in > MAX_MONEY:
            raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-inputvalues-outofrange")
        if value_in < value_out:
            raise TxRejected(
                RPC_TRANSACTION_REJECTED,
                f"bad-txns-in-belowout, value in ({value_in}) < value out ({value_out})",
            )
        fee = value_in - value_out
        weight = tx.weight
        vsize = (weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR
        min_fee = (vsize * MIN_RELAY_FEE_PER_KVB + 999) // 1000
        if fee < min_fee:
            raise TxRejected(
                RPC_TRANSACTION_REJECTED, f"min relay fee not met, {fee} < {min_fee}"
            )
        if max_fee_per_kvb and fee * 1000 > max_fee_per_kvb * vsize:
            raise TxRejected(
                RPC_TRANSACTION_ERROR,
                "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
            )
        sigop_cost = tx_sigop_cost(tx, coins)
        if sigop_cost > MAX_BLOCK_SIGOPS_COST // 5:  # Core's MAX_STANDARD_TX_SIGOPS_COST
            raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-too-many-sigops")
        if weight > MAX_BLOCK_WEIGHT // 10:  # Core's MAX_STANDARD_TX_WEIGHT
            raise TxRejected(RPC_TRANSACTION_REJECTED, "tx-size")
        if verify is not None:
            failure = verify(tx, coins)
            if failure is not None:
                raise TxRejected(RPC_TRANSACTION_REJECTED, failure)
        parents = frozenset(t.prevout.txid for t in tx.inputs if t.prevout.txid in self._entries)
        entry = MempoolEntry(
            tx, tx.serialize(), txid, tx.wtxid, fee, weight, sigop_cost, parents
        )
        self._entries[txid] = entry
        for txin in tx.inputs:
            self._spent_by[txin.prevout] = txid
        self.updates += 1
        return entry

    def remove_for_block(self, txs: Sequence[Tx]) -> None:
        """A block was connected: drop its transactions and everything conflicting with them."""
        removed = False
        for tx in txs:
            if tx.txid in self._entries:
                self._remove(tx.txid)
                removed = True
        for tx in txs:
            if tx.is_coinbase:
                continue
            for txin in tx.inputs:
                other = self._spent_by.get(txin.prevout)
                if other is not None:
                    self._remove_with_descendants(other)
                    removed = True
        if removed:
            self.updates += 1

    def rebuild(
        self, candidates: Iterable[Tx], utxos: UtxoSet, chain: ChainView
    ) -> list[tuple[Tx, TxRejected]]:
        """After a reorg: re-admit `candidates` (disconnected block txs first, then the old
        mempool) against the new tip; returns what no longer fits. Scripts were verified on
        first acceptance (or by the kernel inside a block) and do not depend on the tip."""
        old = [e.tx for e in self._entries.values()]
        self._entries.clear()
        self._spent_by.clear()
        dropped: list[tuple[Tx, TxRejected]] = []
        for tx in [*candidates, *old]:
            if tx.is_coinbase:
                continue
            try:
                self.accept(tx, utxos, chain)
            except TxRejected as exc:
                dropped.append((tx, exc))
        self.updates += 1
        return dropped

    def select(
        self,
        max_weight: int = MAX_BLOCK_WEIGHT - 4000,
        max_sigop_cost: int = MAX_BLOCK_SIGOPS_COST - 400,
    ) -> list[MempoolEntry]:
        """Entries for a template in dependency order; a tx whose parent did not fit is left
        out. The reserve (4000 weight, 400 sigops) is Core's default for the coinbase."""
        chosen: list[MempoolEntry] = []
        chosen_ids: set[bytes] = set()
        weight = sigops = 0
        for entry in self._entries.values():
            if not entry.parents <= chosen_ids:
                continue
            if weight + entry.weight > max_weight or sigops + entry.sigop_cost > max_sigop_cost:
                continue
            chosen.append(entry)
            chosen_ids.add(entry.txid)
            weight += entry.weight
            sigops += entry.sigop_cost
        return chosen

    def _remove(self, txid: bytes) -> None:
        entry = self._entries.pop(txid)
        for txin in entry.tx.inputs:
            if self._spent_by.get(txin.prevout) == txid:
                del self._spent_by[txin.prevout]

    def _remove_with_descendants(self, txid: bytes) -> None:
        todo = [txid]
        while todo:
            current = todo.pop()
            if current not in self._entries:
                continue
            children = [e.txid for e in self._entries.values() if current in e.parents]
            self._remove(current)
            todo.extend(children)


def _check_tx(tx: Tx) -> None:
    """CheckTransaction: the context-free consensus checks."""
    if not tx.inputs:
        raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-vin-empty")
    if not tx.outputs:
        raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-vout-empty")
    total = 0
    for out in tx.outputs:
        if out.value < 0:
            raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-vout-negative")
        if out.value > MAX_MONEY:
            raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-vout-toolarge")
        total += out.value
        if total > MAX_MONEY:
            raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-txouttotal-toolarge")
    prevouts = [t.prevout for t in tx.inputs]
    if len(set(prevouts)) != len(prevouts):
        raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-inputs-duplicate")
    if any(p.is_null for p in prevouts) and not tx.is_coinbase:
        raise TxRejected(RPC_TRANSACTION_REJECTED, "bad-txns-prevout-null")


def _is_final(tx: Tx, height: int, mtp: int) -> bool:
    """IsFinalTx for the next block (BIP113: lock times compare against median time past)."""
    if tx.locktime == 0:
        return True
    limit = height if tx.locktime < LOCKTIME_THRESHOLD else mtp
    if tx.locktime < limit:
        return True
    return all(t.sequence == SEQUENCE_FINAL for t in tx.inputs)


def _sequence_locks_ok(tx: Tx, coins: Sequence[Coin], chain: ChainView) -> bool:
    """BIP68 relative lock times, evaluated for the next block (CheckSequenceLocksAtTip)."""
    if tx.version < 2:
        return True
    next_height = chain.height + 1
    min_height = min_time = -1
    for txin, coin in zip(tx.inputs, coins, strict=True):
        seq = txin.sequence
        if seq & SEQUENCE_LOCKTIME_DISABLE_FLAG:
            continue
        coin_height = next_height if coin.height == MEMPOOL_HEIGHT else coin.height
        if seq & SEQUENCE_LOCKTIME_TYPE_FLAG:
            coin_time = chain.median_time_past(min(max(coin_height - 1, 0), chain.height))
            lock = (seq & SEQUENCE_LOCKTIME_MASK) << SEQUENCE_LOCKTIME_GRANULARITY
            min_time = max(min_time, coin_time + lock - 1)
        else:
            min_height = max(min_height, coin_height + (seq & SEQUENCE_LOCKTIME_MASK) - 1)
    return min_height < next_height and min_time < chain.median_time_past()


# -- sigop cost (GetTransactionSigOpCost) -------------------------------------------------------

_OP_CHECKSIG, _OP_CHECKSIGVERIFY = 0xAC, 0xAD
_OP_CHECKMULTISIG, _OP_CHECKMULTISIGVERIFY = 0xAE, 0xAF
_OP_1, _OP_16 = 0x51, 0x60
_MAX_PUBKEYS_PER_MULTISIG = 20


def _ops(script: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, pushed data) pairs; stops quietly at a truncated push, as Core's GetOp does."""
    i, n = 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        size = 0
        if op < 0x4C:
            size = op
        elif op == 0x4C:
            if i + 1 > n:
                return
            size = script[i]
            i += 1
        elif op == 0x4D:
            if i + 2 > n:
                return
            size = int.from_bytes(script[i : i + 2], "little")
            i += 2
        elif op == 0x4E:
            if i + 4 > n:
                return
            size = int.from_bytes(script[i : i + 4], "little")
            i += 4
        if i + size > n:
            return
        yield op, script[i : i + size]
        i += size


def _sigop_count(script: bytes, accurate: bool) -> int:
    count, last = 0, -1
    for op, _ in _ops(script):
        if op in (_OP_CHECKSIG, _OP_CHECKSIGVERIFY):
            count += 1
        elif op in (_OP_CHECKMULTISIG, _OP_CHECKMULTISIGVERIFY):
            if accurate and _OP_1 <= last <= _OP_16:
                count += last - _OP_1 + 1
            else:
                count += _MAX_PUBKEYS_PER_MULTISIG
        last = op
    return count


def _is_p2sh(script: bytes) -> bool:
    return len(script) == 23 and script[0] == 0xA9 and script[1] == 0x14 and script[22] == 0x87


def _witness_program(script: bytes) -> tuple[int, bytes] | None:
    if not 4 <= len(script) <= 42:
        return None
    version = script[0]
    if version != 0 and not _OP_1 <= version <= _OP_16:
        return None
    if script[1] + 2 != len(script):
        return None
    return (0 if version == 0 else version - _OP_1 + 1), script[2:]


def _last_push(script_sig: bytes) -> bytes | None:
    data = None
    for op, pushed in _ops(script_sig):
        if op > _OP_16:
            return None
        data = pushed
    return data


def _witness_sigops(version: int, program: bytes, witness: tuple[bytes, ...]) -> int:
    if version != 0:
        return 0
    if len(program) == 20:
        return 1
    if len(program) == 32 and witness:
        return _sigop_count(witness[-1], accurate=True)
    return 0


def tx_sigop_cost(tx: Tx, coins: Sequence[Coin]) -> int:
    """Legacy and P2SH sigops weigh 4, witness sigops 1 (BIP141)."""
    legacy = sum(_sigop_count(t.script_sig, False) for t in tx.inputs)
    legacy += sum(_sigop_count(o.script_pubkey, False) for o in tx.outputs)
    cost = legacy * WITNESS_SCALE_FACTOR
    if tx.is_coinbase:
        return cost
    for txin, coin in zip(tx.inputs, coins, strict=True):
        spk = coin.script_pubkey
        redeem: bytes | None = None
        if _is_p2sh(spk):
            redeem = _last_push(txin.script_sig)
            if redeem is not None:
                cost += _sigop_count(redeem, True) * WITNESS_SCALE_FACTOR
        program = _witness_program(spk)
        if program is None and redeem is not None:
            program = _witness_program(redeem)
        if program is not None:
            cost += _witness_sigops(program[0], program[1], txin.witness)
    return cost
