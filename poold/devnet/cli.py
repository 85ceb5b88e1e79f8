"""`poold devnet`: run the regtest devnet as a process until Ctrl-C or SIGTERM.

    poold devnet --rpc 127.0.0.1:18443 --zmq tcp://127.0.0.1:28332 [--datadir D]
                 [--rpc-user U --rpc-password P] [--generate N] [--block-interval S]

Auth is the cookie file (printed at startup) or --rpc-user/--rpc-password, as with bitcoind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from poold.devnet.kernel import KernelError
from poold.devnet.node import Devnet

log = logging.getLogger("poold.devnet")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _zmq_endpoint(value: str) -> tuple[str, int]:
    if not value.startswith("tcp://"):
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT, got {value!r}")
    return _host_port(value[len("tcp://") :])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rpc", type=_host_port, default=("127.0.0.1", 18443), metavar="HOST:PORT",
        help="JSON-RPC listen address (default 127.0.0.1:18443; port 0 = any free port)",
    )
    parser.add_argument(
        "--zmq", type=_zmq_endpoint, default=("127.0.0.1", 28332), metavar="tcp://HOST:PORT",
        help="ZMQ publisher for hashblock/rawblock/hashtx/rawtx (default tcp://127.0.0.1:28332)",
    )
    parser.add_argument(
        "--datadir", type=Path, default=None,
        help="keep the chain here across runs (default: a temporary directory, deleted on exit)",
    )
    parser.add_argument("--rpc-user", default="poold", help="RPC user (default poold)")
    parser.add_argument(
        "--rpc-password", default=None,
        help="RPC password (default: random; use the cookie file instead)",
    )
    parser.add_argument(
        "--generate", type=int, default=0, metavar="N",
        help="mine N blocks to the devnet's own address at startup (101 matures a coinbase)",
    )
    parser.add_argument(
        "--block-interval", type=float, default=0.0, metavar="S",
        help="mine a block every S seconds (default 0: only on request)",
    )


def run(args: argparse.Namespace) -> int:
    if args.generate < 0 or args.block_interval < 0:
        print("poold devnet: --generate and --block-interval must be >= 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0


async def _serve(args: argparse.Namespace) -> int:
    rpc_host, rpc_port = args.rpc
    zmq_host, zmq_port = args.zmq
    devnet = Devnet(
        datadir=args.datadir,
        rpc_host=rpc_host,
        rpc_port=rpc_port,
        zmq_port=zmq_port,
        rpc_user=args.rpc_user,
        rpc_password=args.rpc_password,
        zmq_host=zmq_host,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        await devnet.start()
    except OSError as exc:
        print(f"poold devnet: cannot listen: {exc}", file=sys.stderr)
        return 1
    except KernelError as exc:
        print(f"poold devnet: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.generate:
            await devnet.generate(args.generate)
        print(
            f"devnet ready: rpc {devnet.rpc_url} (user {devnet.rpc_user}, cookie "
            f"{devnet.cookie_file}), zmq {devnet.zmq_url}, height {devnet.height}, "
            f"coinbase address {devnet.address}",
            flush=True,
        )
        while not stop.is_set():
            if args.block_interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.block_interval)
                if not stop.is_set():
                    await devnet.generate(1)
            else:
                await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await devnet.stop()
        log.info("devnet stopped")
    return 0
