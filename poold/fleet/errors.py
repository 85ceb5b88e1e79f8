"""Errors of the operator's fleet requests (set a cap, curtail, restore, grid signal).

The fleet raises them; the admin API (poold.api) answers them as HTTP 404 and 422. The fleet
knows nothing of HTTP.
"""

from __future__ import annotations

from poold.errors import PooldError


class FleetRequestError(PooldError):
    """A request the fleet refuses: a value out of range or inconsistent (the API's 422)."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class UnknownRack(FleetRequestError):
    """The request names a rack or container the inventory does not have (the API's 404)."""


class UnknownMiner(UnknownRack):
    """The request names a miner the inventory does not have (the API's 404)."""
