"""Fixtures shared by every test area.

- `devnet`: a started regtest devnet (Bitcoin Core's consensus via libbitcoinkernel, real
  JSON-RPC and ZMQ sockets on 127.0.0.1), fresh temporary datadir, stopped after the test.
- `devnet_factory`: `await devnet_factory(**Devnet kwargs)` for tests needing several nodes (or a
  given datadir); all are stopped after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from poold.devnet import Devnet


@pytest.fixture
async def devnet() -> AsyncIterator[Devnet]:
    from poold.devnet import Devnet

    async with Devnet() as dn:
        yield dn


@pytest.fixture
async def devnet_factory() -> AsyncIterator[Callable[..., Awaitable[Devnet]]]:
    from poold.devnet import Devnet

    started: list[Devnet] = []

    async def make(**kwargs: Any) -> Devnet:
        dn = Devnet(**kwargs)
        await dn.start()
        started.append(dn)
        return dn

    yield make
    for dn in reversed(started):
        await dn.stop()
