"""Injected time source. The domain never reads the system clock itself."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything callable with no arguments returning seconds as a float
    (e.g. ``time.time`` in production)."""

    def __call__(self) -> float: ...


class ManualClock:
    """A controllable clock for tests and simulations."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"clock can only advance by a finite non-negative amount, got {seconds!r}")
        self._now += seconds
        return self._now

    def set(self, now: float) -> float:
        if not math.isfinite(now) or now < self._now:
            raise ValueError(f"clock cannot go backwards from {self._now!r} to {now!r}")
        self._now = float(now)
        return self._now
