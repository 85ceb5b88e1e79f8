"""poold: one asyncio daemon for a Bitcoin mining site (Stratum V1 pool + fleet power controller)."""

__version__ = "0.1.0"
