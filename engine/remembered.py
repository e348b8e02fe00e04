"""Results of pure computations remembered for a caller that repeats them on copies of one model.

The accuracy search compresses the same float model dozens of times (engine.accuracy.candidates.Builder), each
build from a fresh copy, so identity cannot tell that a weight was seen before; content can.  While the caller
holds `remembering` open, `remembered` computes an array once per key (the caller's dict keeps them, and so
decides how long) and hands back a copy each time, so a pass that edits its array in place cannot change what
the next build gets.  Outside the block every call computes: nothing is kept between a user's compress runs.
Keys name what the result depends on, content hashes included: a key built from two equal inputs may differ
(a miss costs one computation), two different inputs never share one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_MEMO: ContextVar[dict[Hashable, np.ndarray | None] | None] = ContextVar("remembered", default=None)


@contextmanager
def remembering(memo: dict[Hashable, np.ndarray | None]) -> Iterator[None]:
    """Within the block, `remembered` keeps its results in ``memo`` and takes them from there."""
    token = _MEMO.set(memo)
    try:
        yield
    finally:
        _MEMO.reset(token)


def remembered(key: Callable[[], Hashable], compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """``compute()``, or a copy of the result it gave for the same ``key()`` within the open `remembering` block
    (the key is built only when one is open)."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    k = key()
    if k not in memo:
        memo[k] = compute()
    value = memo[k]
    return None if value is None else value.copy()
