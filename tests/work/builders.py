"""Shared builders for the work and stratum tests: a real regtest template (GBT vector) and the
engine/session objects around it, with an injectable clock."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.bitcoin.target import bits_to_target
from poold.bitcoin.template import Template, parse_gbt
from poold.stratum.auth import Authorizer
from poold.stratum.session import Session, SessionContext, SessionSettings
from poold.work.blocks import BlockCandidate
from poold.work.difficulty import DifficultyPolicy
from poold.work.engine import ShareEngine
from poold.work.extranonce import ExtranonceAllocator
from poold.work.jobs import JobBook, SoloPayout
from poold.work.vardiff import Vardiff

VECTOR = Path(__file__).parent.parent / "vectors" / "gbt-regtest-bitcoind-v31.json"
MAINNET_BITS = 0x1703A30C  # a real mainnet nBits: random nonces never meet it
ADDRESS = p2wpkh_address(bytes(range(20)), Network.REGTEST)
ADDRESS2 = p2wpkh_address(bytes(range(1, 21)), Network.REGTEST)


def regtest_template(
    *, hard: bool = False, prevhash: bytes | None = None, **changes: Any
) -> Template:
    t = parse_gbt(json.loads(VECTOR.read_text()), received_at=1.0)
    if hard:
        changes.update(bits=MAINNET_BITS, target=bits_to_target(MAINNET_BITS))
    if prevhash is not None:
        changes["prevhash"] = prevhash
    return dataclasses.replace(t, **changes) if changes else t


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Rig:
    book: JobBook
    engine: ShareEngine
    ctx: SessionContext
    clock: Clock
    blocks: list[BlockCandidate]
    shares: list[Any]

    def session(self) -> Session:
        return Session(self.ctx, self.clock.now)


class ListSink:
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def record_share(self, share: Any) -> None:
        self.out.append(share)


def rig(
    template: Template | None = None,
    *,
    start: float = 1e-6,
    vardiff: Vardiff | None = None,
    settings: SessionSettings | None = None,
    min_difficulty: float = 1e-9,
    max_difficulty: float = 1e15,
) -> Rig:
    template = template if template is not None else regtest_template(hard=True)
    clock = Clock(float(template.curtime + 10))
    blocks: list[BlockCandidate] = []
    shares: list[Any] = []
    book = JobBook(SoloPayout(), tag=b"/poold-test/")
    engine = ShareEngine(
        book,
        DifficultyPolicy(start, min_difficulty, max_difficulty),
        vardiff,
        instance_id=7,
        on_block=blocks.append,
        share_sink=ListSink(shares),
    )
    book.set_template(template, True, clock.now)
    ctx = SessionContext(
        engine,
        ExtranonceAllocator(7),
        Authorizer(Network.REGTEST, solo=True),
        settings or SessionSettings(),
        clock,
    )
    return Rig(book, engine, ctx, clock, blocks, shares)


def script(address: str = ADDRESS) -> bytes:
    return address_to_script(address, Network.REGTEST)
