"""Quadratic-voting arithmetic: tally, outcome and the early-close rule.

Rules (see README "Governance rules"):

* weight of a vote = sqrt(tokens committed);
* eligible weight  = sum of sqrt(balance) over the voters registered when the
  proposal was created (snapshot);
* quorum reached   <=> (yes + no + abstain) / eligible >= proposal.quorum;
* approval         =  yes / (yes + no)   (ABSTAIN counts toward quorum only);
* PASSED           <=> quorum reached and approval > threshold (strictly);
  otherwise REJECTED with QUORUM_NOT_REACHED (checked first) or
  THRESHOLD_NOT_MET.  Consequence: threshold = 1.0 can never pass.

Sums use ``math.fsum`` (exactly rounded), so a tally does not depend on the
order in which votes were recorded and replaying events reproduces it bit for
bit.

Early close rule
----------------
While a proposal is open every voter -- including those who already voted --
may still change choice and commit any amount in (0, balance].  Under that
model no intermediate tally is ever decided: the completion "everybody votes
YES with the full balance" reaches turnout 1 >= quorum and approval 1 >
threshold (for threshold < 1), while "everybody votes NO" gives approval 0.
Hence the only safe, and therefore the implemented, early-close condition is:

    every eligible voter has a vote on record  ->  close now with the current
    tally (the voters give up the chance to revise; nobody is left to wait for).

The degenerate threshold = 1.0 (certain rejection) is deliberately not closed
early, so its final tally still reports real turnout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .model import CloseReason, Proposal, ProposalState, Tally, VoteChoice, VoteRecord

__all__ = ["ExactSum", "RunningTally", "compute_tally", "evaluate", "is_decided_early"]


def compute_tally(proposal: Proposal, votes: Mapping[str, VoteRecord]) -> Tally:
    """Tally of the votes on record (one per voter: the latest)."""
    yes: list[float] = []
    no: list[float] = []
    abstain: list[float] = []
    buckets = {VoteChoice.YES: yes, VoteChoice.NO: no, VoteChoice.ABSTAIN: abstain}
    for voter, vote in votes.items():
        if voter in proposal.eligible:
            buckets[vote.choice].append(vote.weight)
    return Tally(
        yes=math.fsum(yes),
        no=math.fsum(no),
        abstain=math.fsum(abstain),
        eligible=proposal.eligible_weight,
        voters=len(yes) + len(no) + len(abstain),
        eligible_voters=len(proposal.eligible),
    )


class ExactSum:
    """A float sum kept exactly (Shewchuk's non-overlapping partials, as in ``math.fsum``).

    ``add(x)`` and ``add(-x)`` are exact, so a vote can be replaced by removing
    its old weight, and ``value`` equals ``math.fsum`` of the values currently in
    the sum, whatever the order of additions and removals.
    """

    __slots__ = ("_partials",)

    def __init__(self) -> None:
        self._partials: list[float] = []

    def add(self, x: float) -> None:
        partials = self._partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self._partials)


class RunningTally:
    """The tally of one proposal kept up to date vote by vote (O(1) per vote).

    Invariant kept by the state reducer: it holds exactly the latest vote of each
    voter on record, so ``tally(proposal)`` equals ``compute_tally(proposal, votes)``.
    """

    __slots__ = ("_sums", "voters")

    def __init__(self) -> None:
        self._sums = {VoteChoice.YES: ExactSum(), VoteChoice.NO: ExactSum(), VoteChoice.ABSTAIN: ExactSum()}
        self.voters = 0

    def _key(self) -> tuple:
        return (self.voters, *(s.value for s in self._sums.values()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunningTally) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        v, yes, no, abstain = self._key()
        return f"RunningTally(voters={v}, yes={yes!r}, no={no!r}, abstain={abstain!r})"

    def replace(self, old: VoteRecord | None, new: VoteRecord) -> None:
        if old is None:
            self.voters += 1
        else:
            self._sums[old.choice].add(-old.weight)
        self._sums[new.choice].add(new.weight)

    def tally(self, proposal: Proposal) -> Tally:
        return Tally(
            yes=self._sums[VoteChoice.YES].value,
            no=self._sums[VoteChoice.NO].value,
            abstain=self._sums[VoteChoice.ABSTAIN].value,
            eligible=proposal.eligible_weight,
            voters=self.voters,
            eligible_voters=len(proposal.eligible),
        )


def evaluate(proposal: Proposal, tally: Tally) -> tuple[ProposalState, CloseReason]:
    """Outcome of a proposal whose voting ends with ``tally``."""
    if tally.eligible <= 0 or tally.cast / tally.eligible < proposal.quorum:
        return ProposalState.REJECTED, CloseReason.QUORUM_NOT_REACHED
    if not tally.approval > proposal.threshold:
        return ProposalState.REJECTED, CloseReason.THRESHOLD_NOT_MET
    return ProposalState.PASSED, CloseReason.QUORUM_AND_THRESHOLD_MET


def is_decided_early(proposal: Proposal, votes: Mapping[str, VoteRecord]) -> bool:
    """True when the proposal may close before its period ends (see module doc)."""
    # Invariant kept by the engine: only eligible voters have votes on record,
    # so counting is enough (O(1) per vote instead of O(voters)).
    return bool(proposal.eligible) and len(votes) >= len(proposal.eligible)
