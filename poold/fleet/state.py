"""Per-miner controller state and the status snapshot the API and the demo read."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from poold.fleet.drivers.base import Capabilities, Desired, MinerDriver
from poold.fleet.health import MinerHealth
from poold.fleet.inventory import MinerSpec
from poold.fleet.model import CurveLearner, PowerCurve
from poold.fleet.policy import Allocation


@dataclass(slots=True)
class MinerState:
    spec: MinerSpec
    driver: MinerDriver
    learner: CurveLearner
    health: MinerHealth = field(default_factory=MinerHealth)
    caps: Capabilities | None = None
    commanded: Desired | None = None
    commanded_w: float | None = None
    settle_until: float = -math.inf
    inflight: bool = False
    next_poll: float = 0.0
    sleeps: deque[float] = field(default_factory=deque)  # wall times of sleeps, last 24 h
    slept_at: float = -math.inf  # clock time of our last sleep command taken
    plan: Allocation | None = None
    plan_desired: Desired | None = None
    #: Why the plan wakes this miner before its `min_sleep_s` dwell (None: it does not).
    early_wake: str | None = None
    #: Failed telemetry reads in a row, and when the last WARNING about this miner was logged
    #: (at most one a minute per miner).
    read_failures: int = 0
    warned_at: float = -math.inf
    nameplate_curve: PowerCurve = field(init=False)

    def __post_init__(self) -> None:
        self.nameplate_curve = PowerCurve.from_nameplate(self.spec.nameplate_w,
                                                         self.spec.nameplate_ths)

    @property
    def worst_w(self) -> float:
        return max(self.spec.max_w, self.spec.nameplate_w)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    cap_w: float
    power_w: float
    hashrate_ths: float
    over_s: float


@dataclass(frozen=True, slots=True)
class FleetStatus:
    time: float
    nodes: tuple[NodeStatus, ...]
    miners: int
    stale: int
    faulty: int
    asleep: int
    commands_sent: int
