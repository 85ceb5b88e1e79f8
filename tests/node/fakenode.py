"""A tiny bitcoind stand-in for unit tests of the node client: real HTTP JSON-RPC and real ZMQ.

It has no consensus (the devnet has): blocks are random hashes, templates are synthetic. It
exists to drive the client's transport, auth, failover and timing paths deterministically
(slow getblocktemplate, dropped ZMQ sequence numbers, restarts on the same port).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import struct
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import web


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeNode:
    def __init__(
        self,
        datadir: Path,
        *,
        chain: str = "regtest",
        user: str = "poold",
        password: str | None = None,
        zmq_enabled: bool = True,
    ) -> None:
        self.datadir = datadir
        self.chain = chain
        self.user = user
        self.password = password or secrets.token_hex(16)
        datadir.mkdir(parents=True, exist_ok=True)
        self.cookie_file = datadir / ".cookie"
        self.rpc_port = free_port()
        self.zmq_port = free_port() if zmq_enabled else None
        self.hashes: list[str] = [secrets.token_hex(32)]  # genesis
        self.bits = "207fffff"
        self.ibd = False
        self.gbt_delay_s = 0.0
        self.gbt_rules = ["csv", "!segwit", "taproot"]
        self.calls: list[str] = []
        self.submitted: list[str] = []
        self.zmq_seq = 0
        self.sent_at: dict[str, float] = {}  # block hash -> perf_counter when published
        self._runner: web.AppRunner | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._cookie_secret = ""

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}/"

    @property
    def zmq_url(self) -> str | None:
        return None if self.zmq_port is None else f"tcp://127.0.0.1:{self.zmq_port}"

    @property
    def tip(self) -> str:
        return self.hashes[-1]

    @property
    def height(self) -> int:
        return len(self.hashes) - 1

    async def start(self) -> None:
        # Like bitcoind: a fresh cookie at every start.
        self._cookie_secret = secrets.token_hex(32)
        self.cookie_file.write_text(f"__cookie__:{self._cookie_secret}")
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.rpc_port, reuse_address=True)
        await site.start()
        if self.zmq_port is not None:
            self._ctx = zmq.asyncio.Context()
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(f"tcp://127.0.0.1:{self.zmq_port}")
            self.zmq_seq = 0  # bitcoind's counters restart with the process

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    async def __aenter__(self) -> FakeNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def mine(self, n: int = 1, *, skip_seq: int = 0) -> list[str]:
        out = []
        for _ in range(n):
            h = secrets.token_hex(32)
            self.hashes.append(h)
            out.append(h)
            await self._publish(h, skip_seq)
            skip_seq = 0
        return out

    async def _publish(self, block_hash: str, skip_seq: int) -> None:
        if self._pub is None:
            return
        self.zmq_seq += skip_seq
        frames = [b"hashblock", bytes.fromhex(block_hash), struct.pack("<I", self.zmq_seq)]
        self.zmq_seq = (self.zmq_seq + 1) & 0xFFFFFFFF
        self.sent_at[block_hash] = time.perf_counter()
        await self._pub.send_multipart(frames)

    # -- RPC ------------------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        if user == "__cookie__":
            return secrets.compare_digest(password, self._cookie_secret)
        return user == self.user and secrets.compare_digest(password, self.password)

    async def _handle(self, request: web.Request) -> web.Response:
        if not self._authorized(request.headers.get("Authorization")):
            return web.Response(status=401)
        req = json.loads(await request.read())
        method, params = req["method"], req.get("params", [])
        self.calls.append(method)
        try:
            result = await self._dispatch(method, params)
        except KeyError:
            return self._reply(req, None, {"code": -32601, "message": "Method not found"}, 404)
        except ValueError as e:
            return self._reply(req, None, {"code": -8, "message": str(e)}, 500)
        return self._reply(req, result, None, 200)

    @staticmethod
    def _reply(req: dict[str, Any], result: Any, error: Any, status: int) -> web.Response:
        body = json.dumps({"result": result, "error": error, "id": req.get("id")})
        return web.Response(status=status, body=body, content_type="application/json")

    async def _dispatch(self, method: str, params: list[Any]) -> Any:
        if method == "getblockchaininfo":
            return {"chain": self.chain, "blocks": self.height, "headers": self.height,
                    "bestblockhash": self.tip, "initialblockdownload": self.ibd}
        if method == "getnetworkinfo":
            return {"version": 310000, "subversion": "/FakeNode:31.0.0/"}
        if method == "getbestblockhash":
            return self.tip
        if method == "getblockhash":
            return self.hashes[int(params[0])]
        if method == "getblockheader":
            h = params[0]
            if h not in self.hashes:
                raise ValueError("Block not found")
            height = self.hashes.index(h)
            return {"hash": h, "height": height, "bits": self.bits,
                    "confirmations": self.height - height + 1,
                    "mediantime": 1_700_000_000 + height, "time": 1_700_000_000 + height,
                    "previousblockhash": self.hashes[height - 1] if height else None}
        if method == "getblocktemplate":
            tip = self.tip
            if self.gbt_delay_s:
                await asyncio.sleep(self.gbt_delay_s)
            return self.template(tip)
        if method == "submitblock":
            self.submitted.append(params[0])
            return None
        raise KeyError(method)

    def template(self, tip: str) -> dict[str, Any]:
        height = self.hashes.index(tip) + 1
        txs = []
        for i in range(3):
            data = os.urandom(100 + i)
            txs.append({"data": data.hex(), "txid": secrets.token_hex(32),
                        "hash": secrets.token_hex(32), "fee": 1000 + i, "weight": 400 + 4 * i,
                        "depends": [], "sigops": 1})
        subsidy = (50 * 100_000_000) >> (height // 150)
        return {
            "version": 0x20000000, "rules": list(self.gbt_rules), "previousblockhash": tip,
            "transactions": txs, "coinbasevalue": subsidy + sum(t["fee"] for t in txs),
            "target": "7fffff" + "00" * 29, "mintime": 1_700_000_000 + height,
            "curtime": int(time.time()), "bits": self.bits, "height": height,
            "default_witness_commitment": "6a24aa21a9ed" + secrets.token_hex(32),
        }
