"""Chain reads from "the first node that answers": the one node adapter of poold.

The block submitter verifies a submitted block with `getblockheader`, and the ledger's
reconciliation follows recorded blocks with `getblockhash`, `getblockheader` and `getblock`
(Bitcoin Core JSON-RPC, https://developer.bitcoin.org/reference/rpc/). `NodeReader` serves both
over any number of nodes: it asks them in order (with a NodeSet: the nodes that are up, in
configuration order, then the ones marked down, which may have come back) and moves on to the
next node when one does not answer (`NodeUnavailable`).

`getblockheader` of a block a node does not know is Bitcoin Core's RPC error -5
(RPC_INVALID_ADDRESS_OR_KEY, src/rpc/protocol.h); the next node may know it (a block is submitted
to every node, and one may have refused it), so a header is None only when every node that
answered said -5. When no node answers at all, the reads raise `NodeUnavailable`: "not found"
and "could not ask" are different answers for the audit. `header_if_known` folds the second into
None for the block submitter, which records a block as unverified either way.

It implements `poold.ledger.audit.NodeClient` (structurally: the ledger does not import node/).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from poold.node.rpc import NodeRpcError, NodeUnavailable

if TYPE_CHECKING:
    from poold.node.nodes import NodeSet

log = logging.getLogger(__name__)

RPC_INVALID_ADDRESS_OR_KEY = -5  # Bitcoin Core: "Block not found" for getblockheader/getblock


class RpcCaller(Protocol):
    """What the reader needs of one node (poold.node.rpc.RpcClient)."""

    @property
    def name(self) -> str: ...

    async def call(self, method: str, *params: Any) -> Any: ...


class NodeReader:
    """Read-only chain queries answered by the first node that answers."""

    def __init__(self, clients: Callable[[], Sequence[RpcCaller]] | Sequence[RpcCaller]) -> None:
        """`clients`: the nodes in the order to ask them, or a function returning that order
        at each call (so a node marked down by the NodeSet is asked last)."""
        self._clients = clients if callable(clients) else (lambda: clients)

    @classmethod
    def of(cls, nodes: NodeSet) -> NodeReader:
        """Over a NodeSet: the nodes that are up, in configuration order, then the others."""

        def ranked() -> list[RpcCaller]:
            status = nodes.status()
            order = [s for s in status if s.up] + [s for s in status if not s.up]
            return [nodes.client(s.name) for s in order]

        return cls(ranked)

    def clients(self) -> Sequence[RpcCaller]:
        """The nodes in the order the next read will ask them."""
        return self._clients()

    async def _call(self, method: str, *params: Any) -> Any:
        errors: list[str] = []
        for client in self._clients():
            try:
                return await client.call(method, *params)
            except NodeUnavailable as exc:
                errors.append(str(exc))
        raise NodeUnavailable(f"no node answered {method}: " + ("; ".join(errors) or
                                                                 "no node configured"))

    async def getblockhash(self, height: int) -> str:
        return str(await self._call("getblockhash", height))

    async def getblock(self, hash_hex: str, verbosity: int) -> Any:
        return await self._call("getblock", hash_hex, verbosity)

    async def getblockheader(self, hash_hex: str) -> dict[str, Any] | None:
        """The verbose header from the first node that knows the block; None if every node that
        answered said it does not; `NodeUnavailable` if none answered."""
        answered = False
        errors: list[str] = []
        for client in self._clients():
            try:
                header = await client.call("getblockheader", hash_hex, True)
            except NodeRpcError as exc:
                if exc.code != RPC_INVALID_ADDRESS_OR_KEY:
                    raise
                answered = True
                continue
            except NodeUnavailable as exc:
                errors.append(str(exc))
                continue
            if not isinstance(header, dict):
                raise NodeRpcError(0, f"not an object: {header!r}", "getblockheader")
            return header
        if answered:
            return None
        raise NodeUnavailable("no node answered getblockheader: " + ("; ".join(errors) or
                                                                    "no node configured"))

    async def header_if_known(self, hash_hex: str) -> dict[str, Any] | None:
        """`getblockheader`, with None also when no node answered or one answered an error
        (logged): for the block submitter, which records the block as unverified either way."""
        try:
            return await self.getblockheader(hash_hex)
        except (NodeUnavailable, NodeRpcError) as exc:
            log.warning("getblockheader %s: %s", hash_hex, exc)
            return None
