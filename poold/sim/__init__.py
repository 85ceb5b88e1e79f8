"""Simulated miners over real TCP: a Stratum V1 CPU miner (`miner`) and, from the fleet side,
ASIC and firmware-API emulators (`asic*`) that drive it."""
