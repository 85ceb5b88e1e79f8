"""Loading of the real-data vectors in tests/vectors/ (provenance in tests/vectors/bitcoin.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load_hex(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def load_json(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())
