"""`poold audit export` and `poold audit verify FILE --rpc URL`.

- `export` is `poold ledger export`: the same function (poold.ledger.cli.export_text), the same
  documented format (docs/AUDIT.md), read from the ledger database the config names; with
  `--api URL` the same blocks come from a running daemon (`/api/v1/blocks` serves them).
- `verify` needs no ledger database: it checks an export file against a node's JSON-RPC
  (poold.ledger.proof) and exits 1 naming the first block and item that do not match.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from poold.config import DEFAULT_PATH
from poold.ledger import audit
from poold.ledger import cli as ledger_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH,
                        help=f"config file naming the ledger (export; default {DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True,
                                help="export | verify")
    exp = sub.add_parser("export", help="the per-block audit export (docs/AUDIT.md), from the "
                         "ledger database; the same as `poold ledger export`")
    exp.add_argument("--format", choices=audit.FORMATS, default="csv", dest="fmt",
                     help="csv (default) or json")
    exp.add_argument("--json", action="store_true", help="the same as --format json")
    exp.add_argument("--since", default=None,
                     help="only blocks found at or after this (Unix seconds or ISO 8601)")
    exp.add_argument("--ledger-url", default=None,
                     help="read this ledger instead (sqlite:///PATH or postgresql://...)")
    exp.add_argument("--with-shares", action="store_true",
                     help="every share of each block's window (id, worker, account, "
                     "difficulty, time); large")
    exp.add_argument("-o", "--output", type=Path, default=None, help="write here, not stdout")
    exp.add_argument("--api", default=None,
                     help="read the blocks from a running daemon's admin API (GET "
                     "/api/v1/blocks, the same format) instead of the ledger database")
    exp.add_argument("--token-file", type=Path, default=None,
                     help="with --api: file holding the bearer token (default: "
                     "$POOLD_API_TOKEN)")
    ver = sub.add_parser("verify", help="check an export file against bitcoind (no ledger "
                         "database needed)")
    ver.add_argument("file", type=Path, help="an export, JSON or CSV")
    ver.add_argument("--rpc", required=True,
                     help="bitcoind JSON-RPC URL (credentials in it, or --rpc-user/"
                     "--rpc-password, or --rpc-cookie-file)")
    ver.add_argument("--rpc-user", default=None, help="JSON-RPC user")
    ver.add_argument("--rpc-password", default=None, help="JSON-RPC password")
    ver.add_argument("--rpc-cookie-file", type=Path, default=None,
                     help="bitcoind's .cookie file, instead of a user and password")


def run(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return _verify(args)
    if args.json:
        args.fmt = "json"
    return ledger_cli.emit("poold audit", args, lambda: _from_api(args) if args.api
                           else ledger_cli.export_text(args, args.fmt))


def _from_api(args: argparse.Namespace) -> str:
    """The export of a running daemon: its /api/v1/blocks serves export_blocks' dicts."""
    import os

    from poold.client_cli import ApiClient, ClientError
    from poold.ledger.export import render

    token = os.environ.get("POOLD_API_TOKEN")
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    since = audit.parse_since(args.since)
    query = f"?since={since}" if since else ""
    try:
        blocks = ApiClient(args.api, token).request("GET", f"/api/v1/blocks{query}")["blocks"]
    except ClientError as exc:
        raise OSError(str(exc)) from None
    return render(blocks, args.fmt)


def _verify(args: argparse.Namespace) -> int:
    from poold.ledger.proof import load_export

    try:
        blocks = load_export(args.file.read_text())
    except (OSError, ValueError, KeyError) as exc:
        print(f"poold audit verify: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        problems = asyncio.run(_check(blocks, args))
    except ValueError as exc:
        print(f"poold audit verify: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the node's errors come in the RPC client's own types
        print(f"poold audit verify: node {args.rpc}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    if problems:
        print(f"audit verify: FAILED: first mismatch: {problems[0]}")
        for p in problems[1:]:
            print(f"also: {p}")
        return 1
    print(f"audit verify: OK: {len(blocks)} blocks match the node")
    return 0


async def _check(blocks: list[dict[str, object]], args: argparse.Namespace) -> list[str]:
    from poold.ledger.proof import verify_export
    from poold.node.reader import NodeReader
    from poold.node.rpc import RpcClient

    rpc = RpcClient(args.rpc, user=args.rpc_user, password=args.rpc_password,
                    cookie_file=args.rpc_cookie_file)
    await rpc.start()
    try:
        return await verify_export(blocks, NodeReader([rpc]))
    finally:
        await rpc.close()
