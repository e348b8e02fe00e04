"""The Pareto front of runs: the ones no other run beats on both a cost (size, latency) and quality.

A run is dominated when another costs no more and scores no lower, and is strictly better on one of the two; the
front is every run that is not.  Runs with an unknown (None or NaN) cost or quality take no part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices (ascending) of the non-dominated ``(cost, quality)`` points: lower cost and higher quality are
    better; equal points are all on the front.  O(n log n): sorted by cost (best quality first among equal
    costs), a point is on the front when its quality beats every cheaper point's, or equals the best one at its
    own cost when that one is on the front."""
    known = sorted(
        ((c, q, i) for i, (c, q) in enumerate(points) if _known(c) and _known(q)), key=lambda p: (p[0], -p[1])
    )
    front: list[int] = []
    best: float | None = None  # the highest quality among the points of lower cost
    for _, group in groupby(known, key=lambda p: p[0]):
        same_cost = list(group)  # best quality first
        top = same_cost[0][1]
        if best is None or top > best:
            front += [i for _, q, i in same_cost if q == top]
            best = top
    return sorted(front)


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
