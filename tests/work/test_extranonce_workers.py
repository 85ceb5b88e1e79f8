"""Extranonce1 layout of worker processes: instance_id ‖ worker (6 bits) ‖ counter (18 bits).

No two allocators of distinct (instance, worker) can ever produce the same extranonce1: checked
exhaustively on a small size, and on the real size over the boundaries of the fields.
"""

from __future__ import annotations

import pytest

from poold.work.extranonce import MAX_WORKERS, WORKER_BITS, ExtranonceAllocator


def drain(a: ExtranonceAllocator) -> set[bytes]:
    """Every value the allocator can hand out, allocated until it refuses."""
    out = {a.allocate(0.0) for _ in range(a.capacity)}
    assert len(out) == a.capacity
    return out


def test_layout_of_a_worker() -> None:
    a = ExtranonceAllocator(0xA7, worker=5)
    en1 = a.allocate(0.0)
    assert len(en1) == 4 and en1[0] == 0xA7
    assert int.from_bytes(en1[1:], "big") >> (24 - WORKER_BITS) == 5
    assert a.capacity == 1 << (24 - WORKER_BITS) == 262_144
    assert ExtranonceAllocator(0xA7).capacity == 1 << 24  # a plain process keeps 24 bits


def test_every_worker_of_every_instance_is_disjoint_exhaustively() -> None:
    # size 2, one prefix byte: 8 bits left, 6 for the worker, 2 for the counter -> every value
    # of every (instance, worker) can be enumerated: 4 x 64 x 4.
    seen: dict[bytes, tuple[int, int]] = {}
    for instance in (0, 1, 254, 255):
        for worker in range(MAX_WORKERS):
            for en1 in drain(ExtranonceAllocator(instance, size=2, worker=worker)):
                assert en1 not in seen, (en1.hex(), seen.get(en1), (instance, worker))
                seen[en1] = (instance, worker)
                assert en1[0] == instance
    assert len(seen) == 4 * MAX_WORKERS * 4


def test_counter_wrap_stays_inside_the_worker_range() -> None:
    # Real size: walk worker 62's counter across its wrap; it never reaches worker 63's range
    # or falls back into worker 61's.
    a = ExtranonceAllocator(3, worker=62, resume_window_s=0.0)
    a._counter = a.capacity - 3  # near the top of the counter (white-box: skip 262k allocations)
    values = []
    for _ in range(6):
        en1 = a.allocate(0.0)
        a.release(en1, 0.0)
        values.append(int.from_bytes(en1, "big"))
    lo = (3 << 24) | (62 << 18)
    hi = (3 << 24) | (63 << 18)
    assert all(lo <= v < hi for v in values), [hex(v) for v in values]
    assert lo in values  # it wrapped


def test_worker_index_is_bounded() -> None:
    with pytest.raises(ValueError, match="worker index"):
        ExtranonceAllocator(1, worker=MAX_WORKERS)
    with pytest.raises(ValueError, match="worker index"):
        ExtranonceAllocator(1, worker=-1)


def test_resume_of_another_workers_session_gets_a_fresh_value() -> None:
    w0 = ExtranonceAllocator(9, worker=0)
    w1 = ExtranonceAllocator(9, worker=1)
    en1 = w1.allocate(0.0)
    w1.release(en1, 1.0)
    # the miner reconnects, and the kernel hands it to worker 0: not worker 1's value
    got = w0.allocate(2.0, resume=en1)
    assert got != en1 and int.from_bytes(got[1:], "big") >> 18 == 0
