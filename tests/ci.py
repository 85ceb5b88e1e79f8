"""What a test does when a part it needs is missing: under CI it fails, elsewhere it skips.

`.ci/run` exports CI=true, so a CI run cannot go green having tested only what happened to be
installed (e.g. only the pure-Python twin of the native share core).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def missing(what: str) -> NoReturn:
    """Fail under CI=true; otherwise skip, saying that CI would fail."""
    if in_ci():
        pytest.fail(f"{what}: required when CI=true")
    pytest.skip(f"{what} (skipped because CI is not set; CI=true fails here)")
