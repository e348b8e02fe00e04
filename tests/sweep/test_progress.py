"""engine.progress.track as the sweep uses it: an iterator without a length (rows as they finish), a total, and the
time left estimated from the pace so far."""

from __future__ import annotations

import io

import pytest

from engine import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_from_the_pace_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(100))  # one second per step: start 0, then 1, 2, 3, ...
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(progress.sys, "stderr", stream := _Terminal())
    rows = (row for row in "abcd")
    assert list(progress.track(rows, "sweep", total=4)) == list("abcd")
    drawn = stream.getvalue()
    # item 1 arrives after 2 s: 2 s per item, 3 to go; item 2 after 3 s: 1.5 s per item, 2 to go
    assert "] 0/4\r" in drawn and "] 1/4, ETA 6s" in drawn and "] 2/4, ETA 3s" in drawn  # none before the first
    assert drawn.endswith("] 4/4\n")


def test_durations() -> None:
    assert [progress._duration(s) for s in (0.4, 59, 61, 3600 + 125)] == ["0s", "59s", "1m01s", "1h02m"]
