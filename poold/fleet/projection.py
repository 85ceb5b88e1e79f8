"""Projection: what each miner draws and will draw, the number every cap is checked against.

Per miner: stale or unknown → the worst of nameplate, `max_w`, last measured and commanded;
within a command's settle window → the commanded power for a decrease, max(measured,
commanded) for an increase; otherwise measured, raised to what its hashrate needs (firmware
figure, or the pool's share rate) when the reported watts are implausibly low.

`Topology` is the site's tree (site → containers → racks → miners); `Projection.node_power`
sums the per-miner figures up it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from poold.fleet.inventory import FleetConfig
from poold.fleet.state import MinerState


class Topology:
    """Which miners are in each rack, which racks in each container, what is under the site."""

    def __init__(self, cfg: FleetConfig, miners: Mapping[str, MinerState]) -> None:
        self.site = cfg.site
        self.rack_miners: dict[str, list[MinerState]] = {r.id: [] for r in cfg.racks}
        for m in miners.values():
            self.rack_miners[m.spec.rack].append(m)
        self.container_racks: dict[str, list[str]] = {c.id: [] for c in cfg.containers}
        bare: list[str] = []  # container-less racks
        for r in cfg.racks:
            if r.container is None:
                bare.append(r.id)
            else:
                self.container_racks[r.container].append(r.id)
        #: Children of the site: containers, then container-less racks.
        self.top: list[str] = [c.id for c in cfg.containers] + bare

    def racks_under(self, node: str) -> list[str]:
        if node == self.site:
            return list(self.rack_miners)
        return self.container_racks.get(node, [node])

    def miners_under(self, node: str) -> list[MinerState]:
        return [m for r in self.racks_under(node) for m in self.rack_miners[r]]


def blind(m: MinerState, now: float, stale_after_s: float) -> bool:
    """No fresh telemetry: the controller cannot see what this miner draws."""
    return m.health.stale(now, stale_after_s)


def projected_w(m: MinerState, now: float, stale_after_s: float) -> float:
    h = m.health
    t = h.telemetry
    measured = None if t is None else t.power_w
    if measured is None and t is not None and m.caps is not None and m.caps.read_only:
        measured = m.spec.nameplate_w  # no watt read-back (stock S19): nameplate
    if h.stale(now, stale_after_s) or measured is None:
        return max(m.worst_w, measured or 0.0, m.commanded_w or 0.0)
    if h.implied_w is not None:
        measured = max(measured, h.implied_w)  # it says less than its hashrate needs
    cw = m.commanded_w
    if cw is not None and (now < m.settle_until or h.received_at < m.settle_until):
        return cw if cw < measured else max(measured, cw)
    return measured


def metered_w(m: MinerState, now: float, stale_after_s: float) -> float:
    """What the miner's own meter says it draws now, without credit for a command that has
    not settled: fresh → measured (raised to what its hashrate needs when implausibly low);
    blind → its worst case. The series an operator sees and the breach clock run on this."""
    h = m.health
    t = h.telemetry
    measured = None if t is None else t.power_w
    if measured is None and t is not None and m.caps is not None and m.caps.read_only:
        measured = m.spec.nameplate_w
    if h.stale(now, stale_after_s) or measured is None:
        return max(m.worst_w, measured or 0.0, m.commanded_w or 0.0)
    if h.implied_w is not None:
        measured = max(measured, h.implied_w)
    return measured


class Projection:
    """Per-miner and per-node projected watts for one site."""

    def __init__(self, cfg: FleetConfig, topology: Topology) -> None:
        self.cfg = cfg
        self.topo = topology

    def miner_w(self, m: MinerState, now: float) -> float:
        return projected_w(m, now, self.cfg.stale_after_s)

    def metered_w(self, m: MinerState, now: float) -> float:
        return metered_w(m, now, self.cfg.stale_after_s)

    def node_power(self, now: float) -> dict[str, float]:
        """Projected watts of every node (commands in flight counted as they will settle)."""
        return self._sum(lambda m: self.miner_w(m, now))

    def node_metered(self, now: float) -> dict[str, float]:
        """Metered watts of every node (blind miners at their worst case)."""
        return self._sum(lambda m: self.metered_w(m, now))

    def _sum(self, per_miner: Callable[[MinerState], float]) -> dict[str, float]:
        topo = self.topo
        rack_w = {rid: sum(per_miner(m) for m in ms) for rid, ms in topo.rack_miners.items()}
        out = dict(rack_w)
        for cid, rids in topo.container_racks.items():
            out[cid] = sum(rack_w[r] for r in rids)
        out[topo.site] = sum(rack_w.values())
        return out
