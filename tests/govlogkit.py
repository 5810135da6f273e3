"""Replaying governance log messages in unit tests (the v2 and v3 record tests share it)."""
from __future__ import annotations

from x0tta6bl4.governance.eventlog import Applied, LogReplay, LogVerifier, Quarantined


def replay(messages: list[bytes], bundle: LogVerifier) -> tuple[LogReplay, list]:
    """Feed ``messages`` as stream sequences 1, 2, ...: the replay and every verdict, in order."""
    r = LogReplay(bundle)
    verdicts = []
    for i, m in enumerate(messages, 1):
        verdicts += r.feed(i, m)
    return r, verdicts


def applied(verdicts) -> list[int]:
    return [v.stream_seq for v in verdicts if isinstance(v, Applied)]


def quarantined(verdicts) -> dict[int, str]:
    return {v.stream_seq: v.reason for v in verdicts if isinstance(v, Quarantined)}
