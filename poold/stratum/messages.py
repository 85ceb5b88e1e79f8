"""One class per Stratum V1 method (client requests) and builders for server messages.

Client -> pool (docs/STRATUM.md §2-§8, BIP310): `mining.subscribe`, `mining.authorize`,
`mining.configure`, `mining.suggest_difficulty`, `mining.suggest_target`,
`mining.extranonce.subscribe`, `mining.submit`, `mining.ping`. Each class parses its `params`
with `from_params` and raises `MalformedParams` (a reply-level error, code 20) on bad shapes.
Parsing is lenient where real firmware differs: Braiins OS sends `[UA, null]` to subscribe,
NerdMiner a float difficulty, some clients numbers as strings; extra parameters are ignored.

Pool -> client: `mining.set_difficulty`, `mining.set_version_mask`, `mining.set_extranonce`,
`client.reconnect`, `client.show_message` (`mining.notify` is precomputed per job in
`poold.work.jobs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from poold.errors import PooldError
from poold.stratum import codec
from poold.work.difficulty import sane_difficulty


class MalformedParams(PooldError, ValueError):
    """The params of a known method have the wrong shape."""


def _params_list(params: object) -> list[Any]:
    if params is None:
        return []
    if not isinstance(params, list):
        raise MalformedParams("params must be a list")
    return params


def _opt_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedParams(f"{what} must be a string")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """`mining.subscribe [user_agent, session_id?, ...]`; a null session id means none."""

    user_agent: str
    session_id: str | None

    @classmethod
    def from_params(cls, params: object) -> Subscribe:
        p = _params_list(params)
        ua = p[0] if p else ""
        if ua is None:
            ua = ""
        if not isinstance(ua, str):
            raise MalformedParams("user agent must be a string")
        session_id = _opt_str(p[1], "session id") if len(p) > 1 else None
        return cls(ua[:256], session_id)


_HINT = re.compile(r"(?:^|[,;\s])(md|d)=([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


@dataclass(frozen=True, slots=True)
class Authorize:
    """`mining.authorize [username, password]`; the password never appears in `repr`.

    Password hints (btcpool, MiningCore): `d=<difficulty>` suggests a difficulty and
    `md=<difficulty>` sets a floor; several hints may be separated by `,`, `;` or spaces.
    """

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Authorize(username={self.username!r}, password=<redacted>)"

    @classmethod
    def from_params(cls, params: object) -> Authorize:
        p = _params_list(params)
        if not p or not isinstance(p[0], str) or not p[0].strip():
            raise MalformedParams("username must be a non-empty string")
        password = p[1] if len(p) > 1 else ""
        if password is None:
            password = ""
        if not isinstance(password, str):
            password = str(password)
        return cls(p[0].strip()[:256], password[:256])

    def hints(self) -> tuple[float | None, float | None]:
        """(d, md) from the password, each None if absent or not a positive number."""
        d = md = None
        for key, value in _HINT.findall(self.password):
            if key == "d":
                d = sane_difficulty(value)
            else:
                md = sane_difficulty(value)
        return d, md


@dataclass(frozen=True, slots=True)
class Configure:
    """`mining.configure [[extension, ...], {extension-params}]` (BIP310)."""

    extensions: tuple[str, ...]
    params: dict[str, Any]

    @classmethod
    def from_params(cls, params: object) -> Configure:
        p = _params_list(params)
        exts = p[0] if p else []
        if not isinstance(exts, list) or not all(isinstance(e, str) for e in exts):
            raise MalformedParams("extensions must be a list of strings")
        ext_params = p[1] if len(p) > 1 and p[1] is not None else {}
        if not isinstance(ext_params, dict):
            raise MalformedParams("extension parameters must be an object")
        return cls(tuple(exts), ext_params)


@dataclass(frozen=True, slots=True)
class SuggestDifficulty:
    """`mining.suggest_difficulty [difficulty]`: a float, accepted at any time."""

    difficulty: float

    @classmethod
    def from_params(cls, params: object) -> SuggestDifficulty:
        p = _params_list(params)
        d = sane_difficulty(p[0]) if p else None
        if d is None:
            raise MalformedParams("difficulty must be a positive number")
        return cls(d)


@dataclass(frozen=True, slots=True)
class SuggestTarget:
    """`mining.suggest_target ["target hex"]` (btcpool): a 256-bit big-endian hex target."""

    target: int

    @classmethod
    def from_params(cls, params: object) -> SuggestTarget:
        p = _params_list(params)
        if not p or not isinstance(p[0], str) or not 0 < len(p[0]) <= 64:
            raise MalformedParams("target must be up to 64 hex digits")
        try:
            target = int(p[0], 16)
        except ValueError:
            raise MalformedParams("target must be hex") from None
        if target <= 0:
            raise MalformedParams("target must be positive")
        return cls(target)


@dataclass(frozen=True, slots=True)
class ExtranonceSubscribe:
    """`mining.extranonce.subscribe []`: the client handles `mining.set_extranonce`."""

    @classmethod
    def from_params(cls, params: object) -> ExtranonceSubscribe:
        _params_list(params)
        return cls()


@dataclass(frozen=True, slots=True)
class Ping:
    """`mining.ping []` from a client: answered with "pong"."""

    @classmethod
    def from_params(cls, params: object) -> Ping:
        _params_list(params)
        return cls()


class Submit(NamedTuple):
    """`mining.submit [worker, job_id, extranonce2, ntime, nonce, version_bits?]` (BIP310).

    A NamedTuple rather than a dataclass: it is built once per share on the hot path. Hex fields
    are checked (length, digits) by the share core, not here.
    """

    worker: str
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None = None

    @classmethod
    def from_params(cls, params: object) -> Submit:
        if type(params) is list:
            n = len(params)
            if n in (5, 6):
                for item in params:
                    if type(item) is not str:
                        break
                else:
                    # tuple.__new__ skips the generated Python-level __new__ (hot path).
                    return tuple.__new__(cls, params if n == 6 else (*params, None))
        raise MalformedParams("submit takes 5 or 6 string parameters")


# --- pool -> client ---------------------------------------------------------------------------


def set_difficulty(difficulty: float) -> bytes:
    return codec.notification("mining.set_difficulty", [difficulty])


def set_version_mask(mask: int) -> bytes:
    return codec.notification("mining.set_version_mask", [f"{mask:08x}"])


def set_extranonce(extranonce1: bytes, extranonce2_size: int) -> bytes:
    return codec.notification("mining.set_extranonce", [extranonce1.hex(), extranonce2_size])


def reconnect(host: str | None = None, port: int | None = None, wait_s: int = 0) -> bytes:
    """`client.reconnect`: to the same server when host is None, else to host:port."""
    if host is None:
        return codec.notification("client.reconnect", [])
    return codec.notification("client.reconnect", [host, port, wait_s])


def show_message(text: str) -> bytes:
    return codec.notification("client.show_message", [text])
