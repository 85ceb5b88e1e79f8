"""Offline ledger reports, read straight from the ledger database (no daemon needed):

- `export`: the audit export of found blocks as CSV or JSON (the very code and format of
  `poold audit export`, docs/AUDIT.md);
- `verify`: recompute the hash chains, the buckets and every block's credits from the rows
  (poold.ledger.verify); exit 1 naming the first record that does not match;
- `payouts`: the PPLNS payout report, what each account was credited by matured blocks, what a
  wallet process recorded as paid, and what is owed (CSV or JSON);
- `energy`: J per accepted difficulty (and J/TH) per worker and rack, kWh and cost per block
  between --since and --until (JSON);
- `record-payment --txid TXID`: read a payout transaction from bitcoind and record what it paid
  to owed accounts (`poold.ledger.payments`).

`add_arguments()` adds the options, `run()` reads the ledger named by the config file (or
`--ledger-url`) and writes to stdout or `--output`. `emit()` and `guarded()` are the output
writing and the error mapping (exit 2: config, argument or file; exit 1: ledger database
unavailable, payment not matched) that `poold audit` shares.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from poold.errors import ConfigError
from poold.ledger import audit, payments
from poold.ledger.config import LedgerConfig
from poold.ledger.store import StoreUnavailable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action",
                        choices=("export", "verify", "payouts", "energy", "record-payment"),
                        help="export: the block audit export (docs/AUDIT.md); verify: check "
                        "the hash chains, buckets and credits against the shares (exit 1 "
                        "naming the first mismatch); payouts: credited, paid and still owed per "
                        "account (PPLNS); energy: energy per accepted difficulty and per block; "
                        "record-payment: record a payout transaction (--txid)")
    parser.add_argument("--format", choices=(*audit.FORMATS, "text"), default=None, dest="fmt",
                        help="export: csv (default) or json; payouts: text (default), csv or "
                        "json; energy: json")
    parser.add_argument("--json", action="store_true",
                        help="the same as --format json")
    parser.add_argument("--since", default=None,
                        help="only blocks found at or after this (Unix seconds or ISO 8601)")
    parser.add_argument("-c", "--config", type=Path, default=Path("/etc/poold/poold.toml"),
                        help="config file naming the ledger (default /etc/poold/poold.toml)")
    parser.add_argument("--ledger-url", default=None,
                        help="read this ledger instead (sqlite:///PATH or postgresql://...)")
    parser.add_argument("--until", default=None,
                        help="energy: up to this time (Unix seconds or ISO 8601; default now)")
    parser.add_argument("--tariff", type=float, default=None,
                        help="energy: cost per kWh (default: ledger.tariff_per_kwh of the config)")
    parser.add_argument("--txid", default=None,
                        help="record-payment: the payout transaction's id (hex)")
    parser.add_argument("--rpc", default=None, metavar="URL",
                        help="record-payment: bitcoind JSON-RPC URL, credentials in it "
                        "(http://USER:PASS@HOST:PORT; default: the config's first [[nodes]])")
    parser.add_argument("--blockhash", default=None,
                        help="record-payment: the block holding the transaction (for a node "
                        "without -txindex)")
    parser.add_argument("--unconfirmed", action="store_true",
                        help="record-payment: record it even if it is not in a block yet")
    parser.add_argument("--network", default=None,
                        choices=("main", "test", "testnet4", "signet", "regtest"),
                        help="with --ledger-url: the chain of the addresses (default: the "
                        "config's pool.network)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="write here, not stdout")
    parser.add_argument("--with-shares", action="store_true",
                        help="export: every share of each block's window (id, worker, account, "
                        "difficulty, time); large")


def ledger_url(args: argparse.Namespace) -> str:
    if args.ledger_url:
        return str(args.ledger_url)
    from poold.config import load_config

    return load_config(args.config).ledger_url


def payout_report(url: str, fmt: str) -> str:
    """The PPLNS payout report of the ledger at `url` as CSV or JSON (CLI only: own loop)."""
    import asyncio
    import csv
    import io
    import json

    from poold.ledger.store import open_store

    async def read() -> list[tuple[str, int, int, int]]:
        store = open_store(url)
        await store.open()
        try:
            credited = await store.balances(["pplns"])
            paid = await store.paid()
        finally:
            await store.close()
        return [(a, credited.get(a, 0), paid.get(a, 0), credited.get(a, 0) - paid.get(a, 0))
                for a in sorted(set(credited) | set(paid))]

    rows = asyncio.run(read())
    if fmt == "text":
        from poold.ledger.payments import render_payouts

        return render_payouts(rows)
    if fmt == "json":
        return json.dumps({"accounts": [
            {"account": a, "credited_sat": c, "paid_sat": p, "owed_sat": o}
            for a, c, p, o in rows]}, indent=2) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("account", "credited_sat", "paid_sat", "owed_sat"))
    w.writerows(rows)
    return buf.getvalue()


def energy_json(url: str, since: float, until: float, tariff: float) -> str:
    """The energy report of the ledger at `url` as JSON (CLI only: own loop)."""
    import asyncio
    import json

    from poold.ledger.ledger import energy_report
    from poold.ledger.store import open_store

    async def read() -> dict[str, object]:
        store = open_store(url)
        await store.open()
        try:
            return (await energy_report(store, since, until, tariff)).as_dict()
        finally:
            await store.close()

    return json.dumps(asyncio.run(read()), indent=2) + "\n"


def _tariff(args: argparse.Namespace) -> float:
    if args.tariff is not None:
        return float(args.tariff)
    if args.ledger_url:
        return 0.0
    from poold.config import load_config

    return load_config(args.config).ledger.tariff_per_kwh


def guarded(prog: str, work: Callable[[], int]) -> int:
    """Run one ledger CLI action; the ledger CLIs' one error mapping: a config, argument or
    file error exits 2, an unavailable ledger database or an unmatched payment exits 1, each
    named on stderr after `prog`."""
    try:
        return work()
    except (ConfigError, ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"{prog}: the ledger database is unavailable: {exc}", file=sys.stderr)
        return 1
    except payments.PaymentError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def emit(prog: str, args: argparse.Namespace, produce: Callable[[], str]) -> int:
    """Write what `produce` returns to stdout or `args.output` (errors as `guarded`)."""
    def work() -> int:
        text = produce()
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
        return 0

    return guarded(prog, work)


def run(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return guarded("poold ledger", lambda: run_verify(args))
    return emit("poold ledger", args, lambda: _report(args, "json" if args.json else args.fmt))


def _report(args: argparse.Namespace, fmt: str | None) -> str:
    if args.action == "payouts":
        return payout_report(ledger_url(args), fmt or "text")
    if args.action == "record-payment":
        return payments.record_payment_cli(args, ledger_url(args), fmt or "text")
    if args.action == "energy":
        import time

        until = audit.parse_since(args.until) if args.until else time.time()
        return energy_json(ledger_url(args), audit.parse_since(args.since), until,
                           _tariff(args))
    return export_text(args, fmt or "csv")


def _ledger_config(args: argparse.Namespace) -> LedgerConfig | None:
    """The payout settings of the config file (for blocks recorded before schema v5)."""
    if args.ledger_url:
        return None
    from poold.config import load_config

    return LedgerConfig.from_config(load_config(args.config))


def export_text(args: argparse.Namespace, fmt: str) -> str:
    """`poold ledger export` and `poold audit export`: one function, one format."""
    return audit.export(ledger_url(args), fmt=fmt, since=args.since,
                        config=_ledger_config(args), with_shares=args.with_shares)


def run_verify(args: argparse.Namespace) -> int:
    """`poold ledger verify`: 0 if everything matches, 1 naming the first mismatch."""
    import asyncio

    from poold.ledger.store import open_store
    from poold.ledger.verify import Report, verify

    url, config = ledger_url(args), _ledger_config(args)

    async def check() -> Report:
        store = open_store(url)
        await store.open()
        try:
            return await verify(store, config)
        finally:
            await store.close()

    rep = asyncio.run(check())
    out = sys.stdout if args.output is None else args.output.open("w")
    try:
        for note in rep.notes:
            print(f"note: {note}", file=out)
        if rep.ok:
            print(f"ledger verify: OK: {rep.summary()}", file=out)
            return 0
        print(f"ledger verify: FAILED: first mismatch: {rep.problems[0]}", file=out)
        for problem in rep.problems[1:]:
            print(f"also: {problem}", file=out)
        print(f"checked: {rep.summary()}", file=out)
        return 1
    finally:
        if out is not sys.stdout:
            out.close()
