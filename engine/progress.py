"""A progress bar on stderr for runs that take more than a moment, and only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DELAY_S = 0.5
_WIDTH = 30


def track(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, drawing ``label [####    ] i/n, ETA 1m05s`` once the loop has run for half a second
    (``total``: how many items an iterable without a length holds)."""
    count = len(items) if total is None else total  # type: ignore[arg-type]
    stream = sys.stderr
    interactive = stream.isatty()
    start = time.monotonic()
    drawn = False
    for i, item in enumerate(items):
        elapsed = time.monotonic() - start
        if interactive and elapsed > _DELAY_S:
            done = _WIDTH * i // max(count, 1)
            eta = f", ETA {_duration(elapsed / i * (count - i))}" if i else ""
            stream.write(f"\r\x1b[K{label} [{'#' * done}{' ' * (_WIDTH - done)}] {i}/{count}{eta}")
            stream.flush()
            drawn = True
        yield item
    if drawn:
        stream.write(f"\r\x1b[K{label} [{'#' * _WIDTH}] {count}/{count}\n")
        stream.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
