"""Real firmware handshakes (tests/vectors/transcripts/*.jsonl) replayed against `poold run`.

Each transcript is sent pipelined, as firmware does, over TCP to the real server. Checked: one
reply per request id, the result shapes, the negotiated version mask (and no configure keys the
device did not ask for: WhatsMiner disconnects on those), the difficulty in force, and the
verdict on submits (recorded ones carry unknown job ids; fresh ones are real work for our job).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from poold.sim.miner import (
    Job,
    bits_to_target,
    difficulty_to_target,
    grind_share,
    losing_nonce,
    rolled_version,
)
from tests.integration.conftest import POOL_MASK, Pool, StratumClient, new_address

TRANSCRIPTS = sorted((Path(__file__).parent.parent / "vectors" / "transcripts").glob("*.jsonl"))
BIP320 = 0x1FFFE000


def _load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[0], lines[1:]


def _subst(obj: Any, address: str) -> Any:
    if isinstance(obj, str):
        return obj.replace("{address}", address)
    if isinstance(obj, list):
        return [_subst(x, address) for x in obj]
    if isinstance(obj, dict):
        return {k: _subst(v, address) for k, v in obj.items()}
    return obj


def test_every_transcript_names_its_source() -> None:
    assert len(TRANSCRIPTS) >= 9
    for path in TRANSCRIPTS:
        meta, steps = _load(path)
        assert meta.get("device") and meta.get("source"), path.name
        assert any("send" in s for s in steps), path.name
        ids = [s["send"]["id"] for s in steps if "send" in s]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate request ids"


def _check_reply(name: str, step: dict[str, Any], reply: dict[str, Any], requested: Any) -> None:
    exp = step["expect"]
    where = f"{name} id={step['send']['id']} {step['send']['method']}: {reply}"
    if "error_code" in exp:
        assert reply.get("error") is not None, where
        assert reply["error"][0] == exp["error_code"], where
        assert isinstance(reply["error"][1], str) and reply["error"][1], where
        return
    assert reply.get("error") is None, where
    result = reply.get("result")
    if "result" in exp:
        assert result == exp["result"], where
    shape = exp.get("shape")
    if shape == "subscribe":
        assert isinstance(result, list) and len(result) == 3, where
        subs, en1, en2_size = result
        assert isinstance(subs, list) and subs, where
        assert any(s[0] == "mining.notify" for s in subs), where
        assert isinstance(en1, str) and len(bytes.fromhex(en1)) >= 1, where
        assert isinstance(en2_size, int) and 2 <= en2_size <= 8, where
    elif shape == "configure":
        assert isinstance(result, dict), where
        assert result.get("version-rolling") is True, where
        mask = int(result["version-rolling.mask"], 16)
        miner_mask = int(requested[1].get("version-rolling.mask", "ffffffff"), 16)
        assert mask == POOL_MASK & miner_mask, where
        if "mask" in exp:
            assert result["version-rolling.mask"] == exp["mask"], where
        if "configure_keys" in exp:
            assert set(result) <= set(exp["configure_keys"]), where


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
async def test_transcript(pool: Pool, path: Path) -> None:
    _meta, steps = _load(path)
    address = new_address()
    steps = _subst(steps, address)
    c = await StratumClient.connect(pool)
    try:
        await _replay(pool, c, path.stem, steps)
    except AssertionError:
        print(pool.log_tail())
        raise
    finally:
        await c.close()


async def _replay(pool: Pool, c: StratumClient, name: str, steps: list[dict[str, Any]]) -> None:
    split = next(i for i, s in enumerate(steps) if "after" in s)
    handshake, after, submits = steps[:split], steps[split]["after"], steps[split + 1 :]
    for step in handshake:  # pipelined, without waiting, as the firmware does
        c.send(step["send"])
    for step in handshake:
        reply = await c.reply(step["send"]["id"])
        _check_reply(name, step, reply, step["send"]["params"])

    want = after.get("notifications", [])
    await c.wait_for(lambda: all(c.of(m) for m in want))
    if "difficulty" in after:
        expected = after["difficulty"]
        await c.wait_for(
            lambda: (
                c.of("mining.set_difficulty")
                and c.of("mining.notify")
                and c.difficulty_for_last_job() == pytest.approx(expected)
            )
        )

    sub = c.replies[
        next(s["send"]["id"] for s in handshake if s["send"]["method"] == "mining.subscribe")
    ][0]["result"]
    en1, en2_size = bytes.fromhex(sub[1]), int(sub[2])
    configure = [s for s in handshake if s["send"]["method"] == "mining.configure"]
    mask = (
        int(c.replies[configure[0]["send"]["id"]][0]["result"]["version-rolling.mask"], 16)
        if configure
        else 0
    )
    for step in submits:
        params = list(step["send"]["params"])
        kind = step["submit"]
        send = dict(step["send"])
        for attempt in range(3):
            if kind != "recorded":
                seen = len(c.notifications)
                params = _fresh(c, params, en1, en2_size, mask, valid=kind == "fresh_valid")
            c.send({**send, "params": params})
            reply = await c.reply(send["id"], 30.0)
            # A new tip between our job and the verdict makes fresh work stale (21): legitimate,
            # so redo it on the new job, under a new id (each id still gets exactly one reply).
            new_tip = (
                any(
                    n["method"] == "mining.notify" and n["params"][8] is True
                    for n in c.notifications[seen:]
                )
                if kind != "recorded"
                else False
            )
            stale = reply.get("error") is not None and reply["error"][0] == 21
            if not (stale and new_tip and attempt < 2):
                break
            send["id"] = f"{step['send']['id']}-retry{attempt + 1}"
        _check_reply(name, {**step, "send": send}, reply, params)
    # Exactly one reply per request id, whatever the order of messages.
    for step in steps:
        if "send" in step:
            assert len(c.replies.get(step["send"]["id"], [])) == 1, (name, step["send"])
    assert not c.closed.is_set(), f"{name}: the pool closed the connection"


def _fresh(
    c: StratumClient, recorded: list[Any], en1: bytes, en2_size: int, mask: int, *, valid: bool
) -> list[Any]:
    """The recorded submit's shape with our current job; a real share if `valid`."""
    notify = c.of("mining.notify")[-1]
    difficulty = c.difficulty_for_last_job()
    job = Job.from_notify(notify, difficulty, en1, en2_size)
    six = len(recorded) == 6
    bits_mask = mask or (BIP320 if six else 0)
    bits = int.from_bytes(os.urandom(4), "big") & bits_mask
    version = rolled_version(job.version, bits, bits_mask) if six else job.version
    en2 = os.urandom(en2_size)
    if valid:
        found = grind_share(job, en2, version, difficulty_to_target(difficulty))
        assert found is not None, f"no share within 2**24 hashes at difficulty {difficulty}"
        nonce = found[0]
    else:
        # Random, but not a block: regtest's network target is met by half of all hashes.
        nonce = losing_nonce(job, en2, version, bits_to_target(job.nbits))
    params = [recorded[0], job.job_id, en2.hex(), f"{job.ntime:08x}", f"{nonce:08x}"]
    if six:
        params.append(f"{bits:08x}")
    return params
