"""Fresh work within a second of a node's return (the whole pool, the devnet, a CPU miner)."""

from __future__ import annotations

from pathlib import Path

from tests.node.returning import ReturnHarness


async def test_fresh_work_within_a_second_of_the_node_answering(tmp_path: Path) -> None:
    async with ReturnHarness(tmp_path, blocks_per_s=0.3) as h:
        # 4 s down: long enough for the old 10 s health back-off to have grown past a second.
        r = await h.round(outage_s=4.0, mine_on_return=True)
        assert r.latency_s is not None, "no clean notify on the new tip after the node returned"
        assert r.latency_s <= 1.0, f"fresh work came {r.latency_s * 1000:.0f} ms after the answer"
        # Every block found once that clean job reached the miner is on the new tip.
        switched = r.answered_at + r.latency_s
        late = [t for t, prevhash in h.events.blocks if t > switched and prevhash == r.old_tip]
        assert late == []


async def test_a_block_found_while_the_node_was_down_is_the_next_tip(tmp_path: Path) -> None:
    # The miner finds blocks during the outage; the first to reach the returning node becomes its
    # tip (no block mined by the node itself), and the miners get work on it within a second.
    async with ReturnHarness(tmp_path, blocks_per_s=2.0) as h:
        r = await h.round(outage_s=2.0, mine_on_return=False)
        assert r.found_in_outage > 0
        assert r.latency_s is not None and r.latency_s <= 1.0, r
        assert h.dn is not None and h.miner is not None
        assert h.dn.tip_hash_hex in h.miner.stats.blocks  # the node's tip is the miner's block
