"""`poold check-config -c FILE` and `poold config example`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poold.config import DEFAULT_PATH, Config, ConfigErrors, load_config, render_example
from poold.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.prog.endswith("check-config"):
        parser.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH,
                            help=f"config file (default {DEFAULT_PATH})")
        return
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True,
                                help="example")
    sub.add_parser("example", help="print a full commented example config")


def run(args: argparse.Namespace) -> int:
    if args.command == "config":
        sys.stdout.write(render_example())
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        for err in errors:
            print(f"poold: config error: {err}", file=sys.stderr)
        if len(errors) > 1:
            print(f"poold: {len(errors)} errors in {exc.source}", file=sys.stderr)
        return 2
    racks = len(cfg.fleet.racks) if cfg.fleet is not None and hasattr(cfg.fleet, "racks") else 0
    print(f"{cfg.source}: ok (network {cfg.pool.network.value}, payout {cfg.pool.payout}, "
          f"{len(cfg.nodes)} node(s), stratum {cfg.stratum.listen[0]}:{cfg.stratum.listen[1]}, "
          f"{racks} rack(s))")
    _warn_fees(cfg)
    return 0


def _warn_fees(cfg: Config) -> None:
    """Settings that load but cannot work as meant (poold.ledger.config.fee_warnings)."""
    import time

    from poold.ledger.config import LedgerConfig, fee_warnings

    try:
        ledger = LedgerConfig.from_config(cfg)
    except ConfigError as exc:
        print(f"poold: config error: {exc}", file=sys.stderr)
        return
    for warning in fee_warnings(ledger, time.time()):
        print(f"poold: warning: {warning}", file=sys.stderr)
