"""JSON encoding and decoding of Stratum V1 lines (JSON-RPC 1.0 style, docs/STRATUM.md §1).

Requests are `{"id": ..., "method": ..., "params": [...]}`; replies `{"id": ..., "result": ...,
"error": null | [code, "reason", null]}`; notifications carry `"id": null`. Ids (int, string,
null or anything else JSON allows) are echoed verbatim. orjson is used when installed (measured
on one core: about 5x faster to parse a submit line and 15x to serialize its reply), the
standard library otherwise; both produce the same bytes for what poold sends.
`POOLD_STDLIB_JSON=1` forces the standard library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from poold.errors import PooldError

try:  # pragma: no cover - which branch runs depends on the machine
    if os.environ.get("POOLD_STDLIB_JSON") == "1":
        raise ImportError("POOLD_STDLIB_JSON=1 forces the standard library")
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _dumps: Callable[[Any], bytes] = orjson.dumps
    _DecodeError: type[Exception] = orjson.JSONDecodeError
    JSON_BACKEND = "orjson"
except ImportError:  # pragma: no cover
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    _DecodeError = ValueError
    JSON_BACKEND = "json"


class StratumProtocolError(PooldError, ValueError):
    """A line that is not a JSON object: answered with an error to id null, never ignored."""


# For hot paths that catch the errors themselves: `raw_loads` raises one of DECODE_ERRORS.
raw_loads = _loads
DECODE_ERRORS: tuple[type[Exception], ...] = (_DecodeError, ValueError, UnicodeDecodeError)


def loads(line: bytes) -> Any:
    try:
        return _loads(line)
    except DECODE_ERRORS as exc:
        raise StratumProtocolError(f"invalid JSON: {exc}") from None


def exact_id(line: bytes, parsed: object) -> object:
    """The request id of `line` exactly as sent, for an id the fast parser gave as a float.

    orjson reads integers beyond 64 bits as floats; the standard library keeps them exact, so
    an id such as 123456789012345678901234567890 is echoed digit for digit (ids are echoed
    verbatim). Only float ids take this path: the hot path never pays for it."""
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        return parsed
    return msg.get("id", parsed) if isinstance(msg, dict) else parsed


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (no newline)."""
    return _dumps(obj)


def encode_id(msg_id: object) -> bytes:
    """The id as JSON, verbatim; the int case avoids the serializer (the common case)."""
    if type(msg_id) is int:
        return str(msg_id).encode()
    if msg_id is None:
        return b"null"
    return _dumps(msg_id)


def result_line(msg_id: object, result: object) -> bytes:
    return b'{"id":' + encode_id(msg_id) + b',"result":' + _dumps(result) + b',"error":null}\n'


def error_tail(code: int, message: str) -> bytes:
    """Everything after the id of an error reply; precomputed per reason by callers."""
    return b',"result":null,"error":' + _dumps([code, message, None]) + b"}\n"


def error_line(msg_id: object, code: int, message: str) -> bytes:
    return b'{"id":' + encode_id(msg_id) + error_tail(code, message)


def notification(method: str, params: list[Any]) -> bytes:
    return b'{"id":null,"method":' + _dumps(method) + b',"params":' + _dumps(params) + b"}\n"


RESULT_TRUE_TAIL = b',"result":true,"error":null}\n'
RESULT_FALSE_TAIL = b',"result":false,"error":null}\n'
