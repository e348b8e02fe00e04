"""A progress bar on stderr for runs that take more than a moment, and only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
_DELAY_S = 0.5
_WIDTH = 30


def track(items: Sequence[T], label: str) -> Iterator[T]:
    """Yield ``items``, drawing ``label [####    ] i/n`` once the loop has run for half a second."""
    stream = sys.stderr
    interactive = stream.isatty()
    start = time.monotonic()
    drawn = False
    for i, item in enumerate(items):
        if interactive and time.monotonic() - start > _DELAY_S:
            done = _WIDTH * i // max(len(items), 1)
            stream.write(f"\r{label} [{'#' * done}{' ' * (_WIDTH - done)}] {i}/{len(items)}")
            stream.flush()
            drawn = True
        yield item
    if drawn:
        stream.write(f"\r{label} [{'#' * _WIDTH}] {len(items)}/{len(items)}\n")
        stream.flush()
