"""Pure pool logic: jobs from templates, extranonces, share checks, difficulty, block assembly.

Nothing in this package does I/O or imports asyncio; the Stratum server and the daemon drive it.
"""
