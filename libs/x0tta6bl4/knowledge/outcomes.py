"""The knowledge base: repair outcomes aggregated per (fault type, action).

Answers "which action recovers this fault fastest and most reliably". Pure
functions over JSON-serialisable stats; the planner keeps them in the
``knowledge`` key-value bucket (key ``<fault>.<action>``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class ActionStats:
    fault_type: str
    action: str
    attempts: int = 0
    successes: int = 0
    total_mttr_ms: float = 0.0
    best_mttr_ms: float = 0.0
    last_topology_size: int = 0

    @property
    def success_rate(self) -> float:
        # Laplace-smoothed so one lucky success does not beat a long record
        return (self.successes + 1) / (self.attempts + 2)

    @property
    def mean_mttr_ms(self) -> float:
        return self.total_mttr_ms / self.successes if self.successes else float("inf")

    def record(self, success: bool, mttr_ms: float, topology_size: int = 0) -> ActionStats:
        self.attempts += 1
        if success:
            self.successes += 1
            self.total_mttr_ms += mttr_ms
            self.best_mttr_ms = mttr_ms if not self.best_mttr_ms else min(self.best_mttr_ms, mttr_ms)
        self.last_topology_size = topology_size or self.last_topology_size
        return self

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ActionStats:
        return cls(**json.loads(data))


def key(fault_type: str, action: str) -> str:
    return f"{fault_type}.{action}".replace(" ", "_")


def rank(candidates: list[str], stats: dict[str, ActionStats]) -> list[str]:
    """Order candidate actions: most reliable first, then fastest; unseen keep the default order."""
    def score(item: tuple[int, str]):
        i, action = item
        s = stats.get(action)
        if s is None or s.attempts == 0:
            return (0.5, float("inf"), i)
        return (1 - s.success_rate, s.mean_mttr_ms, i)
    return [a for _, a in sorted(enumerate(candidates), key=score)]
