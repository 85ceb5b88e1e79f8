"""Emulated firmware APIs over raw TCP for a `SimAsic` (docs/FLEET.md §1, §2).

- `CgminerServer`: cgminer/bmminer RPC, one JSON request per connection, read-only (privileged
  commands are refused with code 45 as stock Antminers do), replies end with a NUL byte.
- `LuxosServer`: the same framing plus LuxOS commands: `logon`/`logoff`/`session` (one session,
  60 s idle expiry), `profiles`, `profileset <sid>,<name>` (refused while ATM is enabled),
  `atm`/`atmset`, `curtail <sid>,sleep|wakeup`, `power`, `reboot`.
- `WhatsminerV3Server`: 4-byte little-endian length + JSON, `get.device.info` (salt),
  `get.miner.status` (param "summary", "pools", "edevs", joinable with "+"),
  `get.miner.setting`, and authenticated writes
  `set.miner.power_limit`, `set.miner.service start|stop`, `set.system.reboot` with
  ``token = b64(sha256(cmd + password + salt + ts))[:8]`` for account "super".

Every server honours the asic's `Faults`: timeout (never answers), malformed (a truncated reply).
Bound to 127.0.0.1 on an ephemeral port unless told otherwise.

``minimal=True`` serves only what the vendors document as the minimum a client can rely on:
no LuxOS ``config`` (it answers code 14 "Invalid command", as firmware without the command
does), a cgminer ``stats`` without temperature and fan fields, and a Whatsminer status
summary with power, hashrate and power limit only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import struct
from typing import Any

from poold.sim.asic import SimAsic

SESSION_IDLE_S = 60.0


class _TcpServer:
    """Accept loop and fault handling shared by the emulated TCP APIs."""

    def __init__(self, asic: SimAsic, host: str = "127.0.0.1", port: int = 0, *,
                 minimal: bool = False) -> None:
        self.asic = asic
        self.minimal = minimal
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> _TcpServer:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if self.asic.rebooting:
                return  # the firmware is down: the connection closes without a word
            await self.serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError

    async def maybe_fault(self, payload: bytes) -> bytes | None:
        """None = answer nothing (the timeout fault); else the bytes to send."""
        if self.asic.faults.timeout:
            await asyncio.sleep(3600)
            return None
        if self.asic.faults.malformed:
            return payload[: max(1, len(payload) // 2)]
        return payload


def _status(code: int, msg: str, kind: str = "S") -> list[dict[str, Any]]:
    return [{"STATUS": kind, "When": 0, "Code": code, "Msg": msg, "Description": "sim"}]


class CgminerServer(_TcpServer):
    """Read-only cgminer RPC (summary, stats, version, devs, pools)."""

    firmware = "cgminer 4.11.1"

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        raw = await reader.read(65536)
        try:
            req = json.loads(raw.decode().strip("\x00 \n"))
            cmd = str(req.get("command", ""))
            param = str(req.get("parameter", ""))
        except (ValueError, AttributeError):
            reply: dict[str, Any] = {"STATUS": _status(23, "Invalid JSON", "E"), "id": 1}
        else:
            reply = self.dispatch(cmd, param)
        out = await self.maybe_fault(json.dumps(reply).encode() + b"\x00")
        if out is not None:
            writer.write(out)
            await writer.drain()

    def dispatch(self, cmd: str, param: str) -> dict[str, Any]:
        if "+" in cmd:
            return {c: [self.dispatch(c, "")] for c in cmd.split("+")} | {"id": 1}
        a = self.asic
        if cmd == "summary":
            ghs = a.hashrate_ths() * 1000.0
            return {
                "STATUS": _status(11, "Summary"),
                "SUMMARY": [
                    {
                        "Elapsed": int(a.uptime_s()),
                        "GHS 5s": round(ghs, 2),
                        "GHS av": round(ghs, 2),
                        "Accepted": 0,
                        "Rejected": 0,
                        "Hardware Errors": 0,
                    }
                ],
                "id": 1,
            }
        if cmd == "stats" and self.minimal:
            return {
                "STATUS": _status(70, "CGMiner stats"),
                "STATS": [{"CGMiner": "4.11.1", "Miner": "sim", "Type": a.spec.model},
                          {"STATS": 0, "ID": "sim0", "Elapsed": int(a.uptime_s())}],
                "id": 1,
            }
        if cmd == "stats":
            t = a.temp_c()
            return {
                "STATUS": _status(70, "CGMiner stats"),
                "STATS": [
                    {"CGMiner": "4.11.1", "Miner": "sim", "Type": a.spec.model},
                    {
                        "Elapsed": int(a.uptime_s()),
                        "fan1": 3000,
                        "fan2": 3000,
                        "temp_chip1": round(t + 10, 1),
                        "temp_chip2": round(t + 10, 1),
                        "temp1": round(t, 1),
                        "temp2": round(t, 1),
                        "chain_acn1": 76,
                        "chain_acn2": 76,
                        "chain_acn3": 76,
                        "chain_rate1": round(a.hashrate_ths() * 1000 / 3, 2),
                    },
                ],
                "id": 1,
            }
        if cmd == "version":
            return {
                "STATUS": _status(22, "CGMiner versions"),
                "VERSION": [{"CGMiner": "4.11.1", "API": "3.7", "Type": a.spec.model}],
                "id": 1,
            }
        if cmd in ("devs", "pools"):
            return {"STATUS": _status(9, cmd), cmd.upper(): [], "id": 1}
        if cmd in ("restart", "quit", "ascset", "pgaset", "switchpool", "addpool"):
            return {"STATUS": _status(45, f"Access denied to '{cmd}' command", "E"), "id": 1}
        return {"STATUS": _status(14, "Invalid command", "E"), "id": 1}


class LuxosServer(CgminerServer):
    """LuxOS-style 4028 API with sessions, profiles, ATM and curtail."""

    firmware = "LUXminer 2025.1"

    def __init__(self, asic: SimAsic, host: str = "127.0.0.1", port: int = 0, *,
                 minimal: bool = False) -> None:
        super().__init__(asic, host, port, minimal=minimal)
        self.session_id = ""
        self._session_used = 0.0
        self.atm_enabled = True

    def _session_ok(self, sid: str) -> bool:
        now = self.asic.clock.now()
        if self.session_id and now - self._session_used > SESSION_IDLE_S:
            self.session_id = ""
        if sid and sid == self.session_id:
            self._session_used = now
            return True
        return False

    def dispatch(self, cmd: str, param: str) -> dict[str, Any]:
        a = self.asic
        parts = param.split(",") if param else []
        sid = parts[0] if parts else ""
        if cmd == "version":
            return {
                "STATUS": _status(22, "versions"),
                "VERSION": [{"LUXminer": "2025.1.1", "API": "3.7", "Type": a.spec.model}],
                "id": 1,
            }
        if cmd == "logon":
            self._session_ok("")  # expire an idle session
            if self.session_id:
                return {"STATUS": _status(310, "Another session is active", "E"), "id": 1}
            self.session_id = secrets.token_hex(4)
            self._session_used = a.clock.now()
            return {
                "STATUS": _status(316, "Session created"),
                "SESSION": [{"SessionID": self.session_id}],
                "id": 1,
            }
        if cmd == "session":
            self._session_ok("")
            return {
                "STATUS": _status(315, "Session"),
                "SESSION": [{"SessionID": self.session_id}],
                "id": 1,
            }
        if cmd == "logoff":
            if self._session_ok(sid):
                self.session_id = ""
                return {"STATUS": _status(317, "Session closed"), "id": 1}
            return {"STATUS": _status(312, "Invalid session id", "E"), "id": 1}
        if cmd == "power":
            return {
                "STATUS": _status(320, "Power"),
                "POWER": [{"Watts": round(a.reported_power_w(), 1), "PSU": True}],
                "id": 1,
            }
        if cmd == "profiles":
            return {
                "STATUS": _status(327, "Profiles"),
                "PROFILES": [
                    {
                        "Profile Name": lv.name,
                        "Watts": lv.watts,
                        "Hashrate": lv.ths,
                        "IsTuned": True,
                        "Frequency": 0,
                        "Voltage": 0.0,
                    }
                    for lv in a.levels()
                ],
                "id": 1,
            }
        if cmd == "config" and self.minimal:
            return {"STATUS": _status(14, "Invalid command", "E"), "id": 1}
        if cmd == "config":
            lvl = a.reported_level()
            return {
                "STATUS": _status(33, "Config"),
                "CONFIG": [
                    {
                        "Profile": a.level_name(lvl) if a.spec.presets else "default",
                        "IsAtmEnabled": self.atm_enabled,
                        "CurtailMode": "sleep" if a.reported_sleep() else "None",
                    }
                ],
                "id": 1,
            }
        if cmd == "atm":
            return {"STATUS": _status(339, "ATM"), "ATM": [{"Enabled": self.atm_enabled}], "id": 1}
        if cmd in ("atmset", "profileset", "curtail", "reboot"):
            if not self._session_ok(sid):
                return {"STATUS": _status(312, "Invalid session id", "E"), "id": 1}
            return self._write(cmd, parts[1:])
        return super().dispatch(cmd, param)

    def _write(self, cmd: str, args: list[str]) -> dict[str, Any]:
        a = self.asic
        if cmd == "atmset":
            for kv in args:
                k, _, v = kv.partition("=")
                if k == "enabled":
                    self.atm_enabled = v.lower() == "true"
            return {"STATUS": _status(340, "ATM set"), "id": 1}
        if cmd == "profileset":
            if self.atm_enabled:
                return {
                    "STATUS": _status(14, "Cannot set profile while ATM is enabled", "E"),
                    "id": 1,
                }
            if a.reported_sleep():
                return {"STATUS": _status(14, "Cannot set profile while curtailed", "E"), "id": 1}
            names = [lv.name for lv in a.levels()]
            name = args[0] if args else ""
            if name not in names:
                return {"STATUS": _status(14, f"Unknown profile {name}", "E"), "id": 1}
            a.set_level(names.index(name))
            return {
                "STATUS": _status(321, "Profile Set"),
                "PROFILE": [{"Board": 0, "Profile": name}],
                "id": 1,
            }
        if cmd == "curtail":
            action = args[0] if args else ""
            if action not in ("sleep", "wakeup"):
                return {"STATUS": _status(14, "Invalid curtail action", "E"), "id": 1}
            a.set_sleep(action == "sleep")
            return {
                "STATUS": _status(335, "Curtailment command sent"),
                "CURTAIL": [{"Action": "sleep mode" if action == "sleep" else "wake up"}],
                "id": 1,
            }
        if a.reported_sleep():
            return {"STATUS": _status(14, "Cannot reboot while curtailed", "E"), "id": 1}
        a.reboot()
        return {"STATUS": _status(343, "Reboot"), "id": 1}


def wm3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    """Whatsminer API v3 command token (docs/FLEET.md §1)."""
    digest = hashlib.sha256(f"{cmd}{password}{salt}{ts}".encode()).digest()
    return base64.b64encode(digest).decode()[:8]


class WhatsminerV3Server(_TcpServer):
    """Whatsminer API v3: length-prefixed JSON, salted token for writes."""

    MAX_FRAME = 1 << 16

    def __init__(self, asic: SimAsic, host: str = "127.0.0.1", port: int = 0, *,
                 minimal: bool = False) -> None:
        super().__init__(asic, host, port, minimal=minimal)
        self.salt = secrets.token_hex(4)

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            head = await reader.readexactly(4)
            (n,) = struct.unpack("<I", head)
            if n > self.MAX_FRAME:
                return
            body = await reader.readexactly(n)
            try:
                req = json.loads(body)
                reply = self.dispatch(req) if isinstance(req, dict) else self._err(-1, "bad")
            except ValueError:
                reply = self._err(-1, "invalid json")
            # Faults apply to the JSON inside a well-formed frame (a garbled body, or silence).
            data = await self.maybe_fault(json.dumps(reply).encode())
            if data is None:
                return
            writer.write(struct.pack("<I", len(data)) + data)
            await writer.drain()

    @staticmethod
    def _err(code: int, msg: str, cmd: str = "") -> dict[str, Any]:
        return {"code": code, "when": 0, "msg": msg, "desc": cmd}

    def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        a = self.asic
        cmd = str(req.get("cmd", ""))
        when = int(a.clock.wall())
        if cmd == "get.device.info":
            if req.get("param") == "salt":
                return {"code": 0, "when": when, "msg": {"salt": self.salt}, "desc": cmd}
            return {
                "code": 0,
                "when": when,
                "desc": cmd,
                "msg": {
                    "miner": {
                        "type": a.spec.model,
                        "fw-version": "20250101.00.REL",
                        "power-limit-set": int(a.reported_target_w()),
                    },
                    "power": {"type": "P222B", "mode": "normal"},
                },
            }
        if cmd == "get.miner.status":
            sections = str(req.get("param") or "").split("+")
            msg: dict[str, Any] = {}
            if "summary" in sections:
                msg["summary"] = self._summary()
            if "pools" in sections:
                msg["pools"] = [{"id": 1, "url": a.pool[0], "account": a.pool[1]}]
            if "edevs" in sections:
                msg["edevs"] = []
            return {"code": 0, "when": when, "desc": cmd, "msg": msg}
        if cmd == "get.miner.setting":
            return {
                "code": 0,
                "when": when,
                "desc": cmd,
                "msg": {
                    "power-limit": int(a.reported_target_w()),
                    "service": "stop" if a.reported_sleep() else "start",
                },
            }
        if cmd.startswith("set."):
            return self._write(cmd, req)
        return self._err(-1, "invalid command", cmd)

    def _summary(self) -> dict[str, Any]:
        a = self.asic
        summary: dict[str, Any] = {
            "hash-realtime": round(a.hashrate_ths(), 3),
            "power-realtime": round(a.reported_power_w(), 1),
            "power-limit": int(a.reported_target_w()),
        }
        if not self.minimal:
            t = a.temp_c()
            summary |= {
                "elapsed": int(a.uptime_s()),
                "bootup-time": int(a.uptime_s()),
                "board-temperature": [round(t, 1)] * 3,
                "chip-temp-max": round(t + 10, 1),
                "fan-speed-in": 4000,
                "fan-speed-out": 4000,
                "up-freq-finish": 1,
            }
        return summary

    def _write(self, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        a = self.asic
        ts = req.get("ts")
        if (
            req.get("account") != "super"
            or not isinstance(ts, int)
            or req.get("token") != (wm3_token(cmd, a.password, self.salt, ts))
        ):
            return self._err(-2, "invalid token", cmd)
        param = req.get("param")
        if cmd == "set.miner.power_limit":
            if isinstance(param, bool) or not isinstance(param, int | float):
                return self._err(-1, "invalid param", cmd)
            a.set_power_target(float(param))
            return {"code": 0, "when": ts, "msg": "ok", "desc": cmd}
        if cmd == "set.miner.service":
            if param not in ("start", "stop", "restart"):
                return self._err(-1, "invalid param", cmd)
            if param != "restart":
                a.set_sleep(param == "stop")
            return {"code": 0, "when": ts, "msg": "ok", "desc": cmd}
        if cmd == "set.system.reboot":
            a.reboot()
            return {"code": 0, "when": ts, "msg": "ok", "desc": cmd}
        if cmd == "set.miner.pools":
            a.pool = (str(param), "")
            return {"code": 0, "when": ts, "msg": "ok", "desc": cmd}
        return self._err(-1, "invalid command", cmd)


def server_for(asic: SimAsic, host: str = "127.0.0.1", port: int = 0, *,
               minimal: bool = False) -> _TcpServer:
    """The TCP server matching the asic's firmware (braiins is HTTP: see firmware_rest);
    `minimal` serves the documented minimum only (module docstring)."""
    fw = asic.spec.firmware
    if fw == "luxos":
        return LuxosServer(asic, host, port, minimal=minimal)
    if fw == "whatsminer":
        return WhatsminerV3Server(asic, host, port, minimal=minimal)
    if fw == "cgminer":
        return CgminerServer(asic, host, port, minimal=minimal)
    raise ValueError(f"no TCP server for firmware {fw!r}")


__all__ = ["CgminerServer", "LuxosServer", "WhatsminerV3Server", "server_for", "wm3_token"]
