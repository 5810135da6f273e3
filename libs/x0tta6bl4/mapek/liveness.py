"""Liveness judged against what the monitor has read (no I/O).

A node is silent when its newest report is older than ``stale_after`` - older than what? Not the wall
clock: a monitor whose consumer is behind has simply not read the reports sent in the last seconds, and
judging by the wall clock would declare healthy nodes dead (each false death starts a cycle and slows the
monitor further). Silence is measured against the monitor's *horizon*: how far in time it has read.

- :class:`Lag` estimates the horizon: while the telemetry consumer has messages waiting (``pending``,
  from the broker), the horizon is the wall clock minus the median delay (processing time minus the
  report's stamp) of the reports handled since the last estimate - the median, so a few nodes with a
  skewed clock cannot move it; when nothing is waiting the monitor is caught up and the horizon is now.
  While messages wait and none were handled, the horizon stays where it was (a stuck monitor judges
  nobody).
- :class:`Deadlines` finds the nodes whose silence passed the horizon without scanning every node on
  every tick: a heap of (newest report + stale_after, node), stale entries dropped lazily.
"""
from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass, field


@dataclass
class Lag:
    """How far behind the monitor's telemetry consumer is; see the module docstring."""

    horizon_ns: int = 0          # read up to here (0: not estimated yet -> the wall clock)
    lag_s: float = 0.0           # now - horizon at the last estimate
    pending: int | None = None   # messages waiting for the consumer at the last estimate (None: unknown)
    _delays: list[int] = field(default_factory=list)

    def handled(self, report_ts_ns: int, now_ns: int) -> None:
        """A report stamped ``report_ts_ns`` was handled at ``now_ns``."""
        if len(self._delays) < 100_000:
            self._delays.append(max(0, now_ns - report_ts_ns))

    def estimate(self, now_ns: int, pending: int | None) -> int:
        """The horizon now, given the consumer's ``pending`` messages (None: unknown -> judged by the
        handled reports alone). Returns it (also kept in ``horizon_ns``)."""
        delays, self._delays = self._delays, []
        self.pending = pending
        if pending == 0 or (pending is None and not delays):
            horizon = now_ns
        elif delays:
            horizon = now_ns - int(statistics.median(delays))
        else:
            horizon = self.horizon_ns or now_ns   # messages wait, none handled: judge nobody anew
        self.horizon_ns = max(self.horizon_ns, min(horizon, now_ns))
        self.lag_s = (now_ns - self.horizon_ns) / 1e9
        return self.horizon_ns

    def horizon(self, now_ns: int) -> int:
        """The horizon to judge silence against (the wall clock before the first estimate)."""
        return min(self.horizon_ns, now_ns) if self.horizon_ns else now_ns


@dataclass
class Deadlines:
    """Per node, when its silence becomes staleness; :meth:`due` pops the nodes past a horizon."""

    _heap: list[tuple[int, str]] = field(default_factory=list)
    _latest: dict[str, int] = field(default_factory=dict)     # node -> its current deadline

    def touch(self, node: str, deadline_ns: int) -> None:
        """``node`` is silent after ``deadline_ns`` (its newest report + stale_after)."""
        if self._latest.get(node) == deadline_ns:
            return
        self._latest[node] = deadline_ns
        heapq.heappush(self._heap, (deadline_ns, node))
        if len(self._heap) > 4 * len(self._latest) + 1024:     # many superseded entries: rebuild
            self._heap = [(d, n) for n, d in self._latest.items()]
            heapq.heapify(self._heap)

    def forget(self, node: str) -> None:
        self._latest.pop(node, None)

    def due(self, horizon_ns: int) -> list[str]:
        """Nodes whose current deadline is before ``horizon_ns``, each once (forgotten until touched)."""
        out = []
        while self._heap and self._heap[0][0] < horizon_ns:
            deadline, node = heapq.heappop(self._heap)
            if self._latest.get(node) == deadline:
                del self._latest[node]
                out.append(node)
        return out

    def __len__(self) -> int:
        return len(self._latest)
