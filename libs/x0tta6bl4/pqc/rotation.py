"""Key rotation for node identities (pure domain logic, clock injected).

States of a key generation: ``active`` -> ``retiring`` (still accepted until
its overlap deadline) -> ``retired`` (private keys dropped, only ids kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .backend import Backend
from .identity import DEFAULT_VALIDITY_SECONDS, NodeIdentity

__all__ = ["DEFAULT_OVERLAP_SECONDS", "Keyring", "RetiredGeneration"]

DEFAULT_OVERLAP_SECONDS = 24 * 3600
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetiredGeneration:
    generation: int
    signing_key_id: str
    kem_key_id: str
    retired_at: int


class Keyring:
    """The current identity plus at most one retiring generation."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        clock: Clock = time.time,
        overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
        validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
        backend: Backend | None = None,
    ) -> None:
        self.current = identity
        self.retiring: NodeIdentity | None = None
        self.retiring_deadline: int | None = None
        self.retired: list[RetiredGeneration] = []
        self._clock = clock
        self.overlap_seconds = int(overlap_seconds)
        self.validity_seconds = int(validity_seconds)
        self._backend = backend

    def __repr__(self) -> str:
        r = f" retiring=gen{self.retiring.generation}@{self.retiring_deadline}" if self.retiring else ""
        return f"<Keyring {self.current.uri} active=gen{self.current.generation}{r} retired={len(self.retired)}>"

    def rotate(self) -> NodeIdentity:
        """Create the next generation; the current one becomes ``retiring``.

        A generation that is still retiring is retired immediately (only one
        overlap window at a time).
        """
        now = self._clock()
        self.tick()
        if self.retiring is not None:
            self._retire(int(now))
        sid = self.current.spiffe_id
        new = NodeIdentity.generate(
            sid.trust_domain, sid.node_id, now=now, validity_seconds=self.validity_seconds,
            generation=self.current.generation + 1, backend=self._backend,
        )
        self.retiring, self.retiring_deadline = self.current, int(now) + self.overlap_seconds
        self.current = new
        return new

    def tick(self) -> list[RetiredGeneration]:
        """Retire the retiring generation once its overlap deadline passed."""
        now = self._clock()
        if self.retiring is not None and self.retiring_deadline is not None and now >= self.retiring_deadline:
            return [self._retire(int(now))]
        return []

    def _retire(self, now: int) -> RetiredGeneration:
        old = self.retiring
        assert old is not None
        rec = RetiredGeneration(old.generation, old.signing.key_id, old.kem.key_id, now)
        self.retired.append(rec)
        self.retiring, self.retiring_deadline = None, None
        return rec

    def active_identities(self) -> list[NodeIdentity]:
        """Generations whose keys are still accepted now (current first)."""
        self.tick()
        return [self.current] + ([self.retiring] if self.retiring is not None else [])

    def find_kem(self, key_id: str) -> NodeIdentity | None:
        """Identity whose KEM key has ``key_id`` and is still usable (for decapsulation)."""
        for ident in self.active_identities():
            if ident.kem.key_id == key_id:
                return ident
        return None

    def state_of(self, generation: int) -> str:
        """``active``, ``retiring``, ``retired`` or ``unknown``."""
        self.tick()
        if generation == self.current.generation:
            return "active"
        if self.retiring is not None and generation == self.retiring.generation:
            return "retiring"
        if any(r.generation == generation for r in self.retired):
            return "retired"
        return "unknown"
