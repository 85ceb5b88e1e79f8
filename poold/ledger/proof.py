"""Per-block proofs for outsiders: check an audit export against a node (`poold audit verify`).

No ledger database is needed: everything comes from the export (docs/AUDIT.md) and from
bitcoind's JSON-RPC through a `NodeClient` (`getblockheader`, `getblock <hash> 0`). For every
block of the export:

1. the block is on the node with the height stated, and its coinbase has the txid and exactly
   the outputs stated;
2. split mode: the chain head stated is the one the coinbase commits (OP_RETURN, see
   poold.ledger.chain);
3. the credits follow from the published window and settings with the documented formulas of
   poold.ledger.payouts: PPLNS credits are `pplns(reward, weights, fee)`; split balance changes
   are the pro-rata share minus what the coinbase paid (the paid amounts must be exactly the
   coinbase's paying outputs besides the fee); with the window's shares published
   (`--with-shares`), the weights are recomputed from them as well.

The split check is also what `poold ledger verify` runs against the database.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from poold.bitcoin.block import parse_block
from poold.ledger import chain, payouts
from poold.ledger.audit import NodeClient


def paying_values(outputs: Sequence[tuple[bytes, int]]) -> list[int]:
    """Values of a coinbase's paying outputs (no zero-value or OP_RETURN outputs)."""
    return [v for s, v in outputs if v > 0 and not s.startswith(b"\x6a")]


def split_credit_problem(*, reward: int, weights: Mapping[str, float],
                         credits: Mapping[str, int], output_values: Sequence[int],
                         settings: Mapping[str, Any]) -> str | None:
    """Why a split block's balance changes do not follow from its window and coinbase (None if
    they do). For each account: change = pro-rata share of (reward - fee) - amount paid."""
    ppm, dust = int(settings.get("fee_ppm", 0)), int(settings.get("dust_sat", 1))
    fee = payouts.fee_of(reward, ppm, dust)
    distributable = reward - fee
    positive = {a: float(w) for a, w in weights.items() if float(w) > 0}
    if not positive or distributable < dust:
        for account in sorted(credits):
            if credits[account]:
                return (f"account {account!r}: balance change {credits[account]} sat, but the "
                        "whole reward went to the pool (nothing to split)")
        return None
    share = payouts.proportional(distributable, positive)
    paid = {a: share.get(a, 0) - credits.get(a, 0) for a in sorted(set(share) | set(credits))}
    on_chain = Counter(output_values)
    if fee:
        if not on_chain[fee]:
            return f"no coinbase output pays the fee of {fee} sat"
        on_chain[fee] -= 1
    for account, amount in paid.items():
        if amount < 0:
            return (f"account {account!r}: balance change {credits.get(account, 0)} sat is more "
                    f"than its pro-rata share {share.get(account, 0)} sat")
        if amount and not on_chain[amount]:
            return (f"account {account!r}: balance change {credits.get(account, 0)} sat means "
                    f"it was paid {amount} sat, which no coinbase output pays")
        if amount:
            on_chain[amount] -= 1
    left = sorted(v for v, n in on_chain.items() for _ in range(n))
    if left:
        return f"coinbase outputs of {left} sat are paid to no account of the window"
    return None


def pplns_credit_problem(*, reward: int, weights: Mapping[str, float],
                         credits: Mapping[str, int], settings: Mapping[str, Any]) -> str | None:
    ppm = int(settings.get("fee_ppm", 0)) if settings.get("fee_address") else 0
    expected = payouts.pplns(reward, {a: float(w) for a, w in weights.items()}, ppm=ppm).credits
    for account in sorted(set(expected) | set(credits)):
        e, c = expected.get(account, 0), credits.get(account, 0)
        if e != c:
            return f"account {account!r}: credited {c} sat, the window gives {e} sat"
    return None


def weights_from_shares(shares: Sequence[Sequence[Any]],
                        window_difficulty: float) -> dict[str, float]:
    """PPLNS weights of published window shares [id, worker, account, difficulty, time]:
    newest (time, id) first until the window is full."""
    ordered = sorted(shares, key=lambda s: (float(s[4]), int(s[0])), reverse=True)
    return payouts.pplns_window(((str(s[2]), float(s[3])) for s in ordered), window_difficulty)


# -- loading an export


def load_export(text: str) -> list[dict[str, Any]]:
    """The blocks of an export file, JSON or CSV (docs/AUDIT.md), as JSON-shaped dicts."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        doc = json.loads(text)
        blocks = doc.get("blocks")
        if not isinstance(blocks, list):
            raise ValueError("not a poold audit export: no 'blocks' list")
        return blocks
    return _from_csv(text)


def _num(text: str) -> float | int | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def _from_csv(text: str) -> list[dict[str, Any]]:
    blocks: dict[str, dict[str, Any]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        h = row.get("hash")
        if not h:
            raise ValueError("not a poold audit export: a CSV row has no 'hash'")
        b = blocks.get(h)
        if b is None:
            settings: dict[str, Any] = {
                k: _num(row[k]) for k in ("pplns_window_factor", "fee_ppm", "dust_sat",
                                          "max_outputs")}
            settings["payout"] = row["payout"] or None
            settings["fee_address"] = row["fee_address"] or None
            window: dict[str, Any] | None = None
            if row["window_end"]:
                window = {"first_share_id": _num(row["window_first_share_id"]),
                          "last_share_id": _num(row["window_last_share_id"]),
                          "end": float(row["window_end"]),
                          "size": float(row["window_size"]),
                          "difficulty": float(row["window_difficulty"]),
                          "network_difficulty": float(row["window_network_difficulty"]),
                          "weights": {}}
            b = blocks[h] = {
                "height": int(row["height"]), "hash": h, "status": row["status"],
                "confirmations": int(row["confirmations"]),
                "coinbase_txid": row["coinbase_txid"], "reward_sat": int(row["reward_sat"]),
                "chain_head": row["chain_head"] or None, "settings": settings,
                "window": window, "outputs": [], "credits": []}
        item = row["item"]
        if item == "output":
            b["outputs"].append({"n": int(row["key"]), "script_hex": row["script_hex"],
                                 "address": row["address"] or None,
                                 "value_sat": int(row["amount_sat"])})
        elif item == "credit":
            b["credits"].append({"account": row["account"], "kind": row["kind"],
                                 "amount_sat": int(row["amount_sat"])})
        elif item == "weight" and b["window"] is not None:
            b["window"]["weights"][row["account"]] = float(row["difficulty"])
        elif item == "share" and b["window"] is not None:
            b["window"].setdefault("shares", []).append(
                [int(row["key"]), row["worker"], row["account"], float(row["difficulty"]),
                 float(row["share_time"])])
    return list(blocks.values())


# -- checking against a node


async def verify_export(blocks: Sequence[dict[str, Any]], node: NodeClient) -> list[str]:
    """Problems found checking `blocks` (load_export) against `node`; empty if none. Each
    names its block and the first item that does not match."""
    problems: list[str] = []
    for b in blocks:
        problem = await _verify_block(b, node)
        if problem:
            problems.append(f"block {b.get('height')} {b.get('hash')}: {problem}")
    return problems


async def _verify_block(b: dict[str, Any], node: NodeClient) -> str | None:
    header = await node.getblockheader(str(b["hash"]))
    if header is None:
        return "not found on the node"
    if int(header.get("height", -1)) != int(b["height"]):
        return f"the node has it at height {header.get('height')}"
    if b.get("status") in ("confirmed", "matured") and int(header.get("confirmations", -1)) < 0:
        return "stated on the best chain, but the node has it off its best chain"
    try:
        _hdr, txs = parse_block(bytes.fromhex(str(await node.getblock(str(b["hash"]), 0))))
    except ValueError as exc:
        return f"the node's block does not parse: {exc}"
    cb = txs[0]
    if cb.txid_hex != b.get("coinbase_txid"):
        return f"coinbase txid on chain {cb.txid_hex}, stated {b.get('coinbase_txid')}"
    on_chain = [(o.script_pubkey, o.value) for o in cb.outputs]
    stated = [(str(o["script_hex"]), int(o["value_sat"])) for o in b.get("outputs", [])]
    for n, ((script, value), st) in enumerate(zip(on_chain, stated, strict=False)):
        if (script.hex(), value) != st:
            return f"coinbase output {n}: on chain {script.hex()} {value} sat, stated {st}"
    if len(on_chain) != len(stated):
        return f"coinbase has {len(on_chain)} outputs, {len(stated)} stated"
    settings = b.get("settings") or {}
    head = b.get("chain_head")
    committed = chain.committed_head(on_chain)
    if settings.get("payout") == "split" and (head is not None or committed is not None
                                              or b.get("credits")):
        # (A split block with neither is a fallback coinbase paying the pool: nothing split.)
        if head is None or committed is None:
            return "split coinbase without a chain head commitment (or none stated)"
        if chain.parse_head(str(head))[2] != committed:
            return f"chain head {head} is not the one the coinbase commits ({committed.hex()})"
    return _credits_problem(b, settings, on_chain)


def _credits_problem(b: dict[str, Any], settings: Mapping[str, Any],
                     on_chain: Sequence[tuple[bytes, int]]) -> str | None:
    window = b.get("window")
    credits = b.get("credits") or []
    if window is None:
        if credits:
            return "credits stated without the window they come from"
        return None
    weights = {str(a): float(w) for a, w in (window.get("weights") or {}).items()}
    shares = window.get("shares")
    if shares is not None:
        from_shares = weights_from_shares(shares, float(window["size"]))
        for account in sorted(set(weights) | set(from_shares)):
            w, s = weights.get(account, 0.0), from_shares.get(account, 0.0)
            if not math.isclose(w, s, rel_tol=1e-9, abs_tol=1e-12):
                return (f"window weight of account {account!r}: stated {w!r}, its published "
                        f"shares add up to {s!r}")
    kinds = {str(c["kind"]) for c in credits}
    by_account = {str(c["account"]): int(c["amount_sat"]) for c in credits}
    reward = int(b["reward_sat"])
    if settings.get("payout") == "split" or "split" in kinds:
        return split_credit_problem(reward=reward, weights=weights, credits=by_account,
                                    output_values=paying_values(on_chain), settings=settings)
    if "pplns" in kinds:
        return pplns_credit_problem(reward=reward, weights=weights, credits=by_account,
                                    settings=settings)
    return None
