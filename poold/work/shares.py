"""Why a share (or a share-adjacent request) is refused: one enum, also the metric label.

Codes follow the Stratum V1 convention shared by MiningCore and public-pool (docs/STRATUM.md
§1): 20 other, 21 job not found / stale, 22 duplicate, 23 low difficulty, 24 unauthorized
worker, 25 not subscribed. The member *name* is the `reason` label of `poold_shares_total`, so
names are lower-case and stable; the message is what firmware shows to the operator.
"""

from __future__ import annotations

import enum


class RejectReason(enum.Enum):
    """Every way a submit can fail; `.code` and `.message` form the Stratum error array."""

    job_not_found = (21, "Job not found")
    stale = (21, "Stale job")
    # Stale and not even meeting the share target: not honest latency, so it counts toward the
    # invalid-share ladder (a flood of junk on an old job must not hide behind "stale").
    stale_low_difficulty = (21, "Stale job, low difficulty share")
    duplicate = (22, "Duplicate share")
    low_difficulty = (23, "Low difficulty share")
    unauthorized = (24, "Unauthorized worker")
    not_subscribed = (25, "Not subscribed")
    ntime_out_of_range = (20, "Ntime out of range")
    version_bits_outside_mask = (20, "Version bits outside the negotiated mask")
    malformed = (20, "Malformed submit parameters")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        # Position in definition order: lets hot paths index tuples/lists instead of hashing the
        # member (Enum.__hash__ is a Python-level function).
        self.index = len(type(self)._member_names_)

    @property
    def label(self) -> str:
        """The metric label (the member name)."""
        return self.name
