"""Operator subcommands that talk to a running daemon's admin API: status, workers, blocks,
fleet ls|cap|curtail|restore, audit export.

These are synchronous (urllib) because they run in the CLI process, never on the daemon's loop.
The API address comes from `--api`, else from the config file's `[api] listen`; the token from
`--token-file`, else `$POOLD_API_TOKEN`. Tokens are never printed.
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
import urllib.request
from pathlib import Path
from typing import Any

from poold.config import DEFAULT_PATH, load_config
from poold.errors import ConfigError

TIMEOUT_S = 10.0


class ClientError(Exception):
    """The daemon could not be reached or refused the request; the message says which."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", help="admin API base URL (default: from the config file)")
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH,
                        help=f"config file to read [api] listen from (default {DEFAULT_PATH})")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the bearer token (default: $POOLD_API_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    name = parser.prog.split()[-1]
    if name == "blocks":
        parser.add_argument("--since", help="only blocks found since this time "
                            "(unix seconds or YYYY-MM-DD)")
    elif name == "fleet":
        sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
        ls = sub.add_parser("ls", help="racks with power, cap and hashrate")
        ls.add_argument("--miners", action="store_true", help="also list every miner")
        cap = sub.add_parser("cap", help="set a rack's cap (RACK may be 'site')")
        cap.add_argument("rack")
        cap.add_argument("kw", type=float)
        for action in ("curtail", "restore"):
            p = sub.add_parser(action, help=f"{action} a rack")
            p.add_argument("rack")
            p.add_argument("--wait", type=float, default=0.0, metavar="S",
                           help="poll the rack for up to S seconds and show progress")
    elif name == "audit":
        sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
        exp = sub.add_parser("export", help="export the block audit log")
        exp.add_argument("--format", choices=("csv", "json"), default="csv")
        exp.add_argument("--since", help="unix seconds or YYYY-MM-DD")
        exp.add_argument("-o", "--output", type=Path, help="write here instead of stdout")


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

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
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
            try:
                err = json.loads(exc.read())
                msg = err.get("error", exc.reason)
                if err.get("detail") is not None:
                    msg = f"{msg} ({err['detail']})"
            except ValueError:
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
        token = args.token_file.read_text(encoding="utf-8").strip()
    return ApiClient(base, token)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _export(blocks: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(blocks, indent=2) + "\n"
    out = io.StringIO()
    cols = _columns(blocks)
    writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for b in blocks:
        writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                         for k, v in b.items()})
    return out.getvalue()


def _wait_rack(client: ApiClient, rack: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        racks = client.request("GET", "/api/v1/racks")["racks"]
        r = next((x for x in racks if x.get("id") == rack), None)
        if r is None:
            raise ClientError(f"rack {rack!r} disappeared")
        print(f"  {rack}: power {_fmt(r.get('power_w'))} W, cap {_fmt(r.get('cap_w'))} W",
              file=sys.stderr)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ClientError as exc:
        print(f"poold {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    client = _client(args)
    result: Any
    if args.command == "status":
        result = client.request("GET", "/api/v1/pool")
        ready = client.request("GET", "/readyz") if not args.json else None
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result.items():
                print(f"{k:>24}: {_fmt(v)}")
            if ready is not None:
                print(f"{'ready':>24}: {ready}")
        return 0
    if args.command == "workers":
        rows = client.request("GET", "/api/v1/workers")["workers"]
        print(json.dumps(rows, indent=2) if args.json else _table(rows, _columns(rows)))
        return 0
    if args.command == "blocks":
        since = _parse_since(args.since)
        q = "" if since is None else f"?since={since}"
        rows = client.request("GET", f"/api/v1/blocks{q}")["blocks"]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            cols = [c for c in ("height", "hash", "worker", "reward", "status", "confirmations")
                    if any(c in r for r in rows)]
            print(_table(rows, cols or _columns(rows)))
        return 0
    if args.command == "audit":
        since = _parse_since(args.since)
        q = "" if since is None else f"?since={since}"
        blocks = client.request("GET", f"/api/v1/blocks{q}")["blocks"]
        text = _export(blocks, args.format)
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
        out: Any = {"racks": racks}
        if args.miners:
            out["miners"] = client.request("GET", "/api/v1/miners")["miners"]
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(_table(racks, _columns(racks)))
            if args.miners:
                print()
                print(_table(out["miners"], _columns(out["miners"])))
        return 0
    if action == "cap":
        path = "/api/v1/site/cap" if args.rack == "site" else f"/api/v1/racks/{args.rack}/cap"
        result = client.request("PUT", path, {"kw": args.kw})
    else:
        result = client.request("POST", f"/api/v1/racks/{args.rack}/{action}", {})
        if args.wait > 0:
            _wait_rack(client, args.rack, args.wait)
    print(json.dumps(result, indent=2) if args.json else f"{action} {args.rack}: ok")
    return 0
