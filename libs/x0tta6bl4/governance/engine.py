"""Command side of the governance domain.

Every command validates against the current state and, only if everything is
valid, produces new events, applies them to the in-memory state (through the
same reducer used for replay) and returns them so the caller can persist /
publish them.  A command that raises has produced no events and changed
nothing.  Rebuild after a restart with ``GovernanceEngine.from_events``.

Error mapping (messages always name the offending field / entity):

* InvalidArgument    malformed field (NaN/inf/<=0 tokens, bad nonce, title ...)
* Unauthenticated    voter identity unknown to the ledger, or bad signature
* NotFound           proposal / vote id / voter (for queries) does not exist
* AlreadyExists      identity registered twice, proposal id taken, vote id or
                     (voter, nonce) reused for *different* content
* PermissionDenied   cancel by someone other than the proposer
* FailedPrecondition state forbids it: not ACTIVE, voting period over, voter
                     not eligible (registered after creation), tokens > balance,
                     execution window over, no registered voters
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from x0tta6bl4.execution import changes

from .clock import Clock
from .decision import Decision, DecisionKind
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from .events import (
    ExecutionFailed,
    GovernanceEvent,
    ProposalAutoApproved,
    ProposalCanceled,
    ProposalClosed,
    ProposalCreated,
    ProposalExecuted,
    ProposalExpired,
    VoteCast,
    VoterKeyRotated,
    VoterRegistered,
)
from .model import (
    LIMITS,
    Action,
    Proposal,
    ProposalState,
    Tally,
    VoteChoice,
    VoteRecord,
    check_finite,
    check_fraction,
    check_identity,
    check_positive,
    check_text,
    quadratic_weight,
)
from .signing import Verifier, default_vote_id, vote_signing_payload
from .state import GovernanceState, fold
from .tally import evaluate, is_decided_early

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "GovernanceEngine",
    "ProposalPage",
    "ProposalResult",
    "VoteResult",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "offset:"


@dataclass(frozen=True)
class VoteResult:
    vote: VoteRecord
    proposal: Proposal
    events: tuple[GovernanceEvent, ...]
    duplicate: bool

    @property
    def vote_id(self) -> str:
        return self.vote.vote_id

    @property
    def weight(self) -> float:
        return self.vote.weight


@dataclass(frozen=True)
class ProposalResult:
    proposal: Proposal | None      # None only for an OBSERVE decision
    events: tuple[GovernanceEvent, ...]
    duplicate: bool = False


@dataclass(frozen=True)
class ProposalPage:
    proposals: tuple[Proposal, ...]
    next_page_token: str           # "" when there are no more pages


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    if not isinstance(token, str):
        raise InvalidArgument(f"page_token must be a string, got {type(token).__name__}")
    if token == "":
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        if not raw.startswith(_TOKEN_PREFIX):
            raise ValueError
        digits = raw[len(_TOKEN_PREFIX):]
        if not digits.isdigit():
            raise ValueError
        return int(digits)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"page_token {token!r} is not a valid page token") from None


class GovernanceEngine:
    """Event-sourced governance ledger + proposals + quadratic voting.

    ``verify(voter_id, payload, signature) -> bool`` checks vote signatures
    over :func:`vote_signing_payload`; ``clock()`` returns the current time in
    seconds; ``id_factory()`` makes proposal ids when the caller gives none.
    """

    def __init__(self, verify: Verifier, clock: Clock, *, id_factory: Callable[[], str] = _new_uuid,
                 state: GovernanceState | None = None) -> None:
        if not callable(verify):
            raise TypeError("verify must be callable(voter_id, payload, signature) -> bool")
        if not callable(clock):
            raise TypeError("clock must be callable() -> float seconds")
        self._verify = verify
        self._clock = clock
        self._id_factory = id_factory
        self._state = state if state is not None else GovernanceState()

    @classmethod
    def from_events(cls, events: Iterable[GovernanceEvent], *, verify: Verifier, clock: Clock,
                    id_factory: Callable[[], str] = _new_uuid) -> GovernanceEngine:
        return cls(verify, clock, id_factory=id_factory, state=fold(events))

    @property
    def state(self) -> GovernanceState:
        return self._state

    # ------------------------------------------------------------ helpers
    def _now(self) -> float:
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise TypeError(f"clock returned {now!r}; expected finite float seconds")
        return float(now)

    def _commit(self, events: Sequence[GovernanceEvent]) -> tuple[GovernanceEvent, ...]:
        for e in events:
            self._state.apply(e)
        return tuple(events)

    def _get(self, proposal_id: str) -> Proposal:
        check_identity("proposal_id", proposal_id)
        p = self._state.proposals.get(proposal_id)
        if p is None:
            raise NotFound(f"proposal {proposal_id!r} not found")
        return p

    # ------------------------------------------------------------- voters
    def register_voter(self, voter_id: str, balance: float, *, key_id: str = "",
                       public_key: bytes = b"") -> tuple[GovernanceEvent, ...]:
        """One identity, one ledger entry: re-registering raises AlreadyExists.
        ``public_key`` (opaque bytes, checked by the caller) is recorded with
        the voter so that a verifier can find it after a replay."""
        check_identity("voter", voter_id)
        bal = check_positive("balance", balance)
        check_text("key_id", key_id, max_len=LIMITS.max_id_len)
        if not isinstance(public_key, (bytes, bytearray)):
            raise InvalidArgument(f"public_key must be bytes, got {type(public_key).__name__}")
        if len(public_key) > LIMITS.max_signature_len:
            raise InvalidArgument(f"public_key must be at most {LIMITS.max_signature_len} bytes, got {len(public_key)}")
        if voter_id in self._state.voters:
            raise AlreadyExists(f"voter {voter_id!r} is already registered (one identity, one ledger entry)")
        return self._commit([VoterRegistered(voter_id=voter_id, balance=bal, at=self._now(), key_id=key_id,
                                             public_key=bytes(public_key))])

    def rotate_voter_key(self, voter_id: str, *, key_id: str, public_key: bytes) -> tuple[GovernanceEvent, ...]:
        """Record the voter's new identity key (checked by the caller against its issuer).
        The same key again is a no-op (no event)."""
        check_identity("voter", voter_id)
        check_text("key_id", key_id, max_len=LIMITS.max_id_len)
        if not isinstance(public_key, (bytes, bytearray)) or not public_key:
            raise InvalidArgument("public_key must be non-empty bytes")
        if len(public_key) > LIMITS.max_signature_len:
            raise InvalidArgument(f"public_key must be at most {LIMITS.max_signature_len} bytes, got {len(public_key)}")
        v = self._state.voters.get(voter_id)
        if v is None:
            raise NotFound(f"voter {voter_id!r} is not registered")
        if v.public_key == bytes(public_key):
            return ()
        return self._commit([VoterKeyRotated(voter_id=voter_id, key_id=key_id, public_key=bytes(public_key),
                                             at=self._now())])

    def get_balance(self, voter_id: str) -> float:
        check_identity("voter", voter_id)
        v = self._state.voters.get(voter_id)
        if v is None:
            raise NotFound(f"voter {voter_id!r} is not registered")
        return v.balance

    # ---------------------------------------------------------- proposals
    def create_proposal(self, *, title: str, description: str, action: Action, proposer: str,
                        duration_s: float, quorum: float, threshold: float,
                        execution_window_s: float = LIMITS.default_execution_window_s,
                        proposal_id: str | None = None, request_id: str = "",
                        cycle_id: str = "", max_active_for_proposer: int = 0) -> ProposalResult:
        """Open a proposal. Eligible voters = voters registered right now.

        ``request_id`` (optional) makes creation idempotent per proposer: a
        retry with identical content returns the existing proposal and no
        events; different content raises AlreadyExists.
        ``max_active_for_proposer`` (> 0) caps the proposer's ACTIVE proposals:
        one more raises ResourceExhausted (a retry of an existing one does not).
        """
        fields = self._validate_proposal_fields(title, description, action, proposer, execution_window_s,
                                                proposal_id, request_id, cycle_id)
        dur = check_positive("duration_s", duration_s, LIMITS.max_duration_s)
        q = check_fraction("quorum", quorum)
        t = check_fraction("threshold", threshold)
        dup = self._idempotent_create(fields, duration_s=dur, quorum=q, threshold=t)
        if dup is not None:
            return dup
        if not self._state.voters:
            raise FailedPrecondition("cannot create a proposal: no voters are registered (eligible weight is 0)")
        if max_active_for_proposer > 0:
            active = sum(1 for p in self._state.proposals.values()
                         if p.proposer == fields["proposer"] and p.state is ProposalState.ACTIVE)
            if active >= max_active_for_proposer:
                raise ResourceExhausted(f"proposer {fields['proposer']!r} already has {active} active proposals "
                                        f"(the limit is {max_active_for_proposer}); wait until one closes or "
                                        f"cancel one")
        pid = self._claim_id(fields["proposal_id"])
        event = ProposalCreated(proposal_id=pid, title=fields["title"], description=fields["description"],
                                action=fields["action"], proposer=fields["proposer"], duration_s=dur, quorum=q,
                                threshold=t, execution_window_s=fields["execution_window_s"], at=self._now(),
                                cycle_id=fields["cycle_id"], request_id=fields["request_id"])
        events = self._commit([event])
        return ProposalResult(self._state.proposals[pid], events)

    def create_from_decision(self, decision: Decision, *, title: str, description: str, action: Action,
                             proposer: str, execution_window_s: float = LIMITS.default_execution_window_s,
                             proposal_id: str | None = None, request_id: str = "",
                             cycle_id: str = "") -> ProposalResult:
        """Apply the decision matrix: AUTO_EXECUTE -> proposal recorded as
        PASSED/AUTO_APPROVED (no vote); EMERGENCY/STANDARD_VOTE -> a proposal
        with the decision's duration, quorum, threshold; OBSERVE -> nothing."""
        if not isinstance(decision, Decision):
            raise InvalidArgument(f"decision must be a Decision, got {type(decision).__name__}")
        if decision.kind is DecisionKind.OBSERVE:
            return ProposalResult(None, ())
        if decision.requires_vote:
            return self.create_proposal(title=title, description=description, action=action, proposer=proposer,
                                        duration_s=decision.vote_duration_s, quorum=decision.quorum,
                                        threshold=decision.threshold, execution_window_s=execution_window_s,
                                        proposal_id=proposal_id, request_id=request_id, cycle_id=cycle_id)
        fields = self._validate_proposal_fields(title, description, action, proposer, execution_window_s,
                                                proposal_id, request_id, cycle_id)
        dup = self._idempotent_create(fields, duration_s=0.0, quorum=0.0, threshold=0.0)
        if dup is not None:
            return dup
        pid = self._claim_id(fields["proposal_id"])
        event = ProposalAutoApproved(proposal_id=pid, title=fields["title"], description=fields["description"],
                                     action=fields["action"], proposer=fields["proposer"],
                                     execution_window_s=fields["execution_window_s"],
                                     confidence=decision.confidence, severity=decision.severity,
                                     reason=decision.reason, at=self._now(), cycle_id=fields["cycle_id"],
                                     request_id=fields["request_id"])
        events = self._commit([event])
        return ProposalResult(self._state.proposals[pid], events)

    def _validate_proposal_fields(self, title, description, action, proposer, execution_window_s,
                                  proposal_id, request_id, cycle_id) -> dict:
        if not isinstance(action, Action):
            raise InvalidArgument(f"action must be an Action, got {type(action).__name__}")
        try:   # a topology_update or config_change that could never run is refused before anyone votes
            changes.validate(action.kind.value, action.target_node, action.params)
        except changes.ChangeError as e:
            raise InvalidArgument(str(e)) from None
        if proposal_id is not None:
            check_identity("proposal_id", proposal_id)
        if request_id != "":
            check_identity("request_id", request_id)
        if cycle_id != "":
            check_identity("cycle_id", cycle_id)
        return {
            "title": check_text("title", title, min_len=1, max_len=LIMITS.title_max, strip=True),
            "description": check_text("description", description, max_len=LIMITS.description_max),
            "action": action,
            "proposer": check_identity("proposer", proposer),
            "execution_window_s": check_positive("execution_window_s", execution_window_s,
                                                 LIMITS.max_execution_window_s),
            "proposal_id": proposal_id,
            "request_id": request_id,
            "cycle_id": cycle_id,
        }

    def _idempotent_create(self, fields: dict, **numbers: float) -> ProposalResult | None:
        if not fields["request_id"]:
            return None
        existing_id = self._state.requests.get((fields["proposer"], fields["request_id"]))
        if existing_id is None:
            return None
        p = self._state.proposals[existing_id]
        same = (p.title, p.description, p.action, p.execution_window_s, p.cycle_id,
                p.duration_s, p.quorum, p.threshold) == (
            fields["title"], fields["description"], fields["action"], fields["execution_window_s"],
            fields["cycle_id"], numbers["duration_s"], numbers["quorum"], numbers["threshold"])
        if same and fields["proposal_id"] in (None, existing_id):
            return ProposalResult(p, (), duplicate=True)
        raise AlreadyExists(f"request_id {fields['request_id']!r} of proposer {fields['proposer']!r} was already "
                            f"used for proposal {existing_id!r} with different content")

    def _claim_id(self, proposal_id: str | None) -> str:
        pid = proposal_id if proposal_id is not None else check_identity("generated proposal_id", self._id_factory())
        if pid in self._state.proposals:
            raise AlreadyExists(f"proposal {pid!r} already exists")
        return pid

    def cancel_proposal(self, proposal_id: str, by: str) -> tuple[GovernanceEvent, ...]:
        """Only the proposer may cancel, and only while the proposal is ACTIVE
        and its voting period has not ended."""
        check_identity("by", by)
        p = self._get(proposal_id)
        if by != p.proposer:
            raise PermissionDenied(f"only the proposer {p.proposer!r} may cancel proposal {proposal_id!r}, not {by!r}")
        now = self._now()
        self._require_open(p, now, "cancel")
        return self._commit([ProposalCanceled(proposal_id=p.proposal_id, by=by, at=now)])

    def _require_open(self, p: Proposal, now: float, what: str) -> None:
        if p.state is not ProposalState.ACTIVE:
            raise FailedPrecondition(f"cannot {what}: proposal {p.proposal_id!r} is {p.state.value}, not ACTIVE")
        if now >= p.closes_at:
            raise FailedPrecondition(f"cannot {what}: voting period of proposal {p.proposal_id!r} ended at "
                                     f"{p.closes_at!r} (now {now!r}); it is awaiting close")

    # --------------------------------------------------------------- votes
    def cast_vote(self, proposal_id: str, voter: str, choice: VoteChoice | str, tokens: float, nonce: bytes,
                  signature: bytes, vote_id: str | None = None) -> VoteResult:
        """Commit ``tokens`` (0 < tokens <= balance) for weight sqrt(tokens).

        A later vote by the same voter replaces the earlier one.  Retrying with
        the same vote id (or re-sending the same signed vote under the same
        nonce) returns the recorded result and produces no event.  If the vote
        completes the eligible electorate the proposal closes early (see
        ``tally`` module).
        """
        # 1. arguments
        check_identity("proposal_id", proposal_id)
        check_identity("voter", voter)
        try:
            ch = VoteChoice(choice)
        except ValueError:
            raise InvalidArgument(f"choice must be one of YES, NO, ABSTAIN, got {choice!r}") from None
        if isinstance(tokens, bool) or not isinstance(tokens, (int, float)):
            raise InvalidArgument(f"tokens must be a number, got {type(tokens).__name__}")
        tok = float(tokens)
        if not math.isfinite(tok):
            raise InvalidArgument(f"tokens must be finite, got {tok!r}")
        if tok <= 0:
            raise InvalidArgument(f"tokens must be > 0, got {tok!r}")
        if not isinstance(nonce, (bytes, bytearray)):
            raise InvalidArgument(f"nonce must be bytes, got {type(nonce).__name__}")
        nonce = bytes(nonce)
        if not LIMITS.nonce_min_len <= len(nonce) <= LIMITS.nonce_max_len:
            raise InvalidArgument(f"nonce must be {LIMITS.nonce_min_len}..{LIMITS.nonce_max_len} bytes, "
                                  f"got {len(nonce)}")
        if not isinstance(signature, (bytes, bytearray)):
            raise InvalidArgument(f"signature must be bytes, got {type(signature).__name__}")
        signature = bytes(signature)
        if not 0 < len(signature) <= LIMITS.max_signature_len:
            raise InvalidArgument(f"signature must be 1..{LIMITS.max_signature_len} bytes, got {len(signature)}")
        payload = vote_signing_payload(proposal_id, voter, ch, tok, nonce)
        vid = default_vote_id(payload) if vote_id in (None, "") else check_identity("vote_id", vote_id)

        # 2. authentication
        if voter not in self._state.voters:
            raise Unauthenticated(f"voter {voter!r} is not a registered identity")
        try:
            ok = self._verify(voter, payload, signature)
        except Exception as exc:  # a verifier choking on garbage is a failed verification
            raise Unauthenticated(f"signature of voter {voter!r} could not be verified: "
                                  f"{type(exc).__name__}") from exc
        if ok is not True:
            raise Unauthenticated(f"signature of voter {voter!r} does not verify for this vote")

        # 3. idempotency and replay
        prior = self._state.votes_by_id.get(vid)
        if prior is not None:
            if prior.same_content(proposal_id, voter, ch, tok, nonce):
                return VoteResult(prior, self._state.proposals[prior.proposal_id], (), True)
            raise AlreadyExists(f"vote id {vid!r} was already used for a different vote")
        replayed_id = self._state.nonces.get((voter, nonce))
        if replayed_id is not None:
            prior = self._state.votes_by_id[replayed_id]
            if prior.same_content(proposal_id, voter, ch, tok, nonce):
                return VoteResult(prior, self._state.proposals[prior.proposal_id], (), True)
            raise AlreadyExists(f"nonce {nonce.hex()} of voter {voter!r} was already used for a different vote "
                                f"({replayed_id!r}); use a fresh nonce")

        # 4. state
        p = self._get(proposal_id)
        now = self._now()
        self._require_open(p, now, "vote")
        if voter not in p.eligible:
            raise FailedPrecondition(f"voter {voter!r} is not eligible for proposal {proposal_id!r} "
                                     f"(registered after the proposal was created)")
        balance = p.eligible[voter]
        if tok > balance:
            raise FailedPrecondition(f"voter {voter!r} committed {tok!r} tokens but has a balance of {balance!r}")

        # 5. events
        cast = VoteCast(vote_id=vid, proposal_id=proposal_id, voter_id=voter, choice=ch, tokens=tok,
                        weight=quadratic_weight(tok), nonce=nonce, signature=signature, at=now)
        events = list(self._commit([cast]))
        votes = self._state.votes[proposal_id]
        if is_decided_early(self._state.proposals[proposal_id], votes):
            events.extend(self._commit([self._close(self._state.proposals[proposal_id], now, early=True)]))
        return VoteResult(self._state.votes_by_id[vid], self._state.proposals[proposal_id], tuple(events), False)

    def _close(self, p: Proposal, now: float, *, early: bool) -> ProposalClosed:
        tally = self._state.running[p.proposal_id].tally(p)
        outcome, reason = evaluate(p, tally)
        return ProposalClosed(proposal_id=p.proposal_id, outcome=outcome, reason=reason, tally=tally,
                              early=early, at=now)

    # ---------------------------------------------------------- execution
    def report_execution(self, proposal_id: str, success: bool, detail: str = "") -> tuple[GovernanceEvent, ...]:
        """Executor outcome for a PASSED proposal.  Success -> EXECUTED;
        failure -> ExecutionFailed (stays PASSED, may be retried until the
        execution window ends).  A repeated success report for an EXECUTED
        proposal is a no-op (at-least-once delivery)."""
        if not isinstance(success, bool):
            raise InvalidArgument(f"success must be a bool, got {type(success).__name__}")
        check_text("detail", detail, max_len=LIMITS.max_detail_len)
        p = self._get(proposal_id)
        if p.state is ProposalState.EXECUTED and success:
            return ()
        if p.state is not ProposalState.PASSED:
            raise FailedPrecondition(f"cannot report execution: proposal {proposal_id!r} is {p.state.value}, "
                                     f"not PASSED")
        now = self._now()
        deadline = p.execution_deadline
        assert deadline is not None
        if now >= deadline:
            raise FailedPrecondition(f"cannot report execution: execution window of proposal {proposal_id!r} "
                                     f"ended at {deadline!r} (now {now!r})")
        event = (ProposalExecuted(proposal_id=proposal_id, detail=detail, at=now) if success
                 else ExecutionFailed(proposal_id=proposal_id, detail=detail, at=now))
        return self._commit([event])

    # ---------------------------------------------------------------- time
    def tick(self, now: float | None = None) -> tuple[GovernanceEvent, ...]:
        """Close ACTIVE proposals whose period ended (now >= closes_at) and
        expire PASSED ones whose execution window ended
        (now >= closed_at + execution_window_s).  Proposals are visited in
        creation order, so the events are deterministic."""
        t = self._now() if now is None else check_finite("now", now)
        events: list[GovernanceEvent] = []
        for p in list(self._state.proposals.values()):
            if p.state is ProposalState.ACTIVE and t >= p.closes_at:
                events.extend(self._commit([self._close(p, t, early=False)]))
            elif p.state is ProposalState.PASSED:
                deadline = p.execution_deadline
                if deadline is not None and t >= deadline:
                    events.extend(self._commit([ProposalExpired(proposal_id=p.proposal_id, at=t)]))
        return tuple(events)

    # ------------------------------------------------------------- queries
    def get_proposal(self, proposal_id: str) -> Proposal:
        return self._get(proposal_id)

    def tally(self, proposal_id: str) -> Tally:
        """Current tally (ACTIVE) or the tally the proposal was decided on."""
        p = self._get(proposal_id)
        if p.final_tally is not None:
            return p.final_tally
        return self._state.running[proposal_id].tally(p)

    def votes(self, proposal_id: str) -> Mapping[str, VoteRecord]:
        """Latest vote per voter."""
        self._get(proposal_id)
        return dict(self._state.votes[proposal_id])

    def get_vote(self, vote_id: str) -> VoteRecord:
        check_identity("vote_id", vote_id)
        v = self._state.votes_by_id.get(vote_id)
        if v is None:
            raise NotFound(f"vote {vote_id!r} not found")
        return v

    def list_proposals(self, state: ProposalState | str | None = None, page_size: int = 0,
                       page_token: str = "") -> ProposalPage:
        """Proposals in creation order, optionally filtered by state.

        ``page_size`` 0 means DEFAULT_PAGE_SIZE; values above MAX_PAGE_SIZE are
        clamped.  ``page_token`` is the opaque ``next_page_token`` of the
        previous page ("" for the first).  Offsets are taken over the filtered
        list at request time (proposals changing state between pages may shift).
        """
        if state is not None:
            try:
                state = ProposalState(state)
            except ValueError:
                raise InvalidArgument(f"state must be one of {[s.value for s in ProposalState]}, "
                                      f"got {state!r}") from None
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
            raise InvalidArgument(f"page_size must be a non-negative integer, got {page_size!r}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        offset = _decode_token(page_token)
        items = [p for p in self._state.proposals.values() if state is None or p.state is state]
        if offset > len(items):
            raise InvalidArgument(f"page_token {page_token!r} points past the end of the listing")
        page = tuple(items[offset:offset + size])
        end = offset + len(page)
        return ProposalPage(page, _encode_token(end) if end < len(items) else "")
