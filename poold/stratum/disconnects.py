"""Why a Stratum connection ended: one bounded set of reasons, counted, and loud when one spikes.

`Disconnect` names every way a connection ends or is refused; the member name is the `reason`
label of `poold_stratum_disconnects_total` (README, Metrics). `DisconnectLog` counts them in plain
ints (flushed into Prometheus by the server's sweep) and, once a sweep, tells whether a reason
other than the client closing its side has spiked: at least `spike_min` in the last `window_s`
and at least `spike_fraction` of the connections open. It then logs one WARNING per reason per
`warn_every_s`, so a burst of thousands of disconnects is one line naming the reason and the
count, not thousands of lines. No I/O besides logging; the caller passes the time.
"""

from __future__ import annotations

import enum
import logging
from collections import deque

log = logging.getLogger("poold.stratum.server")


class Disconnect(enum.Enum):
    """Every reason a connection ends (or is refused at accept); value = the operator's words."""

    line_too_long = "line too long"
    subscribe_timeout = "not subscribed and authorized in time"
    idle = "idle: no share in time"
    invalid_shares = "too many invalid shares in a row"
    rate_limit = "message rate limit exceeded"
    slow_reader = "write buffer full (slow reader)"
    banned = "source address banned after repeated kicks"
    ip_limit = "too many connections from one address"
    server_full = "server full (connections, extranonce space or descriptors)"
    shutdown = "pool shutting down"
    client_closed = "client closed the connection"


_REASONS = tuple(Disconnect)


class DisconnectLog:
    """Counts per reason (`counts`), and the spike WARNING."""

    def __init__(self, *, window_s: float = 60.0, spike_min: int = 20,
                 spike_fraction: float = 0.01, warn_every_s: float = 60.0) -> None:
        self.window_s = window_s
        self.spike_min = spike_min
        self.spike_fraction = spike_fraction
        self.warn_every_s = warn_every_s
        self.counts: dict[Disconnect, int] = dict.fromkeys(_REASONS, 0)
        # (time, counts at that time) one per sweep, over window_s
        self._samples: deque[tuple[float, dict[Disconnect, int]]] = deque()
        self._warned_at: dict[Disconnect, float] = {}

    def count(self, reason: Disconnect) -> None:
        self.counts[reason] += 1

    def by_label(self) -> dict[str, int]:
        return {r.name: n for r, n in self.counts.items() if n}

    def check(self, now: float, open_connections: int) -> list[tuple[Disconnect, int]]:
        """Once a sweep: the (reason, count in the window) that spiked and were logged now."""
        samples = self._samples
        samples.append((now, dict(self.counts)))
        while len(samples) > 1 and now - samples[0][0] > self.window_s:
            samples.popleft()
        first = samples[0][1]
        threshold = max(self.spike_min, int(self.spike_fraction * open_connections))
        warned: list[tuple[Disconnect, int]] = []
        for reason in _REASONS:
            if reason is Disconnect.client_closed:
                continue
            recent = self.counts[reason] - first[reason]
            if recent < threshold:
                continue
            last = self._warned_at.get(reason)
            if last is not None and now - last < self.warn_every_s:
                continue
            self._warned_at[reason] = now
            log.warning("%d Stratum connections ended in the last %.0f s: %s "
                        "(poold_stratum_disconnects_total{reason=%r})",
                        recent, min(self.window_s, now - samples[0][0]), reason.value,
                        reason.name)
            warned.append((reason, recent))
        return warned
