"""Tests of the simulators (poold.sim)."""
