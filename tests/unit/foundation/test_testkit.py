"""The test suite's waiting helper: it returns what the check returned, retries "not yet" (falsy or a failed
assertion) and explains a timeout with the last value or assertion."""
from __future__ import annotations

import itertools

import pytest
import testkit
from testkit import consistently, consistently_sync, eventually, eventually_sync


def test_returns_the_first_truthy_value_and_retries_falsy_and_failed_assertions():
    calls = itertools.count(1)

    def check():
        n = next(calls)
        assert n >= 3, f"only {n} calls"
        return [] if n < 5 else {"n": n}
    assert eventually_sync(check, timeout=5, interval=0) == {"n": 5}


async def test_async_checks_are_awaited():
    calls = itertools.count(1)

    async def check():
        return next(calls) >= 3 and "ready"
    assert await eventually(check, timeout=5, interval=0) == "ready"
    assert await eventually(lambda: 7, timeout=1) == 7      # a plain check works in the async variant


def test_a_timeout_names_the_check_and_its_last_value():
    with pytest.raises(AssertionError) as ei:
        eventually_sync(lambda: {"acked": 0}.get("acked"), timeout=0.05, interval=0.01)
    msg = str(ei.value)
    assert "lambda: {\"acked\": 0}.get(\"acked\")" in msg and "last value: 0" in msg and "tries" in msg


async def test_a_timeout_shows_the_last_assertion_and_chains_it(monkeypatch):
    monkeypatch.setattr(testkit, "TIMEOUT_SCALE", 1.0)      # deadlines as written (make test doubles them)

    def check():
        assert 1 + 1 == 3, "arithmetic still broken"
    with pytest.raises(AssertionError) as ei:
        await eventually(check, timeout=0.05, interval=0.01, what="arithmetic")
    assert str(ei.value).startswith("not within 0.05s")
    assert "arithmetic; last assertion: arithmetic still broken" in str(ei.value)
    assert isinstance(ei.value.__cause__, AssertionError)


def test_other_errors_propagate_at_once():
    with pytest.raises(ZeroDivisionError):
        eventually_sync(lambda: 1 / 0, timeout=5)


def test_deadlines_scale_with_the_environment(monkeypatch):
    monkeypatch.setenv(testkit.SCALE_ENV, "2.5")
    assert testkit._timeout_scale() == 2.5
    monkeypatch.setattr(testkit, "TIMEOUT_SCALE", 2.5)
    assert testkit.scaled(4) == 10
    with pytest.raises(AssertionError, match=r"not within 0.05s \(0.02s x X0TTA6BL4_TEST_TIMEOUT_SCALE=2.5\)"):
        eventually_sync(lambda: False, timeout=0.02, interval=0.01)
    # unset: 1, or 2 under two or more pytest-xdist workers (a busy machine)
    monkeypatch.delenv(testkit.SCALE_ENV)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert testkit._timeout_scale() == 2.0
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert testkit._timeout_scale() == 1.0
    for bad in ("0", "-1", "fast"):
        monkeypatch.setenv(testkit.SCALE_ENV, bad)
        with pytest.raises(ValueError, match="expected a positive number"):
            testkit._timeout_scale()


async def test_consistently_holds_for_the_window_or_fails_at_the_first_break():
    await consistently(lambda: True, during=0.05, interval=0.01)
    calls = itertools.count(1)
    with pytest.raises(AssertionError, match=r"stopped holding after .*; value: False"):
        await consistently(lambda: next(calls) < 3, during=5, interval=0.01)
    consistently_sync(lambda: True, during=0.05, interval=0.01)

    def broken():
        raise AssertionError("a message was delivered twice")
    with pytest.raises(AssertionError, match=r"stopped holding after .*; a message was delivered twice"):
        consistently_sync(broken, during=5, interval=0.01)
