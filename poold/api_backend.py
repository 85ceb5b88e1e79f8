"""The admin API's backend (`poold.api.ApiBackend`) over a running daemon: the pool, the ledger
and the fleet controller. /readyz's checks and their reasons are decided here."""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import TYPE_CHECKING, Any

from poold.api import ApiError

if TYPE_CHECKING:
    from poold.fleet.runtime import FleetRuntime
    from poold.pool import Pool

TEMPLATE_STALE_FACTOR = 3.0  # /readyz: a template older than 3 fee refreshes is not fresh


def _jsonable(value: Any) -> Any:
    """Dataclasses, enums, bytes and tuples as JSON-ready values (bytes as hex)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


class DaemonBackend:
    """`poold.api.ApiBackend` over the pool, the ledger and the fleet controller. Fleet
    endpoints answer 404 without a `[fleet]` table (or in a worker process that does not run
    the controller: `fleet_elsewhere`)."""

    def __init__(self, pool: Pool, ledger: Any | None = None, fleet: FleetRuntime | None = None,
                 *, fleet_elsewhere: bool = False, refresh_s: float = 30.0) -> None:
        self.pool_ = pool
        self.ledger = ledger
        self.fleet = fleet
        self.fleet_elsewhere = fleet_elsewhere
        self.fleet_failed = False
        self.refresh_s = refresh_s
        self.peers: Any | None = None  # poold.supervisor.PeerStatus under --processes
        self.started = time.time()

    def readiness(self) -> dict[str, bool]:
        server = self.pool_.server
        latest = self.pool_.nodes.latest
        checks = {
            "nodes": self.pool_.nodes.healthy(),
            "template": server.ctx.engine.book.template is not None,
            # Fresh: refreshed for fees every templates.refresh_s; three missed refreshes is stale.
            "template_fresh": latest is not None
            and time.time() - latest.received_at < TEMPLATE_STALE_FACTOR * self.refresh_s,
            "stratum": bool(server.addresses) and not server.closing,
        }
        if self.pool_.planning is not None:
            checks["payout_plan"] = self.pool_.planning.healthy
        if self.ledger is not None:
            checks["ledger"] = bool(self.ledger.writable)
        if self.fleet is not None:
            checks["fleet"] = not self.fleet_failed
            for node in self.fleet.unverified():
                checks[f"fleet_under_cap:{node}"] = False  # not shown under its cap
        if self.peers is not None:
            checks["workers"] = not self.peers.down
        return checks

    def readiness_reasons(self) -> dict[str, str]:
        """Why a failed check fails, where known (/readyz `reasons`)."""
        reasons = {}
        if self.ledger is not None and not self.ledger.writable:
            reasons["ledger"] = str(self.ledger.unwritable_reason)
        if self.peers is not None and self.peers.down:
            reasons["workers"] = self.peers.reason
        return reasons

    def pool(self) -> dict[str, Any]:
        server = self.pool_.server
        book = server.ctx.engine.book
        t = book.template
        counters = server.ctx.counters
        return {
            "stratum": server.addresses,
            "connections": len(server.connections),
            "hashrate_hs": server.hashrate,
            "shares": {
                "accepted": counters.accepted,
                "rejected": {r.name: n for r, n in counters.by_reason().items() if n},
            },
            "template": None if t is None else {
                "height": t.height, "prevhash": t.prevhash_hex, "transactions": len(t.transactions),
                "coinbase_value": t.coinbase_value, "age_s": max(0.0, time.time() - t.received_at),
            },
            "jobs": len(book.jobs),
            "blocks_submitted": [_jsonable(o) for o in server.block_outcomes[-10:]],
            "nodes": [_jsonable(st) for st in self.pool_.nodes.status()],
            "uptime_s": time.time() - self.started,
        }

    def workers(self) -> list[dict[str, Any]]:
        return self.pool_.server.workers()

    async def blocks(self, since: float | None) -> list[dict[str, Any]]:
        if self.ledger is None:
            return []
        rows: list[dict[str, Any]] = await self.ledger.audit_blocks(since)
        return rows

    async def public_windows(self, since: float | None) -> list[dict[str, Any]]:
        rows = None if self.ledger is None else await self.ledger.public_windows(since)
        if rows is None:
            raise ApiError(404, "not published", "api.public_windows is off")
        return list(rows)

    async def energy(self, start: float, end: float) -> dict[str, Any]:
        if self.ledger is None:
            raise ApiError(404, "no ledger in this daemon")
        # Telemetry not yet metered, then what the meter holds, is committed first, so the
        # answer reaches up to now.
        if self.fleet is not None:
            await self.fleet.push_power(self.ledger)
        await self.ledger.flush_energy()
        report = await self.ledger.energy_report(start, end)
        out: dict[str, Any] = dict(report.as_dict())
        return out

    def _fleet(self) -> FleetRuntime:
        if self.fleet is not None:
            return self.fleet
        from poold.api import ApiError

        if self.fleet_elsewhere:
            raise ApiError(404, "the fleet controller runs in worker process 0 (its API port)")
        raise ApiError(404, "no fleet configured in this daemon")

    def racks(self) -> list[dict[str, Any]]:
        return self._fleet().racks()

    def miners(self, rack: str | None) -> list[dict[str, Any]]:
        return self._fleet().miners(rack)

    def budgets(self) -> dict[str, Any]:
        return self._fleet().budgets()

    async def set_cap(self, scope: str, kw: float) -> dict[str, Any]:
        return await self._fleet().set_cap(scope, kw)

    async def curtail(self, rack: str) -> dict[str, Any]:
        return await self._fleet().curtail(rack)

    async def restore(self, rack: str) -> dict[str, Any]:
        return await self._fleet().restore(rack)

    async def clear_miner(self, miner: str) -> dict[str, Any]:
        return await self._fleet().clear_miner(miner)

    async def grid_signal(self, cap_kw: float | None, ttl_s: float | None) -> dict[str, Any]:
        return await self._fleet().grid_signal(cap_kw, ttl_s)

    async def reconnect_worker(self, worker: str) -> dict[str, Any]:
        n = self.pool_.server.reconnect_worker(worker)
        if n == 0:
            raise ApiError(404, "no connected session for this worker", worker)
        return {"worker": worker, "reconnected": n}
