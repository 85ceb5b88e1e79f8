"""`poold ledger verify`: recompute the ledger's hash chains, its buckets and every block's
credits from the rows in the database, and name the first record that does not match.

Checks, in this order (docs/AUDIT.md):

1. chains: every link of every chain follows the one before it (seq and prev_hash), and its
   hash is that of the rows that name it. A link whose rows are all gone was pruned by share
   retention (its hash is still chained); rows with a link that does not exist, or shares
   stored after the chain began without any link, are reported.
2. buckets: each (account, 10 s bucket) sum in share_buckets equals the sum of its shares
   (buckets older than the oldest share kept are skipped: retention).
3. blocks: each block's committed head is a link of its chain (and, split, the one in its
   coinbase); matured PPLNS blocks' credits are recomputed from the shares, share by share
   (within 1 sat: the pool adds whole buckets, in another float order); split blocks'
   balance changes follow from the window they were planned from and the coinbase they paid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from poold.ledger import chain, payouts, proof
from poold.ledger.config import LedgerConfig
from poold.ledger.records import BlockRecord, BlockStatus
from poold.ledger.store import LedgerStore, bucket_of

_LINKS = ("SELECT id, chain, seq, n, prev_hash, hash, t_first, t_last FROM chain_links"
          " ORDER BY chain, seq")
# The shares of a group of links, found through the (time, id) index.
_GROUP_SHARES = ("SELECT instance_id, worker, account, difficulty, job_id, height, time, id,"
                 " link FROM shares WHERE time >= ? AND time <= ? AND link IN ({links})"
                 " ORDER BY id")
_GROUP = 256  # links per read
_CREDIT_ROWS = ("SELECT link, block_hash_hex, account, amount, kind, time, id FROM credits"
                " ORDER BY id")
_ORPHAN_SHARES = ("SELECT MIN(s.id), COUNT(*) FROM shares s WHERE s.link IS NOT NULL AND"
                  " NOT EXISTS (SELECT 1 FROM chain_links l WHERE l.id = s.link)")
_FIRST_LINKED = "SELECT MIN(id) FROM shares WHERE link IS NOT NULL"
_UNLINKED_AFTER = "SELECT MIN(id), COUNT(*) FROM shares WHERE link IS NULL AND id > ?"
_UNLINKED = "SELECT COUNT(*) FROM shares WHERE link IS NULL"
_SHARE_SUMS = ("SELECT account, {bucket}, SUM(difficulty), COUNT(*), MIN(id), MAX(id)"
               " FROM shares GROUP BY account, {bucket}")
_BUCKETS = "SELECT account, bucket, difficulty, shares FROM share_buckets"
_OLDEST = "SELECT MIN(time) FROM shares"
_EXTRAS = "SELECT hash_hex, chain_head, settings, payout_window FROM blocks"
_ROLLUPS = "SELECT COUNT(*) FROM share_rollups"
_REL_TOLERANCE = 1e-9  # bucket sums add the same floats in another order
_PAGE = 10_000


@dataclass(slots=True)
class Report:
    """What verify found: `problems` in check order (the first is the first mismatch)."""

    links: int = 0
    shares: int = 0
    pruned_links: int = 0
    unchained_shares: int = 0  # stored before the ledger had a chain (schema v5)
    credit_links: int = 0
    buckets: int = 0
    blocks: int = 0
    credited_blocks: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"{self.links} share links ({self.shares} shares, {self.pruned_links} pruned, "
                f"{self.unchained_shares} from before the chain), {self.credit_links} credit "
                f"links, {self.buckets} buckets, {self.blocks} blocks ({self.credited_blocks} "
                "with credits recomputed)")


async def verify(store: LedgerStore, config: LedgerConfig | None = None) -> Report:
    """Run every check on an open store (see the module docstring)."""
    rep = Report()
    heads = await _chains(store, rep)
    await _buckets(store, rep)
    await _blocks(store, config or LedgerConfig(), rep, heads)
    return rep


async def _chains(store: LedgerStore, rep: Report) -> dict[str, dict[bytes, int]]:
    """Check every chain; returns chain -> {link hash: seq} for the block commitments."""
    links = await store.query(_LINKS)
    credit_rows: dict[int, list[tuple[Any, ...]]] = {}
    for row in await store.query(_CREDIT_ROWS):
        if row[0] is not None:
            credit_rows.setdefault(int(row[0]), []).append(row)
    heads: dict[str, dict[bytes, int]] = {}
    prev: chain.Link | None = None
    seen_rows: set[str] = set()  # share chains whose kept rows have begun
    fetched: dict[int, list[tuple[Any, ...]]] = {}
    for index, (link_id, name, seq, n, prev_hash, digest, _t0, _t1) in enumerate(links):
        prev_hash, digest, seq, n = bytes(prev_hash), bytes(digest), int(seq), int(n)
        if prev is None or prev.chain != name:
            prev = None
        expect_seq = 1 if prev is None else prev.seq + 1
        expect_prev = chain.GENESIS if prev is None else prev.hash
        where = f"chain {name} link {seq}"
        if seq != expect_seq:
            rep.problems.append(f"{where}: expected link {expect_seq} (a link is missing)")
        elif prev_hash != expect_prev:
            rep.problems.append(f"{where}: its prev_hash is not the hash of link {seq - 1}")
        if name == chain.CREDITS_CHAIN:
            rep.credit_links += 1
            rows = credit_rows.pop(int(link_id), [])
            body = chain.encode_credit_rows([r[1:6] for r in rows])
            if len(rows) != n or chain.link_hash(name, prev_hash, body) != digest:
                ids = [int(r[6]) for r in rows]
                rep.problems.append(
                    f"{where}: credits {_ids(ids)} do not match the link ({len(rows)} of {n} "
                    "rows; an amount, account or kind was changed, added or deleted)")
        else:
            rep.links += 1
            if link_id not in fetched:
                await _fetch_group(store, links, index, fetched)
            rows = fetched.pop(link_id)
            rep.shares += len(rows)
            if not rows:
                rep.pruned_links += 1
            elif len(rows) < n and name not in seen_rows:
                rep.notes.append(f"{where}: {n - len(rows)} of its {n} shares pruned "
                                 "(retention boundary)")
            elif (len(rows) != n or chain.link_hash(
                    name, prev_hash, chain.encode_share_rows([r[:7] for r in rows])) != digest):
                rep.problems.append(
                    f"{where}: shares {_ids([int(r[7]) for r in rows])} do not match the link "
                    f"({len(rows)} of {n} rows; a share was changed, added or deleted)")
            if rows:
                seen_rows.add(name)
        heads.setdefault(name, {})[digest] = seq
        prev = chain.Link(name, seq, n, prev_hash, digest, 0.0)
    for link_id, rows in sorted(credit_rows.items()):
        rep.problems.append(f"credits {_ids([int(r[6]) for r in rows])} name link {link_id}, "
                            "which is not in the chain")
    [(orphan_id, orphans)] = await store.query(_ORPHAN_SHARES)
    if orphans:
        rep.problems.append(f"share {orphan_id} (and {int(orphans) - 1} more) names a link "
                            "that is not in any chain")
    [(first_linked,)] = await store.query(_FIRST_LINKED)
    if first_linked is not None:
        [(stray, n_stray)] = await store.query(_UNLINKED_AFTER, first_linked)
        if n_stray:
            rep.problems.append(f"share {stray} (and {int(n_stray) - 1} more) was stored after "
                                "the chain began but is in no link")
    [(unlinked,)] = await store.query(_UNLINKED)
    rep.unchained_shares = int(unlinked) - int(n_stray if first_linked is not None else 0)
    return heads


async def _fetch_group(store: LedgerStore, links: Sequence[tuple[Any, ...]], start: int,
                       fetched: dict[int, list[tuple[Any, ...]]]) -> None:
    """Read the shares of the share links from `start` on (up to _GROUP of them, one chain) in
    one query, into `fetched` by link id."""
    name = links[start][1]
    group = [row for row in links[start:start + _GROUP] if row[1] == name]
    ids = [int(row[0]) for row in group]
    for link_id in ids:
        fetched[link_id] = []
    firsts = [float(row[6]) for row in group if row[6] is not None]
    lasts = [float(row[7]) for row in group if row[7] is not None]
    if not firsts:
        return
    sql = _GROUP_SHARES.replace("{links}", ", ".join("?" * len(ids)))
    for row in await store.query(sql, min(firsts), max(lasts), *ids):
        fetched[int(row[8])].append(row[:8])


async def _buckets(store: LedgerStore, rep: Report) -> None:
    [(oldest,)] = await store.query(_OLDEST)
    if oldest is None:
        return
    first_whole = bucket_of(float(oldest))  # older buckets may hold pruned shares
    sums = {(a, float(b)): (float(d), int(c), int(lo), int(hi))
            for a, b, d, c, lo, hi in await store.query(_SHARE_SUMS)}
    for account, bucket, difficulty, count in sorted(await store.query(_BUCKETS),
                                                     key=lambda r: (float(r[1]), r[0])):
        bucket = float(bucket)
        if bucket <= first_whole:
            continue
        rep.buckets += 1
        d, c, lo, hi = sums.pop((account, bucket), (0.0, 0, 0, 0))
        if int(count) != c or not math.isclose(float(difficulty), d, rel_tol=_REL_TOLERANCE):
            span = f"shares {lo}..{hi}" if c else "no shares"
            rep.problems.append(
                f"bucket {bucket:.0f} account {account!r}: share_buckets has {float(difficulty)!r}"
                f" over {int(count)} shares, the shares table {d!r} over {c} ({span})")
    for (account, bucket), (_d, _c, lo, _hi) in sorted(sums.items(), key=lambda x: x[0][1]):
        if bucket > first_whole:
            rep.problems.append(f"shares {lo}.. of account {account!r} at {bucket:.0f} are in "
                                "no bucket")


async def _blocks(store: LedgerStore, config: LedgerConfig, rep: Report,
                  heads: dict[str, dict[bytes, int]]) -> None:
    extras = {r[0]: r[1:] for r in await store.query(_EXTRAS)}
    [(rollups,)] = await store.query(_ROLLUPS)
    pruned = int(rollups) > 0
    for b in await store.blocks(0.0):
        rep.blocks += 1
        head, settings_json, window_json = extras.get(b.hash_hex, (None, None, None))
        settings = json.loads(settings_json) if settings_json else {}
        where = f"block {b.height} {b.hash_hex}"
        problem = _check_head(b, head, settings, heads)
        if problem:
            rep.problems.append(f"{where}: {problem}")
        payout = settings.get("payout", config.payout)
        if payout == "pplns" and b.status == BlockStatus.MATURED:
            rep.credited_blocks += 1
            stored = await store.credits_for(b.hash_hex, "pplns")
            cfg = _settings_config(config, settings)
            weights, full = await exact_weights(
                store, cfg.pplns_window_factor * b.network_difficulty, b.time)
            if not full and pruned:
                rep.notes.append(f"{where}: its window reaches shares removed by retention; "
                                 "credits not recomputed")
                continue
            ppm = payouts.fee_ppm(cfg.fee_percent) if cfg.fee_address else 0
            recomputed = payouts.pplns(b.reward, weights, ppm=ppm).credits
            diff = _first_difference(stored, recomputed)
            if diff:
                rep.problems.append(f"{where}: PPLNS credit of {diff}")
        elif payout == "split" and window_json:
            rep.credited_blocks += 1
            window = json.loads(window_json)
            stored = await store.credits_for(b.hash_hex, "split")
            problem = proof.split_credit_problem(
                reward=b.reward, weights=window.get("weights", {}), credits=stored,
                output_values=proof.paying_values(
                    [(bytes.fromhex(o.script_hex), o.value) for o in b.outputs]),
                settings=settings)
            if problem:
                rep.problems.append(f"{where}: {problem}")


def _check_head(b: BlockRecord, head: str | None, settings: dict[str, Any],
                heads: dict[str, dict[bytes, int]]) -> str | None:
    committed = chain.committed_head([(bytes.fromhex(o.script_hex), o.value)
                                      for o in b.outputs])
    if head is None:
        if committed is not None:
            return "its coinbase commits a chain head the block record does not have"
        return None
    try:
        name, _seq, digest = chain.parse_head(head)
    except ValueError:
        return f"malformed chain head {head!r}"
    if settings.get("payout") == "split" and committed != digest:
        return "the chain head recorded is not the one its coinbase commits"
    if digest != chain.GENESIS and digest not in heads.get(name, {}):
        return f"its committed chain head {head} is no link of chain {name}"
    return None


async def exact_weights(store: LedgerStore, window_difficulty: float,
                        until: float) -> tuple[dict[str, float], bool]:
    """PPLNS weights read share by share, newest first (no bucket sums: an edited share
    shows even where the pool's planner adds whole buckets), and whether the window filled."""
    window = payouts.PplnsWindow(window_difficulty)
    cursor: tuple[float, int] | None = None
    while True:
        page = await store.shares_page(until, cursor, _PAGE)
        for row in page:
            if window.add(row.account, row.difficulty):
                return window.weights, True
        if len(page) < _PAGE:
            return window.weights, False
        cursor = (page[-1].time, page[-1].id)


def _settings_config(config: LedgerConfig, settings: dict[str, Any]) -> LedgerConfig:
    """The config a block's credits were computed with (its recorded settings win)."""
    if not settings:
        return config
    return replace(config, payout=str(settings.get("payout", config.payout)),
                   pplns_window_factor=float(settings.get("pplns_window_factor",
                                                          config.pplns_window_factor)),
                   fee_percent=int(settings.get("fee_ppm", 0)) / 10_000,
                   fee_address=str(settings.get("fee_address") or ""),
                   dust_sat=int(settings.get("dust_sat", config.dust_sat)),
                   max_outputs=int(settings.get("max_outputs", config.max_outputs)))


def _first_difference(stored: dict[str, int], recomputed: dict[str, int]) -> str | None:
    """The first account whose credit differs by more than the 1 sat that adding the same
    float weights in another order (buckets vs shares) can move in a largest-remainder split."""
    for account in sorted(set(stored) | set(recomputed)):
        s, r = stored.get(account, 0), recomputed.get(account, 0)
        if abs(s - r) > 1:
            return f"account {account!r}: stored {s} sat, recomputed from the shares {r} sat"
    return None


def _ids(ids: Sequence[int]) -> str:
    if not ids:
        return "(none left)"
    return f"{min(ids)}..{max(ids)}" if len(ids) > 1 else str(ids[0])
