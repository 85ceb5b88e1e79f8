"""Firmware drivers behind one `MinerDriver` protocol (base.py), and `build_drivers` which
makes one per configured miner with its site credentials (resolved from env vars or files at
start-up, held as `Secret`, never logged)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from poold.errors import ConfigError
from poold.fleet.drivers.base import MinerDriver, Secret
from poold.fleet.inventory import FleetConfig, MinerSpec

DEFAULT_PORTS = {"braiins": 80, "luxos": 4028, "whatsminer": 4433, "cgminer": 4028}


def make_driver(spec: MinerSpec, username: str, password: Secret, *,
                timeout_s: float = 10.0) -> MinerDriver:
    """The driver for one miner (ports default per firmware). Every driver gets the miner's
    `max_w` (inventory; nameplate unless set) and never offers a target or level above it."""
    port = spec.port or DEFAULT_PORTS.get(spec.driver, 0)
    if spec.driver == "braiins":
        from poold.fleet.drivers.braiins import BraiinsDriver

        return BraiinsDriver(spec.host, port, username=username or "root", password=password,
                             timeout_s=timeout_s, max_w=spec.max_w)
    if spec.driver == "luxos":
        from poold.fleet.drivers.luxos import LuxosDriver

        return LuxosDriver(spec.host, port, timeout_s=timeout_s, max_w=spec.max_w)
    if spec.driver == "whatsminer":
        from poold.fleet.drivers.whatsminer import WhatsminerDriver

        return WhatsminerDriver(spec.host, port, password=password, min_w=spec.min_w,
                                max_w=spec.max_w, timeout_s=timeout_s)
    if spec.driver == "cgminer":
        from poold.fleet.drivers.cgminer import CgminerDriver

        # Read-only: it draws its nameplate whatever max_w says, and is counted so.
        return CgminerDriver(spec.host, port, nameplate_w=spec.nameplate_w, timeout_s=timeout_s)
    if spec.driver == "pyasic":
        from poold.fleet.drivers.pyasic_adapter import PyasicDriver

        return PyasicDriver(spec.host, nameplate_w=spec.nameplate_w, max_w=spec.max_w,
                            timeout_s=timeout_s)
    raise ConfigError(f"fleet.miners.{spec.id}.driver",
                      f"no production driver for {spec.driver!r} (sim is for tests)")


def build_drivers(cfg: FleetConfig, env: Mapping[str, str] | None = None
                  ) -> dict[str, MinerDriver]:
    """One driver per configured miner; credentials resolved once per driver kind."""
    env = os.environ if env is None else env
    resolved: dict[str, tuple[str, Secret]] = {}
    out: dict[str, MinerDriver] = {}
    for m in cfg.miners:
        if m.driver not in resolved:
            cred = cfg.credentials.get(m.driver)
            user, pw = cred.resolve(env) if cred is not None else ("", "")
            resolved[m.driver] = (user, Secret(pw))
        user, secret = resolved[m.driver]
        out[m.id] = make_driver(m, user, secret, timeout_s=cfg.command_timeout_s)
    return out
