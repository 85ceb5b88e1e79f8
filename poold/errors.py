"""Process-level errors shared by every area (the third error tier, after reply-level and
session-level errors: see poold.stratum.session).

A `ConfigError` ends the process cleanly with the offending key and file named; it is raised by
`poold.config` and by the areas that parse their own config tables (fleet inventory, ledger URL).
"""

from __future__ import annotations


class PooldError(Exception):
    """Base of poold's own exceptions."""


class ConfigError(PooldError):
    """A configuration value is missing, malformed or inconsistent.

    `key` is the dotted TOML path (for example ``stratum.listen`` or ``fleet.racks[2].cap_kw``),
    `source` the file it came from (or ``env:POOLD_...``).
    """

    def __init__(self, key: str, message: str, source: str = "") -> None:
        self.key = key
        self.message = message
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"{key}{where}: {message}")
