"""NodeReader (the one "first node that answers" adapter) against real devnets over JSON-RPC,
with a node that is down, with a node that does not know a block, and over a NodeSet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from poold.bitcoin.block import parse_block
from poold.node.nodes import NodeSet, NodeSpec
from poold.node.reader import NodeReader
from poold.node.rpc import NodeRpcError, NodeUnavailable, RpcClient
from tests.node.fakenode import free_port

UNKNOWN = "00" * 32


def client_of(dn: Any, name: str) -> RpcClient:
    return RpcClient(dn.rpc_url, name=name, user=dn.rpc_user, password=dn.rpc_password,
                     timeout_s=5)


def dead_client(name: str = "down") -> RpcClient:
    """A node that is down: nothing listens on its port."""
    return RpcClient(f"http://127.0.0.1:{free_port()}/", name=name, user="u", password="p",
                     timeout_s=1)


@pytest.mark.slow
async def test_reads_the_chain_and_skips_a_node_that_is_down(devnet: Any) -> None:
    await devnet.generate(2)
    tip, height = devnet.tip_hash_hex, devnet.height
    async with dead_client() as down, client_of(devnet, "devnet") as up:
        for order in ([up], [down, up]):
            reader = NodeReader(order)
            assert await reader.getblockhash(height) == tip
            header = await reader.getblockheader(tip)
            assert header is not None and header["hash"] == tip and header["height"] == height
            parsed, txs = parse_block(bytes.fromhex(await reader.getblock(tip, 0)))
            assert parsed.hash_hex == tip and len(txs) >= 1
            # Bitcoin Core's -5 "Block not found" from every node that answered: None.
            assert await reader.getblockheader(UNKNOWN) is None
            assert await reader.header_if_known(UNKNOWN) is None
        # An answer that is an error other than "not found" is raised, not skipped.
        with pytest.raises(NodeRpcError) as e:
            await NodeReader([down, up]).getblockhash(height + 100)
        assert e.value.code == -8

        # No node answers: "could not ask" is not "not found".
        alone = NodeReader([down])
        with pytest.raises(NodeUnavailable, match="no node answered getblockheader"):
            await alone.getblockheader(tip)
        with pytest.raises(NodeUnavailable, match="no node answered getblockhash"):
            await alone.getblockhash(height)
        assert await alone.header_if_known(tip) is None  # the block submitter's form
        with pytest.raises(NodeUnavailable, match="no node configured"):
            await NodeReader([]).getblockheader(tip)


@pytest.mark.slow
async def test_a_block_one_node_lacks_is_found_on_the_next(
    devnet_factory: Callable[..., Awaitable[Any]],
) -> None:
    first, second = await devnet_factory(), await devnet_factory()
    await second.generate(1)  # two unconnected regtest chains: only `second` has this block
    only_second = second.tip_hash_hex
    async with client_of(first, "first") as a, client_of(second, "second") as b:
        assert await NodeReader([a]).getblockheader(only_second) is None
        header = await NodeReader([a, b]).getblockheader(only_second)
        assert header is not None and header["hash"] == only_second


@pytest.mark.slow
async def test_over_a_nodeset_the_node_that_is_up_answers_first(devnet: Any) -> None:
    await devnet.generate(1)
    tip = devnet.tip_hash_hex
    # The operator's first node is down: the NodeSet marks it so, and the reader asks the
    # node that is up first (no connection timeout on every read).
    specs = [NodeSpec("down", f"http://127.0.0.1:{free_port()}/", "u", "p", timeout_s=1),
             NodeSpec("devnet", devnet.rpc_url, devnet.rpc_user, devnet.rpc_password)]
    nodes = NodeSet(specs, chain="regtest")
    await nodes.start()
    try:
        assert [s.up for s in nodes.status()] == [False, True]
        reader = NodeReader.of(nodes)
        assert [c.name for c in reader.clients()] == ["devnet", "down"]
        header = await reader.getblockheader(tip)
        assert header is not None and header["hash"] == tip
    finally:
        await nodes.stop()
