"""Moved to poold.sim.simsite (the fleet does not import the simulator); re-exported here only
for code written against the old path. New code imports poold.sim.simsite."""

from poold.sim.simsite import *  # noqa: F403
