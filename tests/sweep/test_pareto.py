"""engine.sweep.pareto: the front is exactly the non-dominated points, checked against the definition on
constructed data (many ties, unknown values, infinities)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from engine.sweep.pareto import pareto_front

# Small integer grids make ties (equal costs, equal qualities, equal points) common.
VALUES = st.one_of(st.integers(0, 6).map(float), st.sampled_from([math.inf, -math.inf, math.nan]), st.none())
POINTS = st.lists(st.tuples(VALUES, VALUES), max_size=40)


def _known(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def _by_definition(points: list[tuple[float | None, float | None]]) -> list[int]:
    known = [i for i, (c, q) in enumerate(points) if _known(c) and _known(q)]
    return [i for i in known if not any(_dominates(points[j], points[i]) for j in known)]  # type: ignore[arg-type]


@given(POINTS)
def test_front_is_the_non_dominated_points(points: list[tuple[float | None, float | None]]) -> None:
    assert pareto_front(points) == _by_definition(points)


@given(POINTS)
def test_front_is_unchanged_by_order_and_by_adding_dominated_points(points: list) -> None:
    front = pareto_front(points)
    reordered = list(reversed(points))
    assert sorted(len(points) - 1 - i for i in pareto_front(reordered)) == front
    worse = [(c + 1, q - 1) for c, q in (points[i] for i in front) if math.isfinite(c) and math.isfinite(q)]
    assert pareto_front(points + worse) == front


def test_a_worked_example() -> None:
    # size KB, SQNR dB: the smallest, the best, and a trade-off between them are on the front; a point worse than
    # another on both is not; two equal points are both on it; unknown quality takes no part.
    points = [(100, 30), (50, 20), (70, 25), (80, 22), (50, 20), (120, math.inf), (40, None), (90, 25)]
    assert pareto_front(points) == [0, 1, 2, 4, 5]
