"""Devnet: a regtest node for the demo and the tests, whose chain state and block validation are
Bitcoin Core's own consensus engine (libbitcoinkernel), served over bitcoind-compatible JSON-RPC
and ZMQ. See `node.Devnet`."""

from poold.devnet.node import DEVNET_ADDRESS, DEVNET_SCRIPT, Devnet

__all__ = ["DEVNET_ADDRESS", "DEVNET_SCRIPT", "Devnet"]
