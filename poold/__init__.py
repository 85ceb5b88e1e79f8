"""poold: one asyncio daemon for a Bitcoin mining site.

It runs a Stratum V1 pool and a power-capped fleet controller in one process.
"""

__version__ = "0.1.0"
