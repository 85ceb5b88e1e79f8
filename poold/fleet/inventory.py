"""The fleet inventory: site → container/row → rack → miner, parsed from the `[fleet]` TOML table.

`parse_fleet(table, source)` is called by poold.config for the `[fleet]` table and returns a
frozen `FleetConfig`. Every error is a `ConfigError` naming the dotted key (for example
``fleet.racks[3].cap_kw``) and the file. TOML shape::

    [fleet]
    site = "geo-1"                    # site name (default "site")
    cap_kw = 2000.0                   # site interconnect cap (required)
    over_cap_allowed_s = 10.0         # time the site may stay above cap (default 10)
    safe_cap_kw = 400.0               # grid signal lost / shutdown level (default = cap_kw)
    dry_run = false                   # plan and log, send no command
    guard_interval_s = 1.0            # fast guard tick
    optimizer_interval_s = 30.0       # 30–60 s (docs/FLEET.md §5)
    telemetry_interval_s = 10.0       # per-miner poll period, staggered
    stale_after_s = 30.0              # telemetry older than this counts at worst case
    ramp_kw_per_min = 500.0           # restore ramp limit, site-wide
    daily_cycle_budget = 4            # sleep/wake cycles per miner per day
    min_sleep_s = 600.0               # a slept miner stays asleep at least this long
    target_fraction = 0.97            # optimizer aims at cap × this (hysteresis band)
    command_timeout_s = 15.0
    temp_limit_c = 85.0               # thermal protection threshold (chip/board)
    miners_csv = "miners.csv"         # optional; relative to the config file's directory
    pool_hashrate_scale = 1.0         # accepted difficulty × this = the miner's own; only
                                      # simulations (CPU miners standing in for ASICs) set it

    [fleet.grid_signal]
    heartbeat_timeout_s = 240.0       # silent longer ⇒ site goes to safe_cap_kw
    response_s = 5.0                  # a lower grid level (or its loss) met on the meters
                                      # within this (fast step: sleep; counted if missed)

    [[fleet.schedule]]                # time-of-day caps, UTC, end exclusive, may wrap midnight
    start = "17:00"
    end = "21:00"
    cap_kw = 1200.0
    node = "geo-1"                    # site (default), a container id or a rack id
    days = ["mon", "tue"]             # optional

    [[fleet.containers]]              # `rows` is accepted as an alias
    id = "c1"
    cap_kw = 800.0
    over_cap_allowed_s = 10.0

    [[fleet.racks]]
    id = "r1"
    container = "c1"                  # optional
    cap_kw = 40.0
    over_cap_allowed_s = 5.0

    [fleet.credentials.braiins]       # per driver, for this site; secrets never inline
    username = "root"
    password_env = "POOLD_BRAIINS_PASSWORD"   # or password_file = "/etc/poold/braiins.pw"

    [[fleet.miners]]                  # or rows of the CSV with the same column names
    id = "m1"
    rack = "r1"
    position = 1
    host = "10.0.0.11:80"
    driver = "braiins"                # braiins | luxos | whatsminer | cgminer | pyasic | sim
    model = "S19j Pro"
    nameplate_w = 3050
    nameplate_ths = 100
    worker = "acct.m1"                # Stratum worker name (pool coupling), optional
    min_w = 1100                      # optional, default 34 % of nameplate
    max_w = 3050                      # optional, default nameplate

Caps must fit: a container's cap ≤ the site cap, a rack's ≤ its container's (or the site's),
safe cap ≤ site cap, scheduled caps ≤ the node's configured cap.
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)


from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poold.errors import ConfigError

DRIVERS = ("braiins", "luxos", "whatsminer", "cgminer", "pyasic", "sim")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_MIN_FRACTION = 0.34  # lowest VNish S19 preset / nameplate (docs/FLEET.md §3)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where a driver's secret lives: names of an env var or a file, never the secret itself."""

    username: str = ""
    password_env: str | None = None
    password_file: str | None = None

    def resolve(self, env: Mapping[str, str] | None = None) -> tuple[str, str]:
        """(username, password), read now; raises ConfigError if the source is missing."""
        env = os.environ if env is None else env
        if self.password_env:
            if self.password_env not in env:
                raise ConfigError("fleet.credentials", f"env var {self.password_env} is not set")
            return self.username, env[self.password_env]
        if self.password_file:
            try:
                return self.username, Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError("fleet.credentials",
                                  f"cannot read {self.password_file}: {exc.strerror}") from exc
        return self.username, ""


@dataclass(frozen=True, slots=True)
class MinerSpec:
    id: str
    rack: str
    position: int
    host: str
    port: int | None
    driver: str
    model: str
    nameplate_w: float
    nameplate_ths: float
    min_w: float
    max_w: float
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class RackSpec:
    id: str
    container: str | None
    cap_kw: float
    over_cap_allowed_s: float


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    id: str
    cap_kw: float
    over_cap_allowed_s: float


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    node: str
    start_min: int  # minutes after 00:00 UTC
    end_min: int
    cap_kw: float
    days: tuple[int, ...] = ()  # 0 = Monday; empty = every day

    def active(self, weekday: int, minute: int) -> bool:
        if self.start_min <= self.end_min:
            inside = self.start_min <= minute < self.end_min
            day = weekday
        else:  # wraps midnight: the part after midnight belongs to the previous day's entry
            inside = minute >= self.start_min or minute < self.end_min
            day = weekday if minute >= self.start_min else (weekday - 1) % 7
        return inside and (not self.days or day in self.days)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    site: str
    cap_kw: float
    over_cap_allowed_s: float
    safe_cap_kw: float
    containers: tuple[ContainerSpec, ...]
    racks: tuple[RackSpec, ...]
    miners: tuple[MinerSpec, ...]
    schedule: tuple[ScheduleEntry, ...] = ()
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    dry_run: bool = False
    guard_interval_s: float = 1.0
    optimizer_interval_s: float = 30.0
    telemetry_interval_s: float = 10.0
    stale_after_s: float = 30.0
    ramp_kw_per_min: float = 500.0
    daily_cycle_budget: int = 4
    min_sleep_s: float = 600.0
    target_fraction: float = 0.97
    command_timeout_s: float = 15.0
    temp_limit_c: float = 85.0
    grid_heartbeat_timeout_s: float | None = None
    grid_response_s: float = 5.0
    pool_hashrate_scale: float = 1.0

    def rack(self, rack_id: str) -> RackSpec:
        for r in self.racks:
            if r.id == rack_id:
                return r
        raise KeyError(rack_id)

# ---------------------------------------------------------------------------------------------
# Field readers: each names the full key on error


class _Reader:
    def __init__(self, table: Mapping[str, Any], key: str, source: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(key, "must be a table", source)
        self.t, self.key, self.source = table, key, source
        self.used: set[str] = set()

    def err(self, name: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.key}.{name}" if name else self.key, msg, self.source)

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        return self.t.get(name, default)

    def num(self, name: str, default: float | None = None, *, positive: bool = False,
            minimum: float | None = None) -> float:
        v = self._get(name, default)
        if v is None:
            raise self.err(name, "is required")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.err(name, f"must be a number, got {v!r}")
        if positive and v <= 0:
            raise self.err(name, f"must be > 0, got {v}")
        if minimum is not None and v < minimum:
            raise self.err(name, f"must be ≥ {minimum}, got {v}")
        return float(v)

    def opt_num(self, name: str, *, positive: bool = False) -> float | None:
        if name not in self.t:
            self.used.add(name)
            return None
        return self.num(name, positive=positive)

    def int_(self, name: str, default: int | None = None, *, minimum: int = 0) -> int:
        v = self._get(name, default)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(name, f"must be an integer, got {v!r}")
        if v < minimum:
            raise self.err(name, f"must be ≥ {minimum}, got {v}")
        return v

    def str_(self, name: str, default: str | None = None) -> str:
        v = self._get(name, default)
        if v is None:
            raise self.err(name, "is required")
        if not isinstance(v, str) or not v.strip():
            raise self.err(name, f"must be a non-empty string, got {v!r}")
        return v.strip()

    def opt_str(self, name: str) -> str | None:
        return self.str_(name) if name in self.t else self._get(name, None)

    def bool_(self, name: str, default: bool) -> bool:
        v = self._get(name, default)
        if not isinstance(v, bool):
            raise self.err(name, f"must be true or false, got {v!r}")
        return v

    def list_(self, name: str) -> list[Any]:
        v = self._get(name, [])
        if not isinstance(v, list):
            raise self.err(name, "must be an array of tables")
        return v

    def check_unknown(self) -> None:
        unknown = sorted(set(self.t) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key")


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def _minutes(r: _Reader, name: str) -> int:
    s = r.str_(name)
    if not _HHMM.match(s):
        raise r.err(name, f"must be HH:MM (UTC), got {s!r}")
    h, m = s.split(":")
    return int(h) * 60 + int(m)


def _host_port(r: _Reader, raw: str) -> tuple[str, int | None]:
    if raw.count(":") == 1:
        host, port_s = raw.rsplit(":", 1)
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise r.err("host", f"bad port in {raw!r}")
        return host, int(port_s)
    return raw, None


def _miner(row: Mapping[str, Any], key: str, source: str) -> MinerSpec:
    # CSV cells are strings: coerce numbers first so the same reader serves TOML and CSV.
    if any(isinstance(v, str) for v in row.values()):
        fixed: dict[str, Any] = {}
        for k, v in row.items():
            if k is None:
                raise ConfigError(key, "row has more cells than the header", source)
            if isinstance(v, str) and k in ("nameplate_w", "nameplate_ths", "min_w", "max_w"):
                try:
                    fixed[k] = float(v) if v.strip() else None
                except ValueError:
                    raise ConfigError(f"{key}.{k}", f"must be a number, got {v!r}",
                                      source) from None
                if fixed[k] is None:
                    continue
            elif isinstance(v, str) and not v.strip():
                continue
            else:
                fixed[k] = v
        row = fixed
    r = _Reader(row, key, source)
    mid = r.str_("id")
    rack = r.str_("rack")
    position = r.int_("position", 0)
    host, port = _host_port(r, r.str_("host"))
    driver = r.str_("driver")
    if driver not in DRIVERS:
        raise r.err("driver", f"must be one of {', '.join(DRIVERS)}, got {driver!r}")
    model = r.str_("model", "unknown")
    p_nom = r.num("nameplate_w", positive=True)
    h_nom = r.num("nameplate_ths", positive=True)
    min_w = r.opt_num("min_w", positive=True) or round(p_nom * DEFAULT_MIN_FRACTION)
    max_w = r.opt_num("max_w", positive=True) or p_nom
    if min_w > max_w:
        raise r.err("min_w", f"{min_w} W is above max_w {max_w} W")
    worker = r.opt_str("worker")
    r.check_unknown()
    return MinerSpec(mid, rack, position, host, port, driver, model, p_nom, h_nom, min_w, max_w,
                     worker)


def _read_csv(path: Path, key: str, source: str) -> list[tuple[Mapping[str, Any], str, str]]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}", source) from exc
    return [(row, f"{key}[{i}]", str(path)) for i, row in enumerate(rows, start=2)]


def parse_fleet(table: Mapping[str, Any], source: str) -> FleetConfig:
    """Parse and check the `[fleet]` table (see the module docstring for its shape)."""
    r = _Reader(table, "fleet", source)
    site = r.str_("site", "site")
    cap_kw = r.num("cap_kw", positive=True)
    over_s = r.num("over_cap_allowed_s", 10.0, minimum=0)
    safe_cap_kw = r.num("safe_cap_kw", cap_kw, minimum=0)
    if safe_cap_kw > cap_kw:
        raise r.err("safe_cap_kw", f"{safe_cap_kw} kW is above the site cap {cap_kw} kW")
    opts = {
        "dry_run": r.bool_("dry_run", False),
        "guard_interval_s": r.num("guard_interval_s", 1.0, positive=True),
        "optimizer_interval_s": r.num("optimizer_interval_s", 30.0, positive=True),
        "telemetry_interval_s": r.num("telemetry_interval_s", 10.0, positive=True),
        "stale_after_s": r.num("stale_after_s", 30.0, positive=True),
        "ramp_kw_per_min": r.num("ramp_kw_per_min", 500.0, positive=True),
        "daily_cycle_budget": r.int_("daily_cycle_budget", 4),
        "min_sleep_s": r.num("min_sleep_s", 600.0, minimum=0),
        "target_fraction": r.num("target_fraction", 0.97, positive=True),
        "command_timeout_s": r.num("command_timeout_s", 15.0, positive=True),
        "temp_limit_c": r.num("temp_limit_c", 85.0, positive=True),
        "pool_hashrate_scale": r.num("pool_hashrate_scale", 1.0, positive=True),
    }
    if not 0.5 <= opts["target_fraction"] <= 1.0:
        raise r.err("target_fraction", "must be within [0.5, 1.0]")
    if opts["stale_after_s"] < opts["telemetry_interval_s"]:
        raise r.err("stale_after_s", "must be ≥ telemetry_interval_s")

    grid = r._get("grid_signal", {})
    hb: float | None = None
    response_s = 5.0
    if grid:
        g = _Reader(grid, "fleet.grid_signal", source)
        hb = g.num("heartbeat_timeout_s", 240.0, positive=True)
        response_s = g.num("response_s", 5.0, positive=True)
        g.check_unknown()

    containers: list[ContainerSpec] = []
    seen: set[str] = {site}
    raw_containers = r.list_("containers") + r.list_("rows")
    for i, ct in enumerate(raw_containers):
        c = _Reader(ct, f"fleet.containers[{i}]", source)
        cid = c.str_("id")
        if cid in seen:
            raise c.err("id", f"duplicate node id {cid!r}")
        seen.add(cid)
        ccap = c.num("cap_kw", cap_kw, positive=True)
        if ccap > cap_kw:
            raise c.err("cap_kw", f"{ccap} kW does not fit in the site cap {cap_kw} kW")
        containers.append(ContainerSpec(cid, ccap, c.num("over_cap_allowed_s", over_s, minimum=0)))
        c.check_unknown()
    ccaps = {c.id: c.cap_kw for c in containers}

    racks: list[RackSpec] = []
    for i, rt in enumerate(r.list_("racks")):
        rr = _Reader(rt, f"fleet.racks[{i}]", source)
        rid = rr.str_("id")
        if rid in seen:
            raise rr.err("id", f"duplicate node id {rid!r}")
        seen.add(rid)
        parent = rr.opt_str("container")
        if parent is not None and parent not in ccaps:
            raise rr.err("container", f"no container {parent!r}")
        parent_cap = ccaps[parent] if parent is not None else cap_kw
        rcap = rr.num("cap_kw", positive=True)
        if rcap > parent_cap:
            raise rr.err("cap_kw", f"{rcap} kW does not fit in {parent or site} "
                                   f"({parent_cap} kW)")
        racks.append(RackSpec(rid, parent, rcap, rr.num("over_cap_allowed_s", over_s, minimum=0)))
        rr.check_unknown()
    if not racks:
        raise r.err("racks", "at least one rack is required")
    rack_ids = {x.id for x in racks}

    rows: list[tuple[Mapping[str, Any], str, str]] = [
        (m, f"fleet.miners[{i}]", source) for i, m in enumerate(r.list_("miners"))
    ]
    csv_name = r.opt_str("miners_csv")
    if csv_name is not None:
        base = Path(source).parent if source and not source.startswith("env:") else Path()
        rows += _read_csv(base / csv_name, "fleet.miners_csv", source)
    miners: list[MinerSpec] = []
    mids: set[str] = set()
    for row, key, src in rows:
        if not isinstance(row, Mapping):
            raise ConfigError(key, "must be a table", src)
        m = _miner(row, key, src)
        if m.id in mids:
            raise ConfigError(f"{key}.id", f"duplicate miner id {m.id!r}", src)
        if m.rack not in rack_ids:
            raise ConfigError(f"{key}.rack", f"no rack {m.rack!r}", src)
        mids.add(m.id)
        miners.append(m)

    node_caps = {site: cap_kw, **ccaps, **{x.id: x.cap_kw for x in racks}}
    schedule: list[ScheduleEntry] = []
    for i, st in enumerate(r.list_("schedule")):
        s = _Reader(st, f"fleet.schedule[{i}]", source)
        node = s.str_("node", site)
        if node not in node_caps:
            raise s.err("node", f"no site, container or rack {node!r}")
        start, end = _minutes(s, "start"), _minutes(s, "end")
        if start == end:
            raise s.err("end", "must differ from start")
        scap = s.num("cap_kw", minimum=0)
        if scap > node_caps[node]:
            raise s.err("cap_kw", f"{scap} kW is above {node}'s cap {node_caps[node]} kW")
        days_raw = s._get("days", [])
        if not isinstance(days_raw, list) or any(d not in DAYS for d in days_raw):
            raise s.err("days", f"must be a list of {', '.join(DAYS)}")
        schedule.append(ScheduleEntry(node, start, end, scap,
                                      tuple(DAYS.index(d) for d in days_raw)))
        s.check_unknown()

    creds: dict[str, Credentials] = {}
    raw_creds = r._get("credentials", {})
    if not isinstance(raw_creds, Mapping):
        raise r.err("credentials", "must be a table of driver names")
    for drv, ct in raw_creds.items():
        c = _Reader(ct, f"fleet.credentials.{drv}", source)
        if drv not in DRIVERS:
            raise r.err(f"credentials.{drv}", f"unknown driver (one of {', '.join(DRIVERS)})")
        if "password" in ct:
            raise c.err("password", "secrets are not allowed inline; use password_env or "
                                    "password_file")
        cred = Credentials(c.str_("username", ""), c.opt_str("password_env"),
                           c.opt_str("password_file"))
        if cred.password_env and cred.password_file:
            raise c.err("password_file", "give password_env or password_file, not both")
        creds[drv] = cred
        c.check_unknown()
    r.check_unknown()

    return FleetConfig(
        site=site, cap_kw=cap_kw, over_cap_allowed_s=over_s, safe_cap_kw=safe_cap_kw,
        containers=tuple(containers), racks=tuple(racks), miners=tuple(miners),
        schedule=tuple(schedule), credentials=creds, grid_heartbeat_timeout_s=hb,
        grid_response_s=response_s,
        dry_run=bool(opts["dry_run"]),
        guard_interval_s=float(opts["guard_interval_s"]),
        optimizer_interval_s=float(opts["optimizer_interval_s"]),
        telemetry_interval_s=float(opts["telemetry_interval_s"]),
        stale_after_s=float(opts["stale_after_s"]),
        ramp_kw_per_min=float(opts["ramp_kw_per_min"]),
        daily_cycle_budget=int(opts["daily_cycle_budget"]),
        min_sleep_s=float(opts["min_sleep_s"]),
        target_fraction=float(opts["target_fraction"]),
        command_timeout_s=float(opts["command_timeout_s"]),
        temp_limit_c=float(opts["temp_limit_c"]),
        pool_hashrate_scale=float(opts["pool_hashrate_scale"]),
    )


def rack_ids_of(cfg: FleetConfig, node: str) -> Sequence[str]:
    """Racks under a node (site, container or rack id)."""
    if node == cfg.site:
        return [r.id for r in cfg.racks]
    if any(c.id == node for c in cfg.containers):
        return [r.id for r in cfg.racks if r.container == node]
    return [node]
