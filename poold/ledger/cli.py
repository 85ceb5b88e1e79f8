"""`poold audit export`: the audit log of found blocks as CSV or JSON, read from the ledger.

The console script's `audit` command (poold.client_cli) delegates here: `add_arguments()` adds
the options, `run()` reads the ledger named by the config file (or `--ledger-url`) and writes
the export to stdout or `--output`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poold.errors import ConfigError
from poold.ledger import audit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export",), help="export the block audit log")
    parser.add_argument("--format", choices=audit.FORMATS, default="csv", dest="fmt")
    parser.add_argument("--since", default=None,
                        help="only blocks found at or after this (Unix seconds or ISO 8601)")
    parser.add_argument("--config", type=Path, default=Path("/etc/poold/poold.toml"),
                        help="config file naming the ledger (default /etc/poold/poold.toml)")
    parser.add_argument("--ledger-url", default=None,
                        help="read this ledger instead (sqlite:///PATH or postgresql://...)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="write here, not stdout")


def ledger_url(args: argparse.Namespace) -> str:
    if args.ledger_url:
        return str(args.ledger_url)
    from poold.config import load_config

    return load_config(args.config).ledger_url


def run(args: argparse.Namespace) -> int:
    try:
        text = audit.export(ledger_url(args), fmt=args.fmt, since=args.since)
    except ConfigError as exc:
        print(f"poold audit: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"poold audit: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0
