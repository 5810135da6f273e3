"""The knowledge base: repair outcomes aggregated per (fault type, action).

Answers "which action recovers this fault fastest and most reliably". Pure
functions over JSON-serialisable stats; the planner keeps them in the
``knowledge`` key-value bucket (key ``<fault>.<action>``).

An outcome is counted once per action: the stats remember the ids of the last
:data:`RECENT_ACTIONS` actions they counted, so a verification handled twice (a
redelivery after a failure later in the handler, a second verification of the
same action) leaves them as they are.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

RECENT_ACTIONS = 256


@dataclass
class ActionStats:
    fault_type: str
    action: str
    attempts: int = 0
    successes: int = 0
    total_mttr_ms: float = 0.0
    best_mttr_ms: float = 0.0
    last_topology_size: int = 0
    recent_actions: list[str] = field(default_factory=list)    # ids of the last actions counted, oldest first

    @property
    def success_rate(self) -> float:
        # Laplace-smoothed so one lucky success does not beat a long record
        return (self.successes + 1) / (self.attempts + 2)

    @property
    def mean_mttr_ms(self) -> float:
        return self.total_mttr_ms / self.successes if self.successes else float("inf")

    def counted(self, action_id: str) -> bool:
        """Whether the outcome of ``action_id`` is already in these stats."""
        return bool(action_id) and action_id in self.recent_actions

    def record(self, success: bool, mttr_ms: float, topology_size: int = 0, action_id: str = "") -> ActionStats:
        """Count one outcome (nothing when ``action_id``'s is counted already)."""
        if self.counted(action_id):
            return self
        if action_id:
            self.recent_actions = [*self.recent_actions, action_id][-RECENT_ACTIONS:]
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
        doc = json.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})    # a newer writer's fields are skipped


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
