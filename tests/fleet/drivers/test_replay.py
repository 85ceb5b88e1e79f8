"""Every driver against the vendors' documented response shapes, replayed over real sockets
(tests/vectors/firmware/*.json, each citing its source): the documented minimum reads, the
full shape reads with its extras, and each error shape fails naming the call and the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from poold.fleet.drivers import base
from poold.fleet.drivers.base import MinerDriver, Secret, Telemetry
from poold.fleet.drivers.braiins import BraiinsDriver
from poold.fleet.drivers.cgminer import CgminerDriver
from poold.fleet.drivers.luxos import LuxosDriver
from poold.fleet.drivers.whatsminer import WhatsminerDriver
from tests.fleet.drivers.replay import (
    CgminerReplay,
    HttpReplay,
    WhatsminerReplay,
    cases,
)

Server = HttpReplay | CgminerReplay | WhatsminerReplay


def check(t: Telemetry, expect: dict[str, Any]) -> None:
    for key, want in expect.items():
        if key == "errors_contain":
            assert any(want in e for e in t.errors), (want, t.errors)
            continue
        got = getattr(t, key)
        if isinstance(got, tuple):
            got = list(got)
        if isinstance(want, float):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key


async def run_case(case: dict[str, Any], make: Callable[[dict[str, Any]], Server],
                   driver: Callable[[int], MinerDriver]) -> None:
    srv = await make(case["responses"]).start()  # type: ignore[misc]
    d = driver(srv.port)
    try:
        if "error" in case:
            exc_type = getattr(base, case["error"]["type"])
            with pytest.raises(exc_type, match=case["error"]["match"]) as exc:
                await d.read()
            assert "127.0.0.1" in str(exc.value)  # names the miner
        else:
            check(await d.read(), case["expect"])
    finally:
        await d.close()
        await srv.stop()


@pytest.mark.parametrize(("name", "case"), cases("braiins-rest.json"))
async def test_braiins_rest(name: str, case: dict[str, Any]) -> None:
    await run_case(case, HttpReplay, lambda port: BraiinsDriver(
        "127.0.0.1", port, password=Secret("pw"), timeout_s=2.0))


@pytest.mark.parametrize(("name", "case"), cases("luxos.json"))
async def test_luxos(name: str, case: dict[str, Any]) -> None:
    await run_case(case, CgminerReplay, lambda port: LuxosDriver(
        "127.0.0.1", port, timeout_s=2.0))


@pytest.mark.parametrize(("name", "case"), cases("whatsminer-v3.json"))
async def test_whatsminer_v3(name: str, case: dict[str, Any]) -> None:
    await run_case(case, WhatsminerReplay, lambda port: WhatsminerDriver(
        "127.0.0.1", port, password=Secret("pw"), timeout_s=2.0))


@pytest.mark.parametrize(("name", "case"), cases("cgminer.json"))
async def test_cgminer(name: str, case: dict[str, Any]) -> None:
    await run_case(case, CgminerReplay, lambda port: CgminerDriver(
        "127.0.0.1", port, nameplate_w=3250, timeout_s=2.0))


def test_every_vector_file_has_minimal_full_and_error_shapes() -> None:
    for name in ("braiins-rest.json", "luxos.json", "whatsminer-v3.json", "cgminer.json"):
        shapes = {c["shape"] for _, c in cases(name)}
        assert shapes == {"minimal", "full", "error"}, name
