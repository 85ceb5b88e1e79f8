"""Where caps come from: config, the time-of-day schedule, the API, and the grid signal.

The cap in force on a node (site, container or rack) is the minimum of every source that
applies: its configured cap, an active schedule entry, an API override (which may only lower a
cap: the configured one is the breaker), and for the site the grid operator's dispatch signal.
The grid signal carries a heartbeat; if it is silent for `heartbeat_timeout_s` the site drops
to `safe_cap_kw` (fail-safe, as Proto Fleet does with its 240 s MQTT watchdog, docs/FLEET.md §5).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from poold.fleet.clock import Clock
from poold.fleet.inventory import FleetConfig


class Source(StrEnum):
    CONFIG = "config"
    SCHEDULE = "schedule"
    API = "api"
    GRID = "grid"
    SAFE = "safe"  # grid signal lost, or shutting down


@dataclass(frozen=True, slots=True)
class Cap:
    node: str
    watts: float
    source: Source


class Budgets:
    """The caps in force, as a function of time and of what the API and grid told us."""

    def __init__(self, cfg: FleetConfig, clock: Clock) -> None:
        self.clock = clock
        self.reconfigure(cfg)
        self._api: dict[str, tuple[float, float | None]] = {}  # node -> (watts, until)
        self._grid_w: float | None = None
        self._grid_ttl_s: float | None = None  # the last grid message's own heartbeat limit
        self._last_heartbeat = clock.now()
        self._grid_changed_at = clock.now()
        self._forced_safe = False
        self._grid_received = False
        self.version = 0  # bumps on every explicit change (API, grid value, safe)
        #: Called on every explicit change (the controller's wake: a grid signal or an API
        #: cap takes effect at once, not at the next guard tick).
        self.on_change: Callable[[], None] = lambda: None

    def reconfigure(self, cfg: FleetConfig) -> None:
        """Take the configured caps (and schedule, safe cap, heartbeat) of `cfg` (SIGHUP)."""
        self.cfg = cfg
        self._config_w: dict[str, float] = {cfg.site: cfg.cap_kw * 1000.0}
        for c in cfg.containers:
            self._config_w[c.id] = c.cap_kw * 1000.0
        for r in cfg.racks:
            self._config_w[r.id] = r.cap_kw * 1000.0
        api: dict[str, tuple[float, float | None]] = getattr(self, "_api", {})
        for node, (w, _until) in list(api.items()):
            if node not in self._config_w or w > self._config_w[node]:
                del api[node]
        self.version = getattr(self, "version", -1) + 1

    def overrides(self) -> dict[str, tuple[float, float | None]]:
        """API caps in force: node -> (watts, until clock time or None)."""
        return dict(self._api)

    @property
    def grid_w(self) -> float | None:
        return self._grid_w

    def config_w(self, node: str) -> float:
        return self._config_w[node]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._config_w)

    def set_cap(self, node: str, cap_kw: float | None, *, until: float | None = None) -> None:
        """The API method: lower `node`'s cap to `cap_kw` (None clears the override), until
        clock time `until` (None = until cleared). Raises ValueError on a bad node or value."""
        if node not in self._config_w:
            raise ValueError(f"unknown node {node!r}")
        if cap_kw is None:
            self._api.pop(node, None)
        else:
            w = cap_kw * 1000.0
            if not 0 <= w <= self._config_w[node]:
                raise ValueError(f"cap for {node} must be within [0, "
                                 f"{self._config_w[node] / 1000:g}] kW")
            self._api[node] = (w, until)
        self.version += 1
        self.on_change()

    def grid_signal(self, site_cap_kw: float | None, *, ttl_s: float | None = None) -> None:
        """A grid dispatch message: heartbeat plus the site cap it allows (None = no limit).
        `ttl_s`: the message's own heartbeat limit (silent longer ⇒ safe cap), overriding
        `grid_signal.heartbeat_timeout_s` until the next message."""
        if site_cap_kw is not None and site_cap_kw < 0:
            raise ValueError("grid cap must be ≥ 0")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError("grid signal ttl must be > 0")
        self._grid_ttl_s = ttl_s
        self._grid_received = True
        self._last_heartbeat = self.clock.now()
        new = None if site_cap_kw is None else site_cap_kw * 1000.0
        if new != self._grid_w:
            self._grid_w = new
            self._grid_changed_at = self._last_heartbeat
            self.version += 1
        self.on_change()  # also a heartbeat: it moves the time the signal would be lost

    def heartbeat(self) -> None:
        self._last_heartbeat = self.clock.now()

    @property
    def grid_signal_in_use(self) -> bool:
        """A grid signal is configured, or one has been received: its age means something."""
        return self.cfg.grid_heartbeat_timeout_s is not None or self._grid_received

    def grid_signal_age(self) -> float:
        return self.clock.now() - self._last_heartbeat

    def _heartbeat_limit_s(self) -> float | None:
        return self._grid_ttl_s if self._grid_ttl_s is not None else (
            self.cfg.grid_heartbeat_timeout_s)

    def grid_lost(self) -> bool:
        hb = self._heartbeat_limit_s()
        return hb is not None and self.grid_signal_age() > hb

    def grid_lost_in(self) -> float | None:
        """Seconds until the grid signal's heartbeat or ttl runs out (the site then drops to
        its safe cap), or None when it is not running (none in use, or already lost)."""
        hb = self._heartbeat_limit_s()
        if hb is None or self._forced_safe:
            return None
        left = hb - self.grid_signal_age()
        return left if left >= 0 else None

    def grid_changed_at(self, source: Source) -> float:
        """When the grid asked for the site cap now in force from `source`: the message that
        set its level (GRID), or the moment its heartbeat or ttl ran out (SAFE)."""
        hb = self._heartbeat_limit_s()
        if source is Source.SAFE and hb is not None:
            return self._last_heartbeat + hb
        return self._grid_changed_at

    def force_safe(self, on: bool = True) -> None:
        """Shutdown: hold the site at its safe cap regardless of other sources."""
        self._forced_safe = on
        self.version += 1

    def caps(self) -> dict[str, Cap]:
        now = self.clock.now()
        wall = dt.datetime.fromtimestamp(self.clock.wall(), tz=dt.UTC)
        minute = wall.hour * 60 + wall.minute
        weekday = wall.weekday()
        out: dict[str, Cap] = {}
        for node, w in self._config_w.items():
            best = Cap(node, w, Source.CONFIG)
            for e in self.cfg.schedule:
                if e.node == node and e.active(weekday, minute) and e.cap_kw * 1000.0 < best.watts:
                    best = Cap(node, e.cap_kw * 1000.0, Source.SCHEDULE)
            api = self._api.get(node)
            if api is not None:
                aw, until = api
                if until is not None and now >= until:
                    del self._api[node]
                elif aw < best.watts:
                    best = Cap(node, aw, Source.API)
            if node == self.cfg.site:
                if self._grid_w is not None and self._grid_w < best.watts:
                    best = Cap(node, self._grid_w, Source.GRID)
                safe = self.cfg.safe_cap_kw * 1000.0
                if (self._forced_safe or self.grid_lost()) and safe < best.watts:
                    best = Cap(node, safe, Source.SAFE)
            out[node] = best
        return out
