"""One monitor replica on its own in-memory bus, with a clock the test moves (tests/service/test_monitor*.py)."""
from __future__ import annotations

from services.monitor.main import MonitorSettings, build, dependencies
from x0tta6bl4.bus.memory import TestBus

T0 = 1_700_000_000 * 10**9


class Clock:
    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


class MonitorOnBus:
    """One monitor replica on its own in-memory bus."""

    def __init__(self, tmp_path, **settings) -> None:
        # staleness is judged at once here; the hold before a silent node is marked (the mass-silence guard)
        # has tests of its own (test_monitor_mass_silence.py)
        settings.setdefault("silence_hold_s", 0.0)
        s = MonitorSettings(data_dir=tmp_path, monitor_collector="off", discover_hosts=False, **settings)
        self.clock = Clock()
        self.deps = dependencies(s, clock_ns=self.clock)
        self.bus = TestBus(build(s, self.deps))
