"""The `poold` console script: one entry point, one subcommand per operator task.

Each subcommand lives in the module that owns its area and exposes two functions:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int            # the process exit code

Only the chosen subcommand's module is imported, so `poold --help` stays fast and a missing
optional dependency of one area never breaks another.

`--api` and `--token-file` (the admin API commands' connection) may also come before the
subcommand. Output cut short by a closed pipe (`poold blocks | head`) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from poold import __version__


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    module: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("run", "poold.daemon", "run the pool and the fleet controller (the daemon)"),
    Command("demo", "poold.demo", "devnet + pool + simulated fleet, finding real blocks"),
    Command("devnet", "poold.devnet.cli", "a regtest node validated by Bitcoin Core's kernel"),
    Command("check-config", "poold.config_cli", "validate a config file and name any bad key"),
    Command("config", "poold.config_cli", "config helpers: `poold config example`"),
    Command("status", "poold.client_cli", "pool and fleet status from the running daemon"),
    Command("workers", "poold.client_cli", "connected workers from the running daemon"),
    Command("blocks", "poold.client_cli", "found blocks and their audit state"),
    Command("fleet", "poold.client_cli",
            "fleet: ls, cap RACK KW, curtail RACK, restore RACK, clear MINER"),
    Command("audit", "poold.ledger.audit_cli",
            "audit export (docs/AUDIT.md) | audit verify FILE --rpc URL (against bitcoind)"),
    Command("ledger", "poold.ledger.cli",
            "the ledger database: export | verify | payouts | energy | record-payment"),
)


def _chosen(argv: Sequence[str]) -> Command | None:
    names = {c.name: c for c in COMMANDS}
    for arg in argv:
        if arg.startswith("-"):
            continue
        if arg in names:  # skip option values such as `--log-level WARNING`
            return names[arg]
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poold",
        description="Bitcoin mining site daemon: a Stratum V1 pool and a power-capped fleet "
        "controller in one process.",
    )
    parser.add_argument("--version", action="version", version=f"poold {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging threshold (default: `[log] level` of the config for `run`, else INFO)",
    )
    # The admin API commands' connection, accepted here too (SUPPRESS: a value given after
    # the subcommand is not overwritten by a default here, nor this one by the subcommand's).
    parser.add_argument("--api", metavar="URL", default=argparse.SUPPRESS,
                        help="admin API base URL for status, workers, blocks, fleet and audit "
                        "(default: from the config file's [api] listen)")
    parser.add_argument("--token-file", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="file holding the admin API bearer token (default: "
                        "$POOLD_API_TOKEN)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do (`poold COMMAND --help` for its options)")
    chosen = _chosen(argv)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.set_defaults(_module=cmd.module)
        if chosen is not None and chosen.name == cmd.name:
            importlib.import_module(cmd.module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=getattr(logging, args.log_level or "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    module: ModuleType = importlib.import_module(args._module)
    try:
        code: int = module.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`poold blocks | head`): no traceback, and none at exit when
        # Python flushes stdout again (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as a process killed by SIGPIPE
    return code
