"""Payments: the ledger learns that owed amounts were paid from the transactions themselves.

poold holds no keys and sends nothing. The operator pays owed accounts from any wallet; then
either `poold ledger record-payment --txid TXID` reads that transaction from bitcoind
(`getrawtransaction TXID true`, which needs `-txindex` or the transaction still in the mempool,
or `--blockhash`), or the daemon's reconcile loop sees it in a new block (`PaymentWatcher`).
Both record, for every output paying the address of an account that is owed, one payment of
that output's value (summed per account) with the txid and the block it is in; a (txid,
account) pair already recorded is never recorded again, so the two ways never count a payment
twice.

Reorgs: a payment whose block leaves the best chain is flagged orphaned (schema v7
`orphaned_at`, a WARNING names it) and no longer counts as paid, so `poold ledger payouts`
shows the account owed again; seen again in a block of the best chain, it counts again. The
watcher keeps its scan position (height and hash) in the ledger: a restart resumes there, and a
position a reorg took off the best chain is walked back to the fork, so the new branch is
scanned too.

"Owed" is what `poold ledger payouts` shows: PPLNS credits of matured blocks minus what was
paid. An account's address is the account name itself when it is a valid address of the
network, else what `addresses` (the config's account table) names.

Transactions are parsed here (BIP144 serialization, `poold.bitcoin.tx`), not taken from the
node's decoded fields, and block parsing runs in a worker thread: a full block is megabytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from poold.accounts import AccountBook
from poold.bitcoin.address import AddressError, Network, address_to_script
from poold.bitcoin.block import parse_block
from poold.bitcoin.tx import Tx
from poold.errors import PooldError
from poold.ledger import schema
from poold.ledger.audit import NodeClient
from poold.ledger.store import LedgerStore

log = logging.getLogger("poold.ledger.payments")

# On its first start on a ledger the watcher looks this far back (about a day); payments this
# recent are checked for reorgs, and a reorg is followed back at most this far.
SCAN_LOOKBACK_BLOCKS = 144
SCAN_MAX_BLOCKS = 20  # blocks fetched per reconcile round, so one round stays short

AddressOf = Callable[[str], str | None]


class PaymentError(PooldError):
    """The transaction cannot be read or matched; the message says why."""


class _Caller(Protocol):
    async def call(self, method: str, *params: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Payment:
    account: str
    address: str
    amount: int  # satoshis
    txid_hex: str
    recorded: bool  # False: this (txid, account) was already in the ledger


def account_addresses(network: Network | str,
                      table: Mapping[str, str] | Iterable[tuple[str, str]] | None = None
                      ) -> AddressOf:
    """account -> payout address as the payout planner sees it (`poold.accounts.AccountBook`):
    the table's entry, else the account itself if it is an address of the network."""
    return AccountBook.of(Network(network), dict(table or {})).address_of


async def owed(store: LedgerStore) -> dict[str, int]:
    """Accounts still owed something (PPLNS credits minus payments), in satoshis."""
    credited = await store.balances(["pplns"])
    paid = await store.paid()
    return {a: c - paid.get(a, 0) for a, c in credited.items() if c - paid.get(a, 0) > 0}


async def _owed_scripts(store: LedgerStore, network: Network, address_of: AddressOf
                        ) -> dict[bytes, tuple[str, str]]:
    """scriptPubKey -> (account, address) for every owed account with a usable address."""
    out: dict[bytes, tuple[str, str]] = {}
    for account in sorted(await owed(store)):
        address = address_of(account)
        if address is None:
            continue
        try:
            script = address_to_script(address, network)
        except AddressError as exc:
            log.warning("payments: account %s has no usable address %r: %s",
                        account, address, exc)
            continue
        out.setdefault(script, (account, address))
    return out


def match_outputs(tx: Tx, scripts: Mapping[bytes, tuple[str, str]]
                  ) -> dict[str, tuple[str, int]]:
    """account -> (address, satoshis) paid by `tx`'s outputs to the given scripts."""
    paid: dict[str, tuple[str, int]] = {}
    for out in tx.outputs:
        hit = scripts.get(out.script_pubkey)
        if hit is not None and out.value > 0:
            account, address = hit
            paid[account] = (address, paid.get(account, (address, 0))[1] + out.value)
    return paid


async def record_transactions(store: LedgerStore, txs: Sequence[Tx], network: Network,
                              address_of: AddressOf, clock: Callable[[], float] = time.time,
                              block: tuple[str, int] | None = None) -> list[Payment]:
    """Record what `txs` paid to owed accounts (each (txid, account) once). `block`: the
    (hash, height) the transactions are in; a payment already recorded from another block
    (or flagged orphaned) moves to this one, and counts again."""
    scripts = await _owed_scripts(store, network, address_of)
    if not scripts:
        return []
    done = {(str(t), str(a)): (h, o) for t, a, h, _height, o in
            await store.query(schema.PAYMENT_BLOCKS)}
    found: list[Payment] = []
    for tx in txs:
        txid = tx.txid_hex
        for account, (address, amount) in sorted(match_outputs(tx, scripts).items()):
            key = (txid, account)
            new = key not in done
            if new:
                await store.add_payment(account, amount, txid, clock(),
                                        *(block if block is not None else (None, None)))
                log.info("payment recorded: %s paid %d sat to %s (%s)",
                         txid, amount, account, address)
            elif block is not None and done[key] != (block[0], None):
                was_orphaned = done[key][1] is not None
                await store.set_payment_block(txid, account, block[0], block[1], None)
                if was_orphaned:
                    log.warning("payment %s to %s confirmed again in block %s at height %d: "
                                "it counts as paid again", txid, account, block[0], block[1])
            done[key] = (block[0] if block is not None else None, None)
            found.append(Payment(account, address, amount, txid, new))
    return found


async def fetch_transaction(rpc: _Caller, txid_hex: str, blockhash: str | None = None
                            ) -> tuple[Tx, int, str | None]:
    """The transaction `txid_hex` from bitcoind, its confirmations (0: in the mempool) and the
    hash of its block (None in the mempool)."""
    params: list[Any] = [txid_hex, True] + ([blockhash] if blockhash else [])
    try:
        result = await rpc.call("getrawtransaction", *params)
    except Exception as exc:  # the RPC client's own error types
        raise PaymentError(f"getrawtransaction {txid_hex}: {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("hex"), str):
        raise PaymentError(f"getrawtransaction {txid_hex}: no transaction hex in the answer")
    try:
        tx = Tx.parse(bytes.fromhex(result["hex"]))
    except ValueError as exc:
        raise PaymentError(f"transaction {txid_hex} does not decode: {exc}") from None
    if tx.txid_hex != txid_hex.lower():
        raise PaymentError(f"the node answered transaction {tx.txid_hex} for {txid_hex}")
    in_block = result.get("blockhash")
    return tx, int(result.get("confirmations") or 0), in_block if isinstance(in_block,
                                                                          str) else None


async def record_txid(store: LedgerStore, rpc: _Caller, txid_hex: str, network: Network,
                      address_of: AddressOf, *, blockhash: str | None = None,
                      unconfirmed: bool = False, clock: Callable[[], float] = time.time,
                      ) -> list[Payment]:
    """`poold ledger record-payment`: read the transaction and record its owed payments.
    A transaction not yet in a block is refused unless `unconfirmed` (it may never be)."""
    tx, confirmations, in_block = await fetch_transaction(rpc, txid_hex, blockhash)
    if confirmations < 1 and not unconfirmed:
        raise PaymentError(f"transaction {txid_hex} is not in a block yet (record it once "
                           "confirmed, or pass --unconfirmed)")
    block = None
    if confirmations >= 1 and in_block:
        try:
            header = await rpc.call("getblockheader", in_block)
            block = (in_block, int(header["height"]))
        except Exception as exc:  # the RPC client's own error types
            raise PaymentError(f"getblockheader {in_block}: {exc}") from None
    return await record_transactions(store, [tx], network, address_of, clock, block)


class PaymentWatcher:
    """Records payouts seen in new blocks of the best chain (the reconcile loop calls `scan`).

    Bounded: it starts `lookback` blocks below the tip on a ledger it never scanned (else at the
    position kept in the ledger), fetches at most `max_blocks` per call, and fetches none while
    nothing is owed. Each call first checks that the blocks of the payments recorded in the
    last `lookback` blocks are still on the best chain, and flags those that are not.
    """

    POSITION = "payments"  # its row in scan_positions

    def __init__(self, store: LedgerStore, network: Network, address_of: AddressOf, *,
                 lookback: int = SCAN_LOOKBACK_BLOCKS, max_blocks: int = SCAN_MAX_BLOCKS,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.network = network
        self.address_of = address_of
        self.lookback = lookback
        self.max_blocks = max_blocks
        self.clock = clock
        self.scanned: int | None = None  # height of the last block looked at
        self._scanned_hash: str | None = None

    async def tip_height(self, node: NodeClient) -> int:
        # The genesis block's confirmations count the whole best chain (no extra RPC method).
        genesis = await node.getblockheader(await node.getblockhash(0))
        if genesis is None:
            raise PaymentError("the node does not know its own genesis block")
        return int(genesis["confirmations"]) - 1

    async def scan(self, node: NodeClient) -> list[Payment]:
        tip = await self.tip_height(node)
        await self.check_reorgs(node, tip)
        start = await self._position(node, tip)
        if start >= tip:
            return []
        if not await _owed_scripts(self.store, self.network, self.address_of):
            await self._advance(tip, await node.getblockhash(tip))
            return []
        found: list[Payment] = []
        for height in range(start + 1, min(tip, start + self.max_blocks) + 1):
            hash_hex = await node.getblockhash(height)
            raw = await node.getblock(hash_hex, 0)
            _, txs = await asyncio.to_thread(parse_block, bytes.fromhex(str(raw)))
            found += await record_transactions(self.store, txs[1:], self.network,
                                               self.address_of, self.clock, (hash_hex, height))
            await self._advance(height, hash_hex)
        return found

    async def _advance(self, height: int, hash_hex: str) -> None:
        await self.store.set_scan_position(self.POSITION, height, hash_hex)
        self.scanned, self._scanned_hash = height, hash_hex

    async def _position(self, node: NodeClient, tip: int) -> int:
        """The height of the last block scanned that is still on the best chain: the kept
        position, walked back to the fork when a reorg took it off (the new branch is then
        scanned); `lookback` below the tip on a ledger never scanned."""
        if self._scanned_hash is None:
            rows = await self.store.query(schema.SCAN_POSITION, self.POSITION)
            if not rows:
                self.scanned = max(-1, tip - self.lookback)
                return self.scanned
            self.scanned, self._scanned_hash = int(rows[0][0]), str(rows[0][1])
        hash_hex = self._scanned_hash
        for _ in range(self.lookback + 1):
            header = await node.getblockheader(hash_hex)
            if header is None:
                break
            if int(header.get("confirmations", -1)) >= 0:
                height = int(header["height"])
                if hash_hex != self._scanned_hash:
                    log.warning("payments: scanned block %s left the best chain; scanning "
                                "again from the fork at height %d", self._scanned_hash, height)
                    await self._advance(height, hash_hex)
                return height
            prev = header.get("previousblockhash")
            if not isinstance(prev, str):
                break
            hash_hex = prev
        start = max(-1, tip - self.lookback)
        log.warning("payments: the node does not have the scanned block %s on its best chain "
                    "within %d blocks; scanning from height %d", self._scanned_hash,
                    self.lookback, start + 1)
        await self._advance(start, await node.getblockhash(max(0, start)))
        return start

    async def check_reorgs(self, node: NodeClient, tip: int) -> list[tuple[str, str]]:
        """Flag payments recorded from a block of the last `lookback` that is no longer on the
        best chain: they stop counting as paid (until seen again in a block). Returns the
        (txid, account) pairs flagged."""
        by_block: dict[str, list[tuple[str, str, int]]] = {}
        for txid, account, block_hash, height, orphaned_at in await self.store.query(
                schema.PAYMENT_BLOCKS):
            if block_hash is not None and orphaned_at is None and height is not None \
                    and int(height) > tip - self.lookback:
                by_block.setdefault(str(block_hash), []).append(
                    (str(txid), str(account), int(height)))
        flagged: list[tuple[str, str]] = []
        for block_hash, rows in by_block.items():
            header = await node.getblockheader(block_hash)
            if header is not None and int(header.get("confirmations", -1)) >= 0:
                continue
            for txid, account, height in rows:
                await self.store.set_payment_block(txid, account, block_hash, height,
                                                   self.clock())
                flagged.append((txid, account))
                log.warning("payments: block %s at height %d, which held payment %s to %s, is "
                            "no longer on the best chain: the payment no longer counts as "
                            "paid until it confirms again", block_hash, height, txid, account)
        return flagged


def render_payouts(rows: Sequence[tuple[str, int, int, int]],
                   address_of: AddressOf | None = None) -> str:
    """`poold ledger payouts` for people: credited, paid and still owed per account, in BTC."""
    from poold import cli_format as f
    from poold.cli_format import Column

    dicts = [{"account": a, "credited": c, "paid": p, "owed": o} for a, c, p, o in rows]
    cols = [Column("ACCOUNT", lambda r: str(r["account"]))]
    if address_of is not None:
        cols.append(Column("ADDRESS", lambda r: address_of(str(r["account"])) or "-"))
    cols += [Column("CREDITED", lambda r: f.btc(r["credited"]), right=True),
             Column("PAID", lambda r: f.btc(r["paid"]), right=True),
             Column("OWED", lambda r: f.btc(r["owed"]), right=True)]
    total_owed = sum(max(0, o) for *_, o in rows)
    body = f.table(cols, dicts, empty="(no PPLNS credits or payments)")
    return f"{body}\n\nstill owed in total: {f.btc(total_owed)}\n"


def render_payments(found: Sequence[Payment]) -> str:
    from poold import cli_format as f

    if not found:
        return "no output of this transaction pays an owed account\n"
    lines = [f"{'recorded' if p.recorded else 'already recorded'}: {f.btc(p.amount)} to "
             f"{p.account} ({p.address}) in {p.txid_hex}" for p in found]
    return "\n".join(lines) + "\n"


def record_payment_cli(args: Any, url: str, fmt: str) -> str:
    """`poold ledger record-payment --txid TXID [--rpc URL]` (CLI only: runs its own loop)."""
    import json

    from poold.ledger.store import open_store
    from poold.node.rpc import RpcClient

    if not args.txid:
        raise ValueError("record-payment needs --txid TXID")
    cfg = None
    if args.rpc is None or args.network is None:
        from poold.config import load_config

        cfg = load_config(args.config)
    network = Network(args.network or str(cfg.pool.network if cfg is not None else "main"))
    address_of = account_addresses(network, cfg.accounts if cfg is not None else None)
    if args.rpc is not None:
        rpc = RpcClient(args.rpc, name="record-payment")
    else:
        assert cfg is not None
        if not cfg.nodes:
            raise ValueError("no --rpc given and the config has no [[nodes]]")
        node = cfg.nodes[0]
        rpc = RpcClient(node.rpc_url, name=node.name, user=node.rpc_user,
                        password=node.rpc_password, cookie_file=node.rpc_cookie_file or None)

    async def go() -> list[Payment]:
        store = open_store(url)
        await store.open()
        try:
            async with rpc:
                return await record_txid(store, rpc, args.txid.lower(), network, address_of,
                                         blockhash=args.blockhash, unconfirmed=args.unconfirmed)
        finally:
            await store.close()

    found = asyncio.run(go())
    if fmt == "json":
        return json.dumps({"payments": [
            {"account": p.account, "address": p.address, "amount_sat": p.amount,
             "txid": p.txid_hex, "recorded": p.recorded} for p in found]}, indent=2) + "\n"
    return render_payments(found)

