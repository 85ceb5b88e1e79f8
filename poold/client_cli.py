"""Operator subcommands that talk to a running daemon's admin API: status, workers, blocks,
fleet ls|cap|curtail|restore|clear, audit export.

They print for people (units, ISO 8601 times and ages, aligned tables: `poold.cli_format`) and,
with `--json`, the API's own JSON for scripts. `--api`, `--token-file`, `-c` and `--json` are
accepted before or after the subcommand and its action. These are synchronous (urllib) because
they run in the CLI process, never on the daemon's loop. The API address comes from `--api`, else
from the config file's `[api] listen`; the token from `--token-file`, else `$POOLD_API_TOKEN`.
Tokens are never printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poold import cli_format as f
from poold.cli_format import Column
from poold.config import DEFAULT_PATH, load_config
from poold.errors import ConfigError, PooldError

TIMEOUT_S = 10.0
now = time.time  # the clock ages are measured against (tests fix it)


class ClientError(PooldError):
    """The daemon could not be reached or refused the request; the message says which."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options every API command takes, wherever they appear on the command line (their
    defaults are SUPPRESS so that a later parser level never overwrites an earlier value; `run`
    fills them in)."""
    parser.add_argument("--api", metavar="URL", default=argparse.SUPPRESS,
                        help="admin API base URL, e.g. http://127.0.0.1:8080 (default: from the "
                        "config file's [api] listen)")
    parser.add_argument("--token-file", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="file holding the bearer token (default: $POOLD_API_TOKEN)")


def _common(parser: argparse.ArgumentParser, *, reads: bool = True) -> None:
    add_connection_options(parser)
    parser.add_argument("-c", "--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help=f"config file to read [api] listen from (default {DEFAULT_PATH})")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of text" if reads else
                        "print the API's JSON answer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    name = parser.prog.split()[-1]
    if name == "blocks":
        parser.add_argument("--since", metavar="WHEN", help="only blocks found since this time "
                            "(unix seconds or YYYY-MM-DD)")
    elif name == "fleet":
        sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True,
                                    help="ls, cap, curtail, restore or clear")
        ls = sub.add_parser("ls", help="racks with power, cap and hashrate")
        _common(ls)
        ls.add_argument("--miners", action="store_true", help="also list every miner")
        ls.add_argument("--rack", metavar="RACK", help="with --miners: only this rack's miners")
        cap = sub.add_parser("cap", help="set a rack's cap (RACK may be 'site')")
        _common(cap, reads=False)
        cap.add_argument("rack", metavar="RACK", help="rack id, or 'site' for the site cap")
        cap.add_argument("kw", type=float, metavar="KW", help="the new cap in kW")
        for action, what in (("curtail", "cut a rack to its safe cap"),
                             ("restore", "lift an operator curtailment of a rack")):
            p = sub.add_parser(action, help=what)
            _common(p, reads=False)
            p.add_argument("rack", metavar="RACK", help="rack id")
            p.add_argument("--wait", type=float, default=0.0, metavar="S",
                           help="poll the rack for up to S seconds and show progress")
        clear = sub.add_parser("clear", help="clear a miner's fault and not-following marks "
                               "so the controller uses it again")
        _common(clear, reads=False)
        clear.add_argument("miner", metavar="MINER", help="miner id (as in `fleet ls --miners`)")
    elif name == "audit":
        sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True,
                                    help="export")
        exp = sub.add_parser("export", help="export the block audit log")
        _common(exp)
        exp.add_argument("--format", choices=("csv", "json"), default="csv",
                         help="csv: one row per block (default); json: the API's objects "
                         "(--json is the same as --format json)")
        exp.add_argument("--since", metavar="WHEN", help="unix seconds or YYYY-MM-DD")
        exp.add_argument("-o", "--output", type=Path, metavar="FILE",
                         help="write here instead of stdout")


def _parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%d"))
    except ValueError:
        raise ClientError(f"--since: expected unix seconds or YYYY-MM-DD, got {value!r}") from None


class ApiClient:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self._token = token

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                accept: Sequence[int] = ()) -> Any:
        """The JSON answer; an HTTP error is a ClientError unless its status is in `accept`."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if exc.code in accept:
                return json.loads(raw or b"null")
            try:
                err = json.loads(raw)
                msg = err.get("error", exc.reason)
                if err.get("detail") is not None:
                    msg = f"{msg} ({err['detail']})"
            except (ValueError, AttributeError):
                msg = exc.reason
            raise ClientError(f"{method} {path}: HTTP {exc.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"cannot reach poold at {self.base}: {exc}") from None


def _client(args: argparse.Namespace) -> ApiClient:
    base = args.api
    if base is None:
        try:
            host, port = load_config(args.config).api.listen
        except ConfigError as exc:
            raise ClientError(f"no --api given and the config is unusable: {exc}") from None
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        base = f"http://{host}:{port}"
    token = os.environ.get("POOLD_API_TOKEN")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClientError(f"--token-file: {exc}") from None
    return ApiClient(base, token)


def _defaults(args: argparse.Namespace) -> None:
    for key, value in (("api", None), ("token_file", None), ("config", DEFAULT_PATH),
                       ("json", False)):
        if not hasattr(args, key):
            setattr(args, key, value)


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2)


def _export(blocks: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(blocks, indent=2) + "\n"
    out = io.StringIO()
    cols: list[str] = []
    for b in blocks:
        cols.extend(k for k in b if k not in cols)
    writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for b in blocks:
        writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                         for k, v in b.items()})
    return out.getvalue()


# -- text views ---------------------------------------------------------------------------------


def render_status(pool: dict[str, Any], ready: dict[str, Any] | None) -> str:
    shares = pool.get("shares") or {}
    rejected = shares.get("rejected") or {}
    rej = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items())) or "none"
    t = pool.get("template")
    template = "none yet" if not t else (
        f"height {t.get('height')}, {t.get('transactions')} tx, "
        f"{f.btc(t.get('coinbase_value'))}, {f.short_age(t.get('age_s'))} old")
    checks = (ready or {}).get("checks") or {}
    failing = [k for k, ok in checks.items() if not ok]
    readiness = ("-" if ready is None else "yes" if ready.get("ready") else
                 "NO: " + ", ".join(failing))
    stratum = pool.get("stratum") or []
    listen = ", ".join(f"{a[0]}:{a[1]}" if isinstance(a, list | tuple) else str(a)
                       for a in stratum) or "-"
    head = f.fields([
        ("ready", readiness),
        ("stratum", listen),
        ("connections", f.number(pool.get("connections"))),
        ("hashrate", f.hashrate(pool.get("hashrate_hs"))),
        ("shares", f"{f.number(shares.get('accepted'))} accepted; rejected: {rej}"),
        ("template", template),
        ("jobs", f.number(pool.get("jobs"))),
        ("uptime", f.duration(pool.get("uptime_s"))),
    ])
    nodes = f.table([
        Column("NODE", lambda n: str(n.get("name", "-"))),
        Column("UP", lambda n: f.yes_no(n.get("up"))),
        Column("TIP", lambda n: str(n.get("tip_hex") or "-")),
        Column("ZMQ", lambda n: str(n.get("zmq", "-"))),
        Column("LAST ERROR", lambda n: str(n.get("last_error") or "-")),
    ], pool.get("nodes") or [])
    blocks = f.table([
        Column("HEIGHT", lambda b: f.number(b.get("height")), right=True),
        Column("HASH", lambda b: str(b.get("hash_hex", "-"))),
        Column("KEPT", lambda b: f.yes_no(b.get("verified"))),
        Column("SUBMITS", lambda b: ", ".join(
            f"{node}: {res or 'accepted'}" for node, res in (b.get("results") or {}).items())
            or "-"),
    ], list(reversed(pool.get("blocks_submitted") or [])))
    return f"{head}\n\nnodes\n{nodes}\n\nblocks submitted (newest first, last 10)\n{blocks}"


def render_workers(rows: list[dict[str, Any]], at: float) -> str:
    return f.table([
        Column("WORKER", lambda w: str(w.get("worker") or "-")),
        Column("PEER", lambda w: str(w.get("peer") or "-")),
        Column("AGENT", lambda w: str(w.get("user_agent") or "-")),
        Column("DIFFICULTY", lambda w: f.difficulty(w.get("difficulty")), right=True),
        Column("ACCEPTED", lambda w: f.number(w.get("accepted")), right=True),
        Column("ACCEPTED DIFF", lambda w: f.difficulty(w.get("accepted_difficulty")),
               right=True),
        Column("CURTAILED", lambda w: f.yes_no(w.get("curtailed"))),
        Column("CONNECTED", lambda w: f.ago(w.get("connected_at"), at)),
        Column("LAST SHARE", lambda w: f.ago(w.get("last_activity"), at)),
    ], rows, empty="(no connected workers)")


def render_blocks(rows: list[dict[str, Any]]) -> str:
    return f.table([
        Column("HEIGHT", lambda b: f.number(b.get("height")), right=True),
        Column("HASH", lambda b: str(b.get("hash", "-"))),
        Column("FOUND", lambda b: f.iso(b.get("time"))),
        Column("FINDER", lambda b: str(b.get("finder_worker") or "-")),
        Column("REWARD", lambda b: f.btc(b.get("reward_sat")), right=True),
        Column("STATUS", lambda b: str(b.get("status", "-"))),
        Column("CONF", lambda b: f.number(b.get("confirmations")), right=True),
    ], rows, empty="(no blocks)")


def render_racks(rows: list[dict[str, Any]]) -> str:
    return f.table([
        Column("RACK", lambda r: str(r.get("id", "-"))),
        Column("STATE", lambda r: str(r.get("state", "-"))),
        Column("POWER", lambda r: f.power(r.get("power_w")), right=True),
        Column("CAP", lambda r: f.power(r.get("cap_w")), right=True),
        Column("CAP FROM", lambda r: str(r.get("cap_source", "-"))),
        Column("HASHRATE", lambda r: f.hashrate(r.get("hashrate_hs")), right=True),
        Column("MINERS", lambda r: f.number(r.get("miners")), right=True),
        Column("ASLEEP", lambda r: f.number(r.get("asleep")), right=True),
        Column("OVER CAP", lambda r: (f"{f.short_age(r.get('over_cap_s'))} of "
                                      f"{f.short_age(r.get('over_cap_allowed_s'))}")
               if r.get("over_cap_s") else "-", right=True),
    ], rows, empty="(no racks)")


def _miner_state(m: dict[str, Any]) -> str:
    marks = [name for name in ("faulty", "not_following", "stale", "asleep", "curtailed")
             if m.get(name)]
    return ",".join(marks) or "ok"


def _tele(m: dict[str, Any], key: str) -> Any:
    t = m.get("telemetry")
    return t.get(key) if isinstance(t, dict) else None


def render_miners(rows: list[dict[str, Any]]) -> str:
    return f.table([
        Column("MINER", lambda m: str(m.get("id", "-"))),
        Column("RACK", lambda m: str(m.get("rack", "-"))),
        Column("MODEL", lambda m: str(m.get("model") or "-")),
        Column("DRIVER", lambda m: str(m.get("driver", "-"))),
        Column("STATE", _miner_state),
        Column("POWER", lambda m: f.power(_tele(m, "power_w")), right=True),
        Column("TARGET", lambda m: f.power(m.get("commanded_w")), right=True),
        Column("HASHRATE", lambda m: f.ths(_tele(m, "hashrate_ths")), right=True),
        Column("POOL SEES", lambda m: f.hashrate(m.get("pool_hashrate_hs")), right=True),
        Column("MAX TEMP", lambda m: (f"{max(_tele(m, 'temps_c')):.0f} C"
                                      if _tele(m, "temps_c") else "-"), right=True),
        Column("TELEMETRY", lambda m: (f"{f.short_age(m.get('telemetry_age_s'))} old"
                                       if m.get("telemetry_age_s") is not None else "none")),
    ], rows, empty="(no miners)")


# -- commands -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    _defaults(args)
    try:
        return _run(args)
    except ClientError as exc:
        print(f"poold {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.command == "status":
        pool = client.request("GET", "/api/v1/pool")
        ready = client.request("GET", "/readyz", accept=(503,))
        if args.json:
            print(_dump({**pool, "readiness": ready}))
        else:
            print(render_status(pool, ready))
        return 0
    if args.command == "workers":
        rows = client.request("GET", "/api/v1/workers")["workers"]
        print(_dump(rows) if args.json else render_workers(rows, now()))
        return 0
    if args.command == "blocks":
        since = _parse_since(args.since)
        q = "" if since is None else f"?since={since}"
        rows = client.request("GET", f"/api/v1/blocks{q}")["blocks"]
        print(_dump(rows) if args.json else render_blocks(rows))
        return 0
    if args.command == "audit":
        since = _parse_since(args.since)
        q = "" if since is None else f"?since={since}"
        blocks = client.request("GET", f"/api/v1/blocks{q}")["blocks"]
        text = _export(blocks, "json" if args.json else args.format)
        if args.output is not None:
            args.output.write_text(text)
            print(f"wrote {len(blocks)} block(s) to {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    if args.command == "fleet":
        return _fleet(client, args)
    raise ClientError(f"unknown command {args.command}")


def _fleet(client: ApiClient, args: argparse.Namespace) -> int:
    action = args.fleet_command
    if action == "ls":
        racks = client.request("GET", "/api/v1/racks")["racks"]
        out: dict[str, Any] = {"racks": racks}
        if args.miners:
            q = "" if args.rack is None else "?rack=" + urllib.parse.quote(args.rack)
            out["miners"] = client.request("GET", f"/api/v1/miners{q}")["miners"]
        if args.json:
            print(_dump(out))
        else:
            print(render_racks(racks))
            if args.miners:
                print()
                print(render_miners(out["miners"]))
        return 0
    if action == "clear":
        miner = urllib.parse.quote(args.miner, safe="")
        result = client.request("POST", f"/api/v1/miners/{miner}/clear", {})
        print(_dump(result) if args.json else f"clear {args.miner}: ok")
        return 0
    rack = urllib.parse.quote(args.rack, safe="")
    if action == "cap":
        path = "/api/v1/site/cap" if args.rack == "site" else f"/api/v1/racks/{rack}/cap"
        result = client.request("PUT", path, {"kw": args.kw})
        text = f"cap {args.rack}: {f.power(args.kw * 1000.0)}"
    else:
        result = client.request("POST", f"/api/v1/racks/{rack}/{action}", {})
        text = f"{action} {args.rack}: ok"
        if isinstance(result, dict) and result.get("cap_kw") is not None:
            text += f" (cap {f.power(float(result['cap_kw']) * 1000.0)})"
    print(_dump(result) if args.json else text)
    if action in ("curtail", "restore") and args.wait > 0:
        _wait_rack(client, args.rack, args.wait)
    return 0


def _wait_rack(client: ApiClient, rack: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        racks = client.request("GET", "/api/v1/racks")["racks"]
        r = next((x for x in racks if x.get("id") == rack), None)
        if r is None:
            raise ClientError(f"rack {rack!r} disappeared")
        print(f"  {rack}: power {f.power(r.get('power_w'))}, cap {f.power(r.get('cap_w'))}",
              file=sys.stderr)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
