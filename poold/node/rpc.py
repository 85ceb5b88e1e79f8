"""Async JSON-RPC client for one bitcoind (Bitcoin Core's HTTP JSON-RPC 1.0 interface).

One aiohttp session per node with keep-alive; user/password or cookie-file auth (the cookie is
re-read on HTTP 401 because bitcoind writes a new one at every start); a timeout per call;
typed wrappers for the calls poold makes (BIP22/BIP23 getblocktemplate and submitblock, and the
chain queries); the startup check (reachable, authenticated, right chain, not in IBD).

Errors come in two kinds: `NodeRpcError` is an answer from the node (the call reached it and it said
no: retrying the same call will not help), `NodeUnavailable` means no answer (connection refused,
timeout, HTTP-level failure, bad auth): the caller may retry with `Backoff`.

Credentials never appear in logs, reprs or exception messages: the URL's userinfo is split off at
construction and only the clean URL is ever shown.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from poold.errors import PooldError

if TYPE_CHECKING:
    from poold.metrics import Metrics

log = logging.getLogger(__name__)

# Bitcoin Core RPC error codes (src/rpc/protocol.h) poold reacts to.
RPC_METHOD_NOT_FOUND = -32601
RPC_IN_WARMUP = -28

JSON_HEADERS = {"Content-Type": "application/json"}


class NodeRpcError(PooldError):
    """The node answered the call with an error object."""

    def __init__(self, code: int, message: str, method: str = "") -> None:
        self.code = code
        self.message = message
        self.method = method
        super().__init__(f"{method}: RPC error {code}: {message}" if method else message)


class NodeUnavailable(PooldError):
    """The node did not answer (network error, timeout, HTTP failure, authentication)."""


class NodeAuthError(NodeUnavailable):
    """HTTP 401/403: wrong user/password or a stale cookie."""


class NodeNotReady(NodeUnavailable):
    """The node answers but cannot give current work yet (warm-up, initial block download)."""


class NodeCheckError(PooldError):
    """The node answers but must never be used as configured (wrong chain): a config error."""


class _StaleConnection(NodeUnavailable):
    """The node closed a kept-alive connection before answering: retry once on a new one."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the startup check learned about a node."""

    chain: str
    blocks: int
    best_block_hash_hex: str
    initial_block_download: bool
    version: int | None  # None if the node has no getnetworkinfo (the devnet may not)
    subversion: str


class Backoff:
    """Capped exponential backoff with jitter: initial, 2x, 4x ... up to `cap` seconds."""

    def __init__(self, initial_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.initial_s * 2.0 ** min(self.failures, 32))
        self.failures += 1
        # Up to 10 % jitter so several poold instances do not hammer a restarting node in step.
        return delay * (1.0 + 0.1 * random.random())

    def reset(self) -> None:
        self.failures = 0


class ThrottledLog:
    """Log a recurring failure at most once per `interval_s`, counting what was suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self._log.warning(msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._log.warning(msg, *args)

    def clear(self, key: str) -> None:
        """The condition ended: the next failure is logged at once."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(clean url, user, password) from an RPC URL that may carry `user:password@`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Never echo the URL: it may carry a password.
        raise ValueError("rpc_url must be http://host:port/ or https://host:port/")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), user, password


class RpcClient:
    """JSON-RPC client for one node. Create, `await start()` (or use `async with`), call."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "node",
        user: str | None = None,
        password: str | None = None,
        cookie_file: Path | str | None = None,
        timeout_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        clean, url_user, url_password = split_credentials(url)
        self.name = name
        self.url = clean
        self.timeout_s = timeout_s
        # Config uses "" for "not set".
        self._user = user or url_user or None
        self._password = password or url_password or None
        self._cookie_file = Path(cookie_file) if cookie_file else None
        if self._cookie_file is None and (self._user is None or self._password is None):
            raise ValueError(f"node {name}: give rpc_user and rpc_password, or rpc_cookie_file")
        self._auth_header: str | None = None
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        # Called whenever the node answered at all (any HTTP reply, a JSON-RPC error included):
        # the node set uses it as a sign of life to re-check a node it holds down at once.
        self.on_answer: Callable[[], None] | None = None

    @property
    def _uses_cookie(self) -> bool:
        return self._cookie_file is not None and (self._user is None or self._password is None)

    def __repr__(self) -> str:
        auth = "cookie" if self._uses_cookie else "password"
        return f"RpcClient(name={self.name!r}, url={self.url!r}, auth={auth})"

    async def __aenter__(self) -> RpcClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None:
            # Idle connections are dropped before bitcoind's own -rpcservertimeout (30 s) would
            # close them under us.
            connector = aiohttp.TCPConnector(limit=8, keepalive_timeout=15.0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=json.dumps, raise_for_status=False
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- transport ------------------------------------------------------------------------------

    async def _auth(self, reload: bool = False) -> str:
        if self._auth_header is not None and not reload:
            return self._auth_header
        if not self._uses_cookie:
            assert self._user is not None and self._password is not None
            user, password = self._user, self._password
        else:
            assert self._cookie_file is not None
            user, password = await asyncio.to_thread(_read_cookie, self._cookie_file, self.name)
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._auth_header = f"Basic {token}"
        return self._auth_header

    async def call(self, method: str, *params: Any, timeout_s: float | None = None) -> Any:
        """One JSON-RPC call; the result, or NodeRpcError (node said no) / NodeUnavailable."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = json.dumps(
            {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        )
        limit = aiohttp.ClientTimeout(total=timeout_s if timeout_s is not None else self.timeout_s)
        started = time.perf_counter()
        try:
            try:
                status, payload = await self._post(body, limit, reload_auth=False)
            except _StaleConnection:
                # A kept-alive connection the node had closed: one fresh attempt.
                status, payload = await self._post(body, limit, reload_auth=False)
            if status in (401, 403) and self._uses_cookie:
                # bitcoind writes a new cookie at every start: read it again and retry once.
                status, payload = await self._post(body, limit, reload_auth=True)
        except NodeUnavailable:
            if self._metrics is not None:
                self._metrics.rpc_errors.labels(node=self.name, method=method).inc()
            raise
        finally:
            if self._metrics is not None:
                self._metrics.rpc_latency.labels(node=self.name, method=method).observe(
                    time.perf_counter() - started
                )
        if self.on_answer is not None:
            self.on_answer()
        if status in (401, 403):
            raise NodeAuthError(
                f"node {self.name}: {method}: authentication failed (HTTP {status})"
            )
        try:
            reply = json.loads(payload)
        except ValueError:
            raise NodeUnavailable(
                f"node {self.name}: {method}: HTTP {status} with a non-JSON body"
            ) from None
        if not isinstance(reply, Mapping):
            raise NodeUnavailable(f"node {self.name}: {method}: HTTP {status}, reply not an object")
        error = reply.get("error")
        if error is not None:
            if isinstance(error, Mapping):
                code = error.get("code")
                raise NodeRpcError(
                    code if isinstance(code, int) else 0, str(error.get("message", "")), method
                )
            raise NodeRpcError(0, str(error), method)
        if status != 200:
            raise NodeUnavailable(f"node {self.name}: {method}: HTTP {status}")
        return reply.get("result")

    async def _post(
        self, body: str, limit: aiohttp.ClientTimeout, *, reload_auth: bool
    ) -> tuple[int, bytes]:
        assert self._session is not None
        headers = {**JSON_HEADERS, "Authorization": await self._auth(reload=reload_auth)}
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, timeout=limit
            ) as resp:
                return resp.status, await resp.read()
        except TimeoutError:
            raise NodeUnavailable(
                f"node {self.name}: no answer within {limit.total:g} s"
            ) from None
        except aiohttp.ServerDisconnectedError:
            raise _StaleConnection(f"node {self.name}: server disconnected") from None
        except aiohttp.ClientError as e:
            # aiohttp's messages name host:port at most (we never put credentials in the URL).
            raise NodeUnavailable(f"node {self.name}: {type(e).__name__}: {e}") from None

    async def call_retrying(
        self, method: str, *params: Any, deadline_s: float, backoff: Backoff | None = None
    ) -> Any:
        """`call`, retrying NodeUnavailable with capped backoff until `deadline_s` has passed."""
        backoff = backoff or Backoff()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while True:
            try:
                return await self.call(method, *params)
            except NodeUnavailable:
                delay = backoff.next_delay()
                if loop.time() + delay >= end:
                    raise
                await asyncio.sleep(delay)

    # -- typed calls ----------------------------------------------------------------------------

    async def getblocktemplate(self, rules: tuple[str, ...] = ("segwit",)) -> dict[str, Any]:
        result = await self.call("getblocktemplate", {"rules": list(rules)})
        return _expect_dict(result, "getblocktemplate")

    async def submitblock(self, block: bytes | str) -> str | None:
        """None if accepted, else the BIP22 reason ("duplicate", "high-hash", ...)."""
        block_hex = block if isinstance(block, str) else block.hex()
        result = await self.call("submitblock", block_hex)
        return None if result is None else str(result)

    async def getbestblockhash(self) -> str:
        """The active tip, display hex."""
        return _expect_str(await self.call("getbestblockhash"), "getbestblockhash")

    async def getblockheader(self, hash_hex: str) -> dict[str, Any]:
        return _expect_dict(await self.call("getblockheader", hash_hex, True), "getblockheader")

    async def getblockhash(self, height: int) -> str:
        return _expect_str(await self.call("getblockhash", height), "getblockhash")

    async def getblockchaininfo(self) -> dict[str, Any]:
        return _expect_dict(await self.call("getblockchaininfo"), "getblockchaininfo")

    async def getmininginfo(self) -> dict[str, Any]:
        return _expect_dict(await self.call("getmininginfo"), "getmininginfo")

    async def getnetworkinfo(self) -> dict[str, Any]:
        return _expect_dict(await self.call("getnetworkinfo"), "getnetworkinfo")

    async def preciousblock(self, hash_hex: str) -> None:
        await self.call("preciousblock", hash_hex)

    async def validateaddress(self, address: str) -> dict[str, Any]:
        return _expect_dict(await self.call("validateaddress", address), "validateaddress")

    # -- startup check --------------------------------------------------------------------------

    async def check(self, chain: str) -> NodeInfo:
        """Reachable, authenticated, on `chain`, not in IBD (regtest excepted); logs the version.

        Raises NodeUnavailable (no answer, auth; NodeNotReady: warm-up or IBD, try later) or
        NodeCheckError (wrong chain: a configuration error, retrying will not help).
        """
        try:
            info = await self.getblockchaininfo()
        except NodeRpcError as e:
            if e.code == RPC_IN_WARMUP:
                raise NodeNotReady(f"node {self.name}: warming up ({e.message})") from None
            raise
        node_chain = str(info.get("chain"))
        if node_chain != chain:
            raise NodeCheckError(
                f"node {self.name} is on chain {node_chain!r} but poold is configured for "
                f"{chain!r} (pool.network)"
            )
        ibd = bool(info.get("initialblockdownload", False))
        if ibd and chain != "regtest":
            raise NodeNotReady(
                f"node {self.name} is in initial block download "
                f"(blocks={info.get('blocks')}, headers={info.get('headers')}); "
                "it cannot give current templates"
            )
        version: int | None = None
        subversion = ""
        try:
            net = await self.getnetworkinfo()
            version = int(net["version"]) if isinstance(net.get("version"), int) else None
            subversion = str(net.get("subversion", ""))
        except NodeRpcError as e:
            if e.code != RPC_METHOD_NOT_FOUND:
                raise
        node = NodeInfo(
            chain=node_chain,
            blocks=int(info.get("blocks", 0)),
            best_block_hash_hex=str(info.get("bestblockhash", "")),
            initial_block_download=ibd,
            version=version,
            subversion=subversion,
        )
        log.info(
            "node %s: %s chain=%s height=%d version=%s %s",
            self.name, self.url, node.chain, node.blocks,
            node.version if node.version is not None else "unknown", node.subversion,
        )
        return node


def _read_cookie(path: Path, name: str) -> tuple[str, str]:
    """`__cookie__:<hex>` as written by bitcoind (src/rpc/request.cpp GenerateAuthCookie)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise NodeAuthError(f"node {name}: cannot read cookie file {path}: {e.strerror}") from None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise NodeAuthError(f"node {name}: cookie file {path} is not user:password")
    return user, password


def _expect_dict(result: object, method: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise NodeUnavailable(f"{method}: expected an object, got {type(result).__name__}")
    return result


def _expect_str(result: object, method: str) -> str:
    if not isinstance(result, str):
        raise NodeUnavailable(f"{method}: expected a string, got {type(result).__name__}")
    return result
