"""Decision matrix boundaries."""

import math

import pytest

from x0tta6bl4.governance import DecisionKind, DecisionPolicy, InvalidArgument, Severity, decide

AUTO, EMERG, STD, OBS = (DecisionKind.AUTO_EXECUTE, DecisionKind.EMERGENCY_VOTE,
                         DecisionKind.STANDARD_VOTE, DecisionKind.OBSERVE)
UP = math.nextafter  # just above / below a boundary


@pytest.mark.parametrize("confidence, severity, expected", [
    (1.0, Severity.CRITICAL, AUTO),
    (UP(0.9, 1), Severity.CRITICAL, AUTO),          # just above 0.9
    (0.9, Severity.CRITICAL, EMERG),                # exactly 0.9 -> emergency vote
    (UP(0.9, 0), Severity.CRITICAL, EMERG),
    (0.95, Severity.HIGH, EMERG),                   # > 0.9 but not critical
    (0.95, Severity.LOW, EMERG),
    (1.0, Severity.MEDIUM, EMERG),
    (UP(0.8, 1), Severity.LOW, EMERG),              # just above 0.8
    (0.85, Severity.CRITICAL, EMERG),
    (0.8, Severity.CRITICAL, STD),                  # exactly 0.8 -> standard vote
    (UP(0.8, 0), Severity.HIGH, STD),
    (0.7, Severity.CRITICAL, STD),
    (UP(0.6, 1), Severity.LOW, STD),
    (0.6, Severity.LOW, STD),                       # exactly 0.6 -> standard vote
    (UP(0.6, 0), Severity.CRITICAL, OBS),           # just below 0.6
    (0.3, Severity.CRITICAL, OBS),
    (0.0, Severity.LOW, OBS),
])
def test_matrix(confidence, severity, expected):
    d = decide(confidence, severity)
    assert d.kind is expected
    assert d.confidence == confidence and d.severity is severity
    assert d.reason


def test_durations_quorum_threshold_come_from_policy():
    default = DecisionPolicy()
    e = decide(0.85, Severity.HIGH)
    s = decide(0.7, Severity.HIGH)
    assert (e.vote_duration_s, s.vote_duration_s) == (300.0, 3600.0)
    assert (e.quorum, e.threshold) == (default.emergency_quorum, default.emergency_threshold)
    assert (s.quorum, s.threshold) == (default.standard_quorum, default.standard_threshold)
    assert e.requires_vote and s.requires_vote

    policy = DecisionPolicy(emergency_vote_duration_s=60, standard_vote_duration_s=7200,
                            emergency_quorum=0.1, emergency_threshold=0.6, standard_quorum=0.4,
                            standard_threshold=0.66)
    e2, s2 = decide(0.85, Severity.HIGH, policy), decide(0.7, Severity.HIGH, policy)
    assert (e2.vote_duration_s, e2.quorum, e2.threshold) == (60, 0.1, 0.6)
    assert (s2.vote_duration_s, s2.quorum, s2.threshold) == (7200, 0.4, 0.66)


def test_non_vote_decisions_have_zero_vote_parameters():
    for d in (decide(0.99, Severity.CRITICAL), decide(0.1, Severity.LOW)):
        assert not d.requires_vote
        assert (d.vote_duration_s, d.quorum, d.threshold) == (0.0, 0.0, 0.0)


def test_severity_accepts_string_value():
    assert decide(0.95, "critical").kind is AUTO


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.01, 1.01, True, "0.9", None])
def test_invalid_confidence(bad):
    with pytest.raises(InvalidArgument, match="confidence"):
        decide(bad, Severity.CRITICAL)


def test_invalid_severity():
    with pytest.raises(InvalidArgument, match="severity"):
        decide(0.5, "catastrophic")


@pytest.mark.parametrize("kw", [
    {"emergency_vote_duration_s": 0}, {"standard_vote_duration_s": math.inf},
    {"standard_vote_duration_s": 8 * 24 * 3600}, {"emergency_quorum": 0.0},
    {"standard_threshold": 1.5}, {"emergency_threshold": math.nan},
])
def test_invalid_policy(kw):
    with pytest.raises(InvalidArgument, match="policy"):
        DecisionPolicy(**kw)
