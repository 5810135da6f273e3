"""Shared harness for governance tests: a real engine, a manual clock and a
real (HMAC-SHA256) signature scheme standing in for ML-DSA."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest

from x0tta6bl4.governance import (
    Action,
    ActionKind,
    GovernanceEngine,
    ManualClock,
    Proposal,
    VoteResult,
    vote_signing_payload,
)

T0 = 1_000_000.0


def node(i: int | str) -> str:
    return f"spiffe://x0tta6bl4.mesh/node/node-{i}"


class Harness:
    T0 = T0
    node = staticmethod(node)

    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.keys: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self.engine = GovernanceEngine(self.verify, self.clock, id_factory=lambda: f"prop-{next(self._ids)}")
        self.log: list = []   # every event returned by a command, in order (the "stream")

    # -- signature scheme (per-voter secret key) --
    def verify(self, voter: str, payload: bytes, signature: bytes) -> bool:
        key = self.keys.get(voter)
        return key is not None and hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), signature)

    def sign(self, voter: str, payload: bytes) -> bytes:
        key = self.keys.setdefault(voter, hashlib.sha256(voter.encode()).digest())
        return hmac.new(key, payload, hashlib.sha256).digest()

    def fresh_nonce(self) -> bytes:
        return next(self._nonces).to_bytes(16, "big")

    # -- commands that record the stream --
    def register(self, voter: str, balance: float) -> None:
        self.keys.setdefault(voter, hashlib.sha256(voter.encode()).digest())
        self.log += self.engine.register_voter(voter, balance)

    def register_many(self, n: int, balance: float, start: int = 1) -> list[str]:
        ids = [node(i) for i in range(start, start + n)]
        for v in ids:
            self.register(v, balance)
        return ids

    def propose(self, **kw) -> Proposal:
        args = dict(title="Reroute around node-7", description="node-7 is flapping",
                    action=Action(ActionKind.REROUTE, {"avoid": "node-7"}, target_node="node-3"),
                    proposer=node("proposer"), duration_s=3600.0, quorum=0.5, threshold=0.5,
                    execution_window_s=600.0)
        args.update(kw)
        res = self.engine.create_proposal(**args)
        self.log += res.events
        return res.proposal

    def vote(self, proposal_id: str, voter: str, choice, tokens, *, nonce: bytes | None = None,
             vote_id: str | None = None, signature: bytes | None = None) -> VoteResult:
        nonce = self.fresh_nonce() if nonce is None else nonce
        if signature is None:
            signature = self.sign(voter, vote_signing_payload(proposal_id, voter, choice, tokens, nonce))
        res = self.engine.cast_vote(proposal_id, voter, choice, tokens, nonce, signature, vote_id=vote_id)
        self.log += res.events
        return res

    def tick(self, now: float | None = None):
        events = self.engine.tick(now)
        self.log += events
        return events

    def report(self, proposal_id: str, success: bool, detail: str = ""):
        events = self.engine.report_execution(proposal_id, success, detail)
        self.log += events
        return events

    def cancel(self, proposal_id: str, by: str):
        events = self.engine.cancel_proposal(proposal_id, by)
        self.log += events
        return events


@pytest.fixture
def h() -> Harness:
    return Harness()
