"""One frozen Config from one TOML file, environment overrides and systemd credentials.

Every option is declared once in `OPTIONS` (section, key, type, default, help, flags). From that
table come the parser, the validation (errors name the key and the file), the environment
overrides, and `poold config example` (the commented example that `deploy/poold.toml.example` must
equal). `load_config` is pure apart from reading the file and credential files it is pointed at.

Precedence, lowest to highest: built-in default, the TOML file, `POOLD_<SECTION>_<KEY>` environment
variables (`POOLD_NODES_<i>_<KEY>` for the i-th `[[nodes]]` entry), then for secret options a
systemd credential file `$CREDENTIALS_DIRECTORY/<section>.<key>` (`nodes.<i>.<key>` for nodes).

The `[fleet]` table is parsed by `poold.fleet.inventory.parse_fleet`, which owns its shape.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poold.accounts import AccountsError, check_accounts, parse_accounts_text
from poold.bitcoin.address import AddressError, Network, address_to_script
from poold.errors import ConfigError

if TYPE_CHECKING:
    from poold.fleet.inventory import FleetConfig

DEFAULT_PATH = Path("/etc/poold/poold.toml")
PAYOUTS = ("solo", "reserve", "pplns", "split")


# ---------------------------------------------------------------------------------------------
# Value parsers: take the raw TOML/env value, return the typed value or raise ValueError(reason).


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: object) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {v!r}")


def _float(v: object) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(v, int | float):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            raise ValueError(f"expected a number, got {v!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(v).__name__}")
    if not math.isfinite(f):
        raise ValueError("must be finite")
    return f


def _bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"expected true or false, got {v!r}")


def _str_list(v: object) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(s.strip() for s in v.split(",") if s.strip())
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return tuple(v)
    raise ValueError("expected a list of strings")


def _hex32(v: object) -> int:
    s = _str(v)
    if len(s) != 8:
        raise ValueError(f"expected 8 hex digits, got {s!r}")
    try:
        return int(s, 16)
    except ValueError:
        raise ValueError(f"expected 8 hex digits, got {s!r}") from None


def _hostport(v: object) -> tuple[str, int]:
    s = _str(v)
    host, sep, port_s = s.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {s!r}")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"port must be a number in {s!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {s!r}")
    return host, port


def _network(v: object) -> Network:
    s = _str(v)
    try:
        return Network(s)
    except ValueError:
        names = ", ".join(n.value for n in Network)
        raise ValueError(f"unknown network {s!r} (one of: {names})") from None


def _payout(v: object) -> str:
    s = _str(v)
    if s not in PAYOUTS:
        raise ValueError(f"unknown payout scheme {s!r} (one of: {', '.join(PAYOUTS)})")
    return s


def _level(v: object) -> str:
    s = _str(v).upper()
    if s not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"unknown log level {s!r}")
    return s


@dataclass(frozen=True, slots=True)
class Option:
    """One config key: where it lives, how it parses, its default and its documentation."""

    section: str
    key: str
    parse: Callable[[object], Any]
    default: Any
    help: str
    example: str | None = None  # TOML literal for the example file when it differs from default
    secret: bool = False
    reloadable: bool = False
    minimum: float | None = None
    maximum: float | None = None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


_O = Option
OPTIONS: tuple[Option, ...] = (
    _O("pool", "network", _network, Network.MAIN, "chain: main | test | signet | regtest"),
    _O("pool", "payout", _payout, "solo", "payout scheme: solo | reserve | pplns | split"),
    _O("pool", "coinbase_tag", _str, "/poold/", "text in every coinbase scriptSig"),
    _O("pool", "instance_id", _int, 1, "unique per poold instance sharing a ledger; "
       "prefix of extranonce1", minimum=0, maximum=255),
    _O("pool", "state_dir", _str, "/var/lib/poold", "where the ledger and block journal live"),
    _O("pool", "reserve_address", _str, "", "payout = reserve: the address every block pays"),
    _O("pool", "fee_address", _str, "", "pplns/split: the address of the pool fee output"),
    _O("pool", "fee_percent", _float, 0.0, "pplns/split: pool fee in percent of the reward",
       minimum=0.0, maximum=100.0),
    _O("pool", "accounts_file", _str, "", "pplns/split: file of NAME ADDRESS lines mapping "
       "login names to payout addresses (beside the [accounts] table; logins that are neither "
       "an address nor a mapped name are refused)", reloadable=True,
       example='""'),
    _O("nodes", "name", _str, "", "label of this node in logs and metrics (default node<i>)"),
    _O("nodes", "rpc_url", _str, "http://127.0.0.1:8332", "bitcoind JSON-RPC URL"),
    _O("nodes", "rpc_user", _str, "", "RPC user (or use rpc_cookie_file)"),
    _O("nodes", "rpc_password", _str, "", "RPC password; prefer POOLD_NODES_<i>_RPC_PASSWORD "
       "or a systemd credential", secret=True),
    _O("nodes", "rpc_cookie_file", _str, "", "path of bitcoind's .cookie file",
       example='"/var/lib/bitcoind/.cookie"'),
    _O("nodes", "zmq_hashblock", _str, "", "bitcoind -zmqpubhashblock endpoint (empty: poll)"),
    _O("nodes", "timeout_s", _float, 10.0, "per-call RPC timeout", minimum=0.1),
    _O("templates", "poll_interval_s", _float, 0.25, "tip poll interval when ZMQ is silent or "
       "absent", minimum=0.01),
    _O("templates", "refresh_s", _float, 30.0, "template refresh for fees", minimum=1.0),
    _O("templates", "empty_first_ms", _float, 2.0, "on a new tip, send an empty-block job if "
       "the full template is not ready within this (so miners leave the old tip within ~5 ms)",
       minimum=0.0),
    _O("stratum", "listen", _hostport, ("0.0.0.0", 3333), "Stratum V1 listen address",
       example='"0.0.0.0:3333"'),
    _O("stratum", "start_difficulty", _float, 65536.0, "difficulty of a new session",
       reloadable=True, minimum=1e-8),
    _O("stratum", "min_difficulty", _float, 1.0, "vardiff and miner-suggested lower bound",
       reloadable=True, minimum=1e-8),
    _O("stratum", "max_difficulty", _float, 1e15, "vardiff and miner-suggested upper bound",
       reloadable=True, minimum=1e-8),
    _O("stratum", "share_interval_s", _float, 10.0, "vardiff target seconds between shares",
       reloadable=True, minimum=0.1),
    _O("stratum", "version_mask", _hex32, 0x1FFFE000, "pool version-rolling mask (BIP310/320); "
       "on reload, sessions that negotiated get mining.set_version_mask",
       example='"1fffe000"', reloadable=True),
    _O("stratum", "accept_unnegotiated_version_bits", _bool, True,
       "accept BIP320 version bits from miners that never sent mining.configure"),
    _O("stratum", "extranonce2_size", _int, 8, "bytes of extranonce2 the miner rolls",
       minimum=2, maximum=8),
    _O("stratum", "max_line_bytes", _int, 16384, "longest Stratum line; longer disconnects",
       minimum=512),
    _O("stratum", "max_connections", _int, 100000, "global connection limit", minimum=1),
    _O("stratum", "max_per_ip", _int, 1000, "connections per source IP", minimum=1),
    _O("stratum", "subscribe_timeout_s", _float, 30.0, "disconnect if not subscribed by then",
       minimum=1.0),
    _O("stratum", "idle_timeout_s", _float, 900.0, "disconnect a session with no share for "
       "this long", minimum=1.0, reloadable=True),
    _O("stratum", "reconnect_host", _str, "", "host sent in client.reconnect on shutdown "
       "(empty: the miner reconnects to where it was)"),
    _O("stratum", "reconnect_port", _int, 0, "port sent in client.reconnect", minimum=0,
       maximum=65535),
    _O("stratum", "invalid_share_limit", _int, 100, "disconnect after this many invalid shares "
       "in a row with none valid (a warning at half; 0 = never)", minimum=0),
    _O("stratum", "max_write_buffer_bytes", _int, 1 << 20, "bytes queued for one miner before "
       "it is dropped as a slow reader", minimum=4096),
    _O("stratum", "max_messages_per_s", _float, 200.0, "messages a connection may send per "
       "second on average; beyond that (and the burst) it is dropped (0 = no limit)",
       minimum=0.0),
    _O("stratum", "message_burst", _int, 2000, "messages a connection may send at once "
       "above max_messages_per_s", minimum=10),
    _O("stratum", "reuse_port", _bool, False, "SO_REUSEPORT: several poold processes (each "
       "with its own pool.instance_id) share one Stratum port, one per core"),
    _O("ledger", "url", _str, "", "sqlite:///PATH or postgresql://...; empty = SQLite file "
       "under pool.state_dir", secret=True),
    _O("ledger", "flush_interval_ms", _float, 100.0, "share batches are committed at least "
       "this often: a kill -9 loses at most this window", minimum=1.0),
    _O("ledger", "buffer_max_shares", _int, 1_000_000, "shares held in memory while the store is "
       "slow or down (the spill file takes them from half of it); past it none is dropped: "
       "a WARNING and maximum back-pressure", minimum=1000),
    _O("ledger", "pplns_window_factor", _float, 2.0, "PPLNS window = N x network difficulty",
       minimum=0.01),
    _O("ledger", "dust_sat", _int, 10000, "split: smallest coinbase output", minimum=546),
    _O("ledger", "max_outputs", _int, 50, "split: most payout outputs in one coinbase",
       minimum=1, maximum=1000),
    _O("ledger", "tariff_per_kwh", _float, 0.0, "energy cost per kWh for accounting",
       minimum=0.0),
    _O("ledger", "batch_max_shares", _int, 10_000, "largest share batch in one commit (bounds "
       "the commit latency when the flusher is behind)", minimum=100),
    _O("ledger", "block_write_timeout_s", _float, 5.0, "a found block the store has not "
       "committed by then goes to the local journal (replayed at start)", minimum=0.1),
    _O("ledger", "split_refresh_s", _float, 5.0, "split: how often the PPLNS window and "
       "balances are re-read", minimum=0.5),
    _O("ledger", "split_max_output_bytes", _int, 530, "split: bytes of payout outputs one "
       "coinbase may carry (ASIC firmware caps the coinbase near 730 bytes), the ledger's "
       "47-byte chain commitment included", minimum=133),
    _O("ledger", "share_retention_s", _float, 0.0, "shares older than this are rolled up per "
       "worker, account and hour, then deleted; 0 keeps every share (else at least 2 days)",
       minimum=0.0),
    _O("api", "listen", _hostport, ("127.0.0.1", 9332), "admin API and /metrics",
       example='"127.0.0.1:9332"'),
    _O("api", "read_tokens", _str_list, (), "bearer tokens allowed to read /api/v1 "
       "(empty: reads are open on localhost)", secret=True, example="[]"),
    _O("api", "write_tokens", _str_list, (), "bearer tokens allowed to write (empty: no "
       "writes)", secret=True, example="[]"),
    _O("api", "public_windows", _bool, False, "publish each block's PPLNS window (share ids, "
       "worker names, difficulties) and credits at GET /api/v1/public/windows, without a "
       "token, so miners can check their own pay (docs/AUDIT.md)"),
    _O("metrics", "per_worker", _bool, False, "export per-worker series"),
    _O("metrics", "per_worker_max", _int, 1000, "cap on per-worker series", minimum=1),
    _O("log", "level", _level, "INFO", "DEBUG | INFO | WARNING | ERROR", reloadable=True),
)

SECTIONS = ("pool", "nodes", "templates", "stratum", "ledger", "api", "metrics", "log")
_DEFAULTS: dict[str, Any] = {o.dotted: o.default for o in OPTIONS}


def default(key: str) -> Any:
    """The documented default of a config key ("section.key"), for the component settings
    (ServerSettings, SessionSettings, TemplateTiming, LedgerConfig) that tests build directly:
    one table declares every default (KeyError for a key that is not in it)."""
    return _DEFAULTS[key]
ARRAY_SECTIONS = frozenset({"nodes"})


# ---------------------------------------------------------------------------------------------
# The frozen Config.


@dataclass(frozen=True, slots=True)
class PoolConfig:
    network: Network
    payout: str
    coinbase_tag: str
    instance_id: int
    state_dir: str
    reserve_address: str
    fee_address: str
    fee_percent: float
    accounts_file: str


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    rpc_url: str
    rpc_user: str
    rpc_password: str = field(repr=False)
    rpc_cookie_file: str
    zmq_hashblock: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class TemplatesConfig:
    poll_interval_s: float
    refresh_s: float
    empty_first_ms: float


@dataclass(frozen=True, slots=True)
class StratumConfig:
    listen: tuple[str, int]
    start_difficulty: float
    min_difficulty: float
    max_difficulty: float
    share_interval_s: float
    version_mask: int
    accept_unnegotiated_version_bits: bool
    extranonce2_size: int
    max_line_bytes: int
    max_connections: int
    max_per_ip: int
    subscribe_timeout_s: float
    idle_timeout_s: float
    reconnect_host: str
    reconnect_port: int
    invalid_share_limit: int = 100
    max_write_buffer_bytes: int = 1 << 20
    reuse_port: bool = False
    max_messages_per_s: float = 200.0
    message_burst: int = 2000


@dataclass(frozen=True, slots=True)
class LedgerSection:
    url: str = field(repr=False)
    flush_interval_ms: float
    buffer_max_shares: int
    pplns_window_factor: float
    dust_sat: int
    max_outputs: int
    tariff_per_kwh: float
    batch_max_shares: int
    block_write_timeout_s: float
    split_refresh_s: float
    split_max_output_bytes: int
    share_retention_s: float


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: tuple[str, int]
    read_tokens: tuple[str, ...] = field(repr=False)
    write_tokens: tuple[str, ...] = field(repr=False)
    public_windows: bool = False


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    per_worker: bool
    per_worker_max: int


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    pool: PoolConfig
    nodes: tuple[NodeConfig, ...]
    templates: TemplatesConfig
    stratum: StratumConfig
    ledger: LedgerSection
    api: ApiConfig
    metrics: MetricsConfig
    log: LogConfig
    fleet: FleetConfig | None = None  # when a [fleet] table is present
    # pplns/split: login name -> payout address, from [accounts] and pool.accounts_file
    accounts: tuple[tuple[str, str], ...] = ()

    @property
    def ledger_url(self) -> str:
        """The effective ledger URL (the SQLite default lives under the state directory)."""
        if self.ledger.url:
            return self.ledger.url
        return f"sqlite:///{Path(self.pool.state_dir) / 'ledger.sqlite3'}"


_SECTION_TYPES: dict[str, type] = {
    "pool": PoolConfig,
    "templates": TemplatesConfig,
    "stratum": StratumConfig,
    "ledger": LedgerSection,
    "api": ApiConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}


def _options(section: str) -> list[Option]:
    return [o for o in OPTIONS if o.section == section]


class ConfigErrors(ConfigError):
    """Every error one pass over a config found (`check-config` lists them all). Raised only
    for two or more: a single error is raised as the ConfigError it is."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.key, first.message, first.source)
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


class _Collector:
    """Gathers ConfigErrors instead of stopping at the first; `check()` raises them."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, err: ConfigError) -> None:
        self.errors.extend(err.errors if isinstance(err, ConfigErrors) else [err])

    def keys(self) -> set[str]:
        return {e.key for e in self.errors}

    def check(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def _parse_value(opt: Option, raw: object, key: str, source: str) -> Any:
    try:
        value = opt.parse(raw)
    except ValueError as exc:
        raise ConfigError(key, str(exc), source) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if opt.minimum is not None and value < opt.minimum:
            raise ConfigError(key, f"must be >= {opt.minimum:g}, got {value:g}", source)
        if opt.maximum is not None and value > opt.maximum:
            raise ConfigError(key, f"must be <= {opt.maximum:g}, got {value:g}", source)
    return value


def _section_values(
    section: str,
    table: Mapping[str, object],
    prefix: str,
    env_prefix: str,
    cred_prefix: str,
    source: str,
    env: Mapping[str, str],
    errors: _Collector,
) -> dict[str, Any]:
    """The section's values; a bad one is reported to `errors` and left at its default."""
    known = {o.key for o in _options(section)}
    for k in table:
        if k not in known:
            errors.add(ConfigError(f"{prefix}.{k}",
                                   f"unknown key (known: {', '.join(sorted(known))})", source))
    values: dict[str, Any] = {}
    creds_dir = env.get("CREDENTIALS_DIRECTORY", "")
    for opt in _options(section):
        key = f"{prefix}.{opt.key}"
        value = opt.default
        try:
            if opt.key in table:
                value = _parse_value(opt, table[opt.key], key, source)
            env_name = f"{env_prefix}_{opt.key}".upper()
            if env_name in env:
                value = _parse_value(opt, env[env_name], key, f"env:{env_name}")
            if opt.secret and creds_dir:
                cred = Path(creds_dir) / f"{cred_prefix}.{opt.key}"
                if cred.is_file():
                    text = cred.read_text(encoding="utf-8").strip()
                    value = _parse_value(opt, text, key, f"credential:{cred.name}")
        except ConfigError as exc:
            errors.add(exc)
        values[opt.key] = value
    return values


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and freeze the config at `path`; raise ConfigError naming key and file."""
    env = os.environ if env is None else env
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("(file)", "no such file", source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), source) from None
    return config_from_dict(data, source=source, env=env)


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", env: Mapping[str, str] | None = None
) -> Config:
    """Build the frozen Config from an already parsed TOML document. Every error found is
    reported (ConfigErrors when there are several): a bad value is taken at its default so
    that the rest can still be checked."""
    env = {} if env is None else env
    errors = _Collector()
    for top in data:
        if top not in SECTIONS and top not in ("fleet", "accounts"):
            known = ", ".join((*SECTIONS, "fleet", "accounts"))
            errors.add(ConfigError(top, f"unknown section (known: {known})", source))
    sections: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            errors.add(ConfigError(name, "must be a table", source))
            table = {}
        sections[name] = cls(**_section_values(
            name, table, name, f"POOLD_{name}", name, source, env, errors))
    raw_nodes = data.get("nodes", [])
    if not isinstance(raw_nodes, list) or not all(isinstance(n, dict) for n in raw_nodes):
        errors.add(ConfigError("nodes", "must be an array of tables: [[nodes]]", source))
        raw_nodes = [n for n in raw_nodes if isinstance(n, dict)] if isinstance(
            raw_nodes, list) else []
    nodes = []
    for i, table in enumerate(raw_nodes):
        values = _section_values("nodes", table, f"nodes[{i}]", f"POOLD_NODES_{i}",
                                 f"nodes.{i}", source, env, errors)
        values["name"] = values["name"] or f"node{i}"
        nodes.append(NodeConfig(**values))
    fleet = None
    if "fleet" in data:
        from poold.fleet.inventory import parse_fleet

        try:
            fleet = parse_fleet(data["fleet"], source)
        except ConfigError as exc:  # the fleet's own checks stop at their first error
            errors.add(exc)
    accounts: tuple[tuple[str, str], ...] = ()
    try:
        accounts = _accounts(data.get("accounts", {}), sections["pool"], source)
    except ConfigError as exc:
        errors.add(exc)
    cfg = Config(source=source, nodes=tuple(nodes), fleet=fleet, accounts=accounts, **sections)
    failed = errors.keys()
    for err in _cross_checks(cfg):
        # A value already reported was replaced by its default: checks against it would
        # only repeat that error in other words.
        if not any(err.key == k or err.key.startswith((f"{k}.", f"{k}[")) for k in failed):
            errors.add(err)
    errors.check()
    return cfg


def _accounts(table: object, pool: PoolConfig, source: str) -> tuple[tuple[str, str], ...]:
    """The `[accounts]` table and `pool.accounts_file`, checked for the pool's network."""
    if not isinstance(table, dict):
        raise ConfigError("accounts", "must be a table of NAME = \"ADDRESS\"", source)
    for name, address in table.items():
        if not isinstance(address, str):
            raise ConfigError(f"accounts.{name}", "must be an address string", source)
    try:
        names = check_accounts(table.items(), pool.network)
    except AccountsError as exc:
        raise ConfigError("accounts", str(exc), source) from None
    if pool.accounts_file:
        try:
            text = Path(pool.accounts_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("pool.accounts_file", f"cannot read {pool.accounts_file}: "
                              f"{exc.strerror or exc}", source) from None
        try:
            from_file = check_accounts(parse_accounts_text(text), pool.network,
                                       f"{pool.accounts_file}: ")
        except AccountsError as exc:
            raise ConfigError("pool.accounts_file", str(exc), source) from None
        for name, address in from_file.items():
            if names.get(name, address) != address:
                raise ConfigError("pool.accounts_file", f"{name!r} maps to {address} there "
                                  f"but to {names[name]} in [accounts]", source)
            names[name] = address
    return tuple(sorted(names.items()))


def _cross_checks(cfg: Config) -> list[ConfigError]:
    """Checks that span keys; each error names the key an operator should change."""
    errs: list[ConfigError] = []

    def bad(key: str, message: str) -> None:
        errs.append(ConfigError(key, message, cfg.source))

    if not cfg.nodes:
        bad("nodes", "at least one [[nodes]] entry is required")
    names = [n.name for n in cfg.nodes]
    for i, n in enumerate(cfg.nodes):
        if names.count(n.name) > 1:
            bad(f"nodes[{i}].name", f"duplicate node name {n.name!r}")
        if not n.rpc_url.startswith(("http://", "https://")):
            bad(f"nodes[{i}].rpc_url", "must start with http:// or https://")
        if not n.rpc_cookie_file and not (n.rpc_user and n.rpc_password):
            bad(f"nodes[{i}].rpc_user", "give rpc_user and rpc_password, or rpc_cookie_file")
        if n.zmq_hashblock and not n.zmq_hashblock.startswith(("tcp://", "ipc://")):
            bad(f"nodes[{i}].zmq_hashblock", "must be a tcp:// or ipc:// endpoint")
    s = cfg.stratum
    if s.min_difficulty > s.max_difficulty:
        bad("stratum.min_difficulty", "must not exceed stratum.max_difficulty")
    elif not s.min_difficulty <= s.start_difficulty <= s.max_difficulty:
        bad("stratum.start_difficulty", "must lie within [min_difficulty, max_difficulty]")
    if s.version_mask & ~0x1FFFE000:
        bad("stratum.version_mask", "must stay within the BIP320 bits 1fffe000")
    if s.reconnect_port and not s.reconnect_host:
        bad("stratum.reconnect_host", "required when reconnect_port is set")
    p = cfg.pool
    if p.payout == "reserve" and not p.reserve_address:
        bad("pool.reserve_address", "required when pool.payout = \"reserve\"")
    for key, addr in (("pool.reserve_address", p.reserve_address),
                      ("pool.fee_address", p.fee_address)):
        if addr:
            try:
                address_to_script(addr, p.network)
            except AddressError as exc:
                bad(key, str(exc))
    if p.payout in ("pplns", "split") and not p.fee_address:
        why = ("the pool wallet every coinbase pays" if p.payout == "pplns" else
               "the fee output, and the whole coinbase whenever no split can be planned")
        bad("pool.fee_address", f"required when pool.payout = \"{p.payout}\" ({why})")
    if cfg.ledger.url and not cfg.ledger.url.startswith(
        ("sqlite:///", "postgresql://", "postgres://")
    ):
        bad("ledger.url", "must be sqlite:///PATH or postgresql://...")
    host = cfg.api.listen[0]
    if cfg.api.write_tokens and not _is_loopback(host) and not cfg.api.read_tokens:
        bad("api.read_tokens", "required when api.listen is not a loopback address")
    return errs


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reload_diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Split the keys that changed between two configs into (applied, ignored) for SIGHUP."""
    applied: list[str] = []
    ignored: list[str] = []
    for opt in OPTIONS:
        if opt.section in ARRAY_SECTIONS:
            continue
        a = getattr(getattr(old, opt.section), opt.key)
        b = getattr(getattr(new, opt.section), opt.key)
        if a != b:
            (applied if opt.reloadable else ignored).append(opt.dotted)
    if old.nodes != new.nodes:
        ignored.append("nodes")
    if old.fleet != new.fleet:
        applied.append("fleet")
    if old.accounts != new.accounts:
        applied.append("accounts")
    return applied, ignored


def _toml_literal(opt: Option) -> str:
    if opt.example is not None:
        return opt.example
    v = opt.default
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Network):
        return f'"{v.value}"'
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return repr(v) if abs(v) < 1e6 else f"{v:.0e}".replace("e+", "e")
    return str(v)


def render_example() -> str:
    """The full commented example config, generated from OPTIONS (see deploy/poold.toml.example)."""
    lines = [
        "# poold configuration (generated by `poold config example`).",
        "# Every key is shown with its default. Secrets may instead come from the environment",
        "# (POOLD_<SECTION>_<KEY>, POOLD_NODES_<i>_<KEY>) or systemd credentials",
        "# ($CREDENTIALS_DIRECTORY/<section>.<key>, nodes.<i>.<key>).",
        "# Keys marked [reload] are re-read on SIGHUP; others need a restart.",
    ]
    for section in SECTIONS:
        lines.append("")
        lines.append(f"[[{section}]]" if section in ARRAY_SECTIONS else f"[{section}]")
        for opt in _options(section):
            flags = " [reload]" if opt.reloadable else ""
            flags += " [secret]" if opt.secret else ""
            lines.append(f"# {opt.help}{flags}")
            lines.append(f"{opt.key} = {_toml_literal(opt)}")
    lines.append("")
    lines.append("# [accounts]: pplns/split login names and their payout addresses, one per")
    lines.append("# line: bob = \"bc1q...\" (see also pool.accounts_file).")
    lines.append("")
    lines.append("# [fleet]: racks, miners and power caps; see the README section \"Fleet\".")
    lines.append("")
    return "\n".join(lines)
