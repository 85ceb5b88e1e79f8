"""Share-check throughput: native single call, native batch, pure twin; one process, round-robin.

Run: `python -m tests.bench.share_check [--rounds N]`. The share has the shape of a typical
pool's: a 250-byte coinbase (coinb1 52 B with a BIP34 height and a tag, extranonce1
4 B, extranonce2 8 B, coinb2 186 B with four outputs including the witness commitment) and a
12-step merkle branch: 45 SHA-256 compressions per share. Each method checks the same kind of
random submits (extranonce2, ntime, nonce, BIP320 version bits) against a difficulty-1 target.

Figures are CPU time of this process (time.process_time), so other load on the machine matters
less than for wall time; medians over the rounds. The last line is the summary; its ratios
compare methods measured in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from poold.bitcoin import sharecore

MASK = 0x1FFFE000
DIFF1_TARGET = 0xFFFF << 208
BATCH = 1000


def share_shape(rng: random.Random) -> tuple[bytes, bytes, bytes, list[bytes]]:
    """coinb1 (52), extranonce1 (4), coinb2 (186), branch (12) of a realistic coinbase."""
    height = 875_000
    tag = b"/pool/"                                   # 6 bytes; scriptSig = 23 bytes
    script_sig_head = b"\x03" + height.to_bytes(3, "little") + tag
    coinb1 = (struct.pack("<I", 2) + b"\x01" + b"\0" * 32 + b"\xff\xff\xff\xff"
              + bytes([len(script_sig_head) + 4 + 8 + 1]) + script_sig_head)
    p2tr = b"\x51\x20" + rng.randbytes(32)
    p2wsh = b"\x00\x20" + rng.randbytes(32)
    commitment = b"\x6a\x24\xaa\x21\xa9\xed" + rng.randbytes(32)
    outputs = [(312_500_000, p2tr), (1_000_000, p2tr), (2_000_000, p2wsh), (0, commitment)]
    coinb2 = b"\x00" + b"\xff\xff\xff\xff" + bytes([len(outputs)])  # scriptSig tail, sequence
    for value, script in outputs:
        coinb2 += struct.pack("<Q", value) + bytes([len(script)]) + script
    coinb2 += struct.pack("<I", 0)
    assert (len(coinb1), len(coinb2)) == (52, 186), (len(coinb1), len(coinb2))
    return coinb1, rng.randbytes(4), coinb2, [rng.randbytes(32) for _ in range(12)]


def submits(rng: random.Random, n: int) -> list[sharecore.Submit]:
    return [(rng.randbytes(8).hex(), f"{1_760_000_000 + rng.randrange(600):08x}",
             f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(32) & MASK:08x}")
            for _ in range(n)]


def time_loop(session: Any, work: Sequence[sharecore.Submit], target: bytes) -> float:
    check = session.check
    start = time.process_time()
    for en2, ntime, nonce, bits in work:
        check(en2, ntime, nonce, bits, MASK, target)
    return time.process_time() - start


def time_batch(session: Any, work: Sequence[sharecore.Submit], target: bytes) -> float:
    chunks = [work[i:i + BATCH] for i in range(0, len(work), BATCH)]
    start = time.process_time()
    for chunk in chunks:
        session.check_batch(chunk, MASK, target)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--native-shares", type=int, default=20_000)
    parser.add_argument("--pure-shares", type=int, default=4_000)
    args = parser.parse_args()

    rng = random.Random(875_000)
    coinb1, en1, coinb2, branch = share_shape(rng)
    job_args = (coinb1, coinb2, branch, 0x20000000, rng.randbytes(32), 0x17027726,
                0x27726 << 8 * (0x17 - 3))
    target = DIFF1_TARGET.to_bytes(32, "little")
    native_work = submits(rng, args.native_shares)
    pure_work = submits(rng, args.pure_shares)

    try:
        from poold import _sharecore as native
    except ImportError as exc:
        native = None
        print(f"native core not available ({exc}); only the pure twin is measured")

    pure_session = sharecore.PureJobCore(*job_args).session(en1, 8)
    methods: dict[str, tuple[Callable[[], float], int]] = {
        "pure": (lambda: time_loop(pure_session, pure_work, target), len(pure_work)),
    }
    if native is not None:
        native.set_impl("auto")
        native_session = native.JobCore(*job_args).session(en1, 8)
        # the cores must agree before their speed means anything
        assert (native_session.check_batch(pure_work[:64], MASK, target)
                == [pure_session.check(*s, MASK, target) for s in pure_work[:64]])
        methods["native"] = (lambda: time_loop(native_session, native_work, target),
                             len(native_work))
        methods["batch"] = (lambda: time_batch(native_session, native_work, target),
                            len(native_work))

        def portable() -> float:
            native.set_impl("portable")
            try:
                return time_loop(native_session, pure_work, target)
            finally:
                native.set_impl("auto")

        methods["portable"] = (portable, len(pure_work))

    rates: dict[str, list[float]] = {name: [] for name in methods}
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    for _ in range(args.rounds):
        for name, (run, n) in methods.items():
            rates[name].append(n / run())
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start

    print(f"share shape: coinbase {len(coinb1) + 4 + 8 + len(coinb2)} B (coinb1 {len(coinb1)} + "
          f"en1 4 + en2 8 + coinb2 {len(coinb2)}), {len(branch)}-step branch, "
          f"45 SHA-256 compressions per share")
    impl = native.impl() if native is not None else "-"
    print(f"selected core: {sharecore.CORE}; native SHA-256 path measured: {impl}; "
          f"pid {os.getpid()}, {args.rounds} rounds round-robin, "
          f"CPU {cpu:.2f} s / wall {wall:.2f} s")
    labels = {"native": "native, one call per share",
              "batch": f"native check_batch({BATCH}), two-way interleaved",
              "pure": "pure twin (hashlib), one call per share",
              "portable": "native, portable C path (for CPUs without SHA-NI)"}
    for name, values in rates.items():
        print(f"  {labels[name]:52s} median {statistics.median(values):>10,.0f} checks/s CPU "
              f"(min {min(values):,.0f}, max {max(values):,.0f}); "
              f"{1e6 / statistics.median(values):.2f} us/check")

    med = {name: statistics.median(values) for name, values in rates.items()}
    native_rate = med.get("native", 0.0)
    batch_rate = med.get("batch", 0.0)
    pure_rate = med["pure"]
    native_vs_pure = native_rate / pure_rate if pure_rate else 0.0
    batch_vs_native = batch_rate / native_rate if native_rate else 0.0
    print(f"share_check native={native_rate:.0f} batch={batch_rate:.0f} pure={pure_rate:.0f} "
          f"native_vs_pure={native_vs_pure:.2f} batch_vs_native={batch_vs_native:.2f}")


if __name__ == "__main__":
    main()
