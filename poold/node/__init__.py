"""bitcoind I/O: JSON-RPC client, ZMQ hashblock listener, templates, and the set of nodes."""
