"""Pure Bitcoin primitives for poold: serialization, byte orders, targets, addresses, scripts,
transactions, merkle trees, the coinbase builder, headers and block assembly.

Nothing in this package does I/O or imports asyncio; every function takes bytes/ints and returns
bytes/ints, so it is tested against real vectors without a node. Byte order is in the name (as
in Bitcoin Core's test framework): a plain name is internal bytes, `_hex` is RPC/display hex,
`_int` a little-endian integer, `_stratum` the word-swapped prevhash of `mining.notify`.
"""
