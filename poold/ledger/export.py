"""The audit export: one format (docs/AUDIT.md), JSON or CSV, for `poold audit export`,
`poold ledger export` and the admin API's `/api/v1/blocks`.

Per block: the audit record (height, hash, coinbase txid, outputs, value, status with the
confirmations reconciliation keeps following past maturity, submits, events), the chain head it
commits to, the payout settings in force, the PPLNS window its payout was computed from (first
and last share id, end time, size, total difficulty, difficulty per account; with
`with_shares`, every share of it) and the credits per account. `poold.ledger.proof` checks such
an export against a node without the database.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from poold.ledger.config import LedgerConfig
from poold.ledger.planner import PayoutPlanner
from poold.ledger.records import BlockRecord
from poold.ledger.schema import BUCKET_S
from poold.ledger.store import LedgerStore, bucket_of

FORMATS = ("csv", "json")

_EXTRAS = "SELECT hash_hex, chain_head, settings, payout_window FROM blocks WHERE time >= ?"
_CREDITS = ("SELECT c.block_hash_hex, c.account, c.kind, c.amount FROM credits c"
            " JOIN blocks b ON b.hash_hex = c.block_hash_hex WHERE b.time >= ?"
            " ORDER BY c.block_hash_hex, c.kind, c.account")
_NEWEST = ("SELECT id, worker, account, difficulty, time FROM shares WHERE time <= ?"
           " ORDER BY time DESC, id DESC LIMIT ?")
_OLDER = ("SELECT id, worker, account, difficulty, time FROM shares"
          " WHERE time >= ? AND (time < ? OR (time = ? AND id < ?))"
          " ORDER BY time DESC, id DESC LIMIT ?")
_PAGE = 10_000


def _iso(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def block_to_dict(b: BlockRecord) -> dict[str, Any]:
    """The audit record of a block (without the v5 fields `export_blocks` adds)."""
    return {
        "height": b.height, "hash": b.hash_hex, "prevhash": b.prevhash_hex,
        "time": _iso(b.time), "finder_worker": b.worker, "finder_account": b.account,
        "instance_id": b.instance_id, "coinbase_txid": b.coinbase_txid_hex,
        "reward_sat": b.reward, "fees_sat": b.fees, "network_difficulty": b.network_difficulty,
        "status": b.status.value, "confirmations": b.confirmations,
        "checked_at": _iso(b.checked_at),
        "outputs": [{"n": o.n, "script_hex": o.script_hex, "address": o.address,
                     "value_sat": o.value} for o in b.outputs],
        "submits": [{"node": s.node, "result": s.result, "time": _iso(s.time)}
                    for s in b.submits],
        "events": [{"time": _iso(e.time), "event": e.event, "detail": e.detail}
                   for e in b.events],
    }


async def export_blocks(store: LedgerStore, since: float = 0.0, *,
                        config: LedgerConfig | None = None,
                        with_shares: bool = False) -> list[dict[str, Any]]:
    """Every block found at or after `since`, oldest first, in the export format. `config`
    stands in for the settings of blocks recorded before schema v5."""
    extras = {r[0]: r[1:] for r in await store.query(_EXTRAS, since)}
    credits: dict[str, list[dict[str, Any]]] = {}
    for h, account, kind, amount in await store.query(_CREDITS, since):
        credits.setdefault(h, []).append(
            {"account": account, "kind": kind, "amount_sat": int(amount)})
    out = []
    for b in await store.blocks(since):
        head, settings_json, window_json = extras.get(b.hash_hex, (None, None, None))
        settings = json.loads(settings_json) if settings_json else _legacy_settings(config)
        d = block_to_dict(b)
        d["chain_head"] = head
        d["settings"] = settings
        d["window"] = await _window(store, b, settings, window_json, with_shares)
        d["credits"] = credits.get(b.hash_hex, [])
        out.append(d)
    return out


def _legacy_settings(config: LedgerConfig | None) -> dict[str, Any] | None:
    if config is None:
        return None
    from poold.ledger.payouts import fee_ppm

    return {"payout": config.payout, "pplns_window_factor": config.pplns_window_factor,
            "fee_ppm": fee_ppm(config.fee_percent), "dust_sat": config.dust_sat,
            "max_outputs": config.max_outputs,
            "split_max_output_bytes": config.split_max_output_bytes,
            "fee_address": config.fee_address or None}


async def _window(store: LedgerStore, b: BlockRecord, settings: dict[str, Any] | None,
                  window_json: str | None, with_shares: bool) -> dict[str, Any] | None:
    """The PPLNS window a block's payout came from: at maturity from the shares up to the
    block's time (pplns), or the one its coinbase was planned from (split, as recorded)."""
    if settings is None or settings.get("payout") not in ("pplns", "split"):
        return None
    factor = float(settings.get("pplns_window_factor", 0.0))
    if settings["payout"] == "split":
        if not window_json:
            return None
        planned = json.loads(window_json)
        end, netdiff = float(planned["end"]), float(planned["network_difficulty"])
        weights = {str(a): float(w) for a, w in planned["weights"].items()}
    else:
        end, netdiff = b.time, b.network_difficulty
        cfg = replace(LedgerConfig(), payout="pplns", pplns_window_factor=factor)
        weights = await PayoutPlanner(cfg, store, lambda: end).window_weights(netdiff, end)
    size = factor * netdiff
    first, last, shares = await window_ids(store, size, end, with_shares)
    window: dict[str, Any] = {
        "first_share_id": first, "last_share_id": last, "end": end,
        "network_difficulty": netdiff, "size": size,
        "difficulty": math.fsum(weights.values()), "weights": dict(sorted(weights.items()))}
    if with_shares:
        window["shares"] = shares
    return window


async def window_ids(store: LedgerStore, size: float, until: float, with_shares: bool = False
                     ) -> tuple[int | None, int | None, list[list[Any]]]:
    """(oldest id, newest id, shares) of the window of `size` difficulty ending at `until`:
    shares newest first by (time, id) until the window is full. Whole 10 s buckets in between
    are skipped through share_buckets unless the shares themselves are wanted, so a window of
    millions of shares costs a few thousand rows. Ids are None where retention removed them."""
    if not size > 0:
        return None, None, []
    rows = await store.query(_NEWEST, until, 1)
    if not rows:
        return None, None, []
    last = int(rows[0][0])
    filled = 0.0
    shares: list[list[Any]] = []
    cursor: tuple[float, int] | None = None
    floor = -math.inf if with_shares else bucket_of(until)
    while True:  # share by share down to `floor` (the newest bucket, or everything)
        page = (await store.query(_NEWEST, until, _PAGE) if cursor is None else
                await store.query(_OLDER, floor, cursor[0], cursor[0], cursor[1], _PAGE))
        for sid, worker, account, difficulty, t in page:
            if float(t) < floor:
                break
            filled += float(difficulty)
            if with_shares:
                shares.append([int(sid), worker, account, float(difficulty), float(t)])
            if filled >= size:
                return int(sid), last, shares
        if len(page) < _PAGE:
            break
        cursor = (float(page[-1][4]), int(page[-1][0]))
    if with_shares:
        return None, last, shares  # ran out of shares before the window was full
    before = floor
    while True:  # whole buckets, newest first, until the one the window ends in
        page_b = await store.buckets_page(before, _PAGE)
        if not page_b:
            return None, last, []
        sums: dict[float, float] = {}
        for bucket, _account, difficulty in page_b:
            sums[bucket] = sums.get(bucket, 0.0) + difficulty
        if len(page_b) == _PAGE:
            sums.pop(min(sums), None)  # may continue on the next page
        for bucket in sorted(sums, reverse=True):
            if filled + sums[bucket] < size:
                filled += sums[bucket]
                continue
            top = math.nextafter(bucket + BUCKET_S, -math.inf)
            for sid, _w, _a, difficulty, _t in await store.query(
                    _OLDER, bucket, top, top, 1 << 62, 1 << 30):
                filled += float(difficulty)
                if filled >= size:
                    return int(sid), last, []
            return None, last, []  # the edge bucket's shares were pruned
        before = min(sums)


async def public_windows(store: LedgerStore, since: float = 0.0, *,
                         config: LedgerConfig | None = None) -> list[dict[str, Any]]:
    """What `[api] public_windows` publishes: per block its height, hash, time, status, the
    settings, the window with every share as [id, worker, difficulty] and the credits, so a
    miner can find its own shares and recompute its pay; no accounts beyond the credits, no
    addresses beyond what the block's coinbase shows anyway."""
    out = []
    for b in await export_blocks(store, since, config=config, with_shares=True):
        window = b["window"]
        if window is not None:
            window = {k: v for k, v in window.items() if k != "shares"} | {
                "shares": [[sid, worker, difficulty]
                           for sid, worker, _a, difficulty, _t in window["shares"]]}
        out.append({k: b[k] for k in ("height", "hash", "time", "status", "confirmations",
                                      "settings", "credits")} | {"window": window})
    return out


# -- rendering

BLOCK_COLUMNS = ("height", "hash", "time", "status", "confirmations", "finder_worker",
                 "finder_account", "coinbase_txid", "reward_sat", "fees_sat", "chain_head",
                 "payout", "pplns_window_factor", "fee_ppm", "dust_sat", "max_outputs",
                 "fee_address", "window_first_share_id", "window_last_share_id", "window_end",
                 "window_size", "window_difficulty", "window_network_difficulty")
ITEM_COLUMNS = ("item", "key", "account", "kind", "worker", "script_hex", "address",
                "amount_sat", "difficulty", "share_time")
CSV_COLUMNS = BLOCK_COLUMNS + ITEM_COLUMNS


def _cell(v: Any) -> Any:
    return "" if v is None else v


def render(blocks: Sequence[dict[str, Any]], fmt: str) -> str:
    """Export blocks as JSON (`{"blocks": [...]}`) or CSV: one row per item of a block (each
    coinbase output, credit, window weight and, if exported, window share), the block's own
    columns repeated on each."""
    if fmt == "json":
        return json.dumps({"format": "poold-audit-v1", "blocks": list(blocks)},
                          indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for b in blocks:
        s = b.get("settings") or {}
        win = b.get("window") or {}
        head = [b.get("height"), b.get("hash"), b.get("time"), b.get("status"),
                b.get("confirmations"), b.get("finder_worker"), b.get("finder_account"),
                b.get("coinbase_txid"), b.get("reward_sat"), b.get("fees_sat"),
                b.get("chain_head"), s.get("payout"),
                s.get("pplns_window_factor"), s.get("fee_ppm"), s.get("dust_sat"),
                s.get("max_outputs"), s.get("fee_address"), win.get("first_share_id"),
                win.get("last_share_id"), win.get("end"), win.get("size"),
                win.get("difficulty"), win.get("network_difficulty")]
        items: list[list[Any]] = []
        for o in b.get("outputs", []):
            items.append(["output", o["n"], None, None, None, o["script_hex"], o["address"],
                          o["value_sat"], None, None])
        for c in b.get("credits", []):
            items.append(["credit", None, c["account"], c["kind"], None, None, None,
                          c["amount_sat"], None, None])
        for account, weight in (win.get("weights") or {}).items():
            items.append(["weight", None, account, None, None, None, None, None, weight, None])
        for sid, worker, account, difficulty, t in win.get("shares") or []:
            items.append(["share", sid, account, None, worker, None, None, None, difficulty, t])
        for item in items or [[None] * len(ITEM_COLUMNS)]:
            w.writerow([_cell(v) for v in head + item])
    return buf.getvalue()
