"""Devnet: a regtest node for the demo and the tests, whose chain state and block validation are
Bitcoin Core's own consensus engine (libbitcoinkernel), served over bitcoind-compatible JSON-RPC
and ZMQ. See `node.Devnet`.

The names below are imported on first use: the kernel's child process (`kernel_process`) imports
this package and must not pay for the RPC server and its dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poold.devnet.node import DEVNET_ADDRESS, DEVNET_SCRIPT, Devnet

__all__ = ["DEVNET_ADDRESS", "DEVNET_SCRIPT", "Devnet"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from poold.devnet import node

        return getattr(node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
