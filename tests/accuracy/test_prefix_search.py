"""The budgeted search's prefix search (engine.accuracy.search.shortest_passing_prefix) on synthetic promotion
paths: it finds the shortest passing prefix whatever the prediction's error, an accurate prediction costs two
candidates, and a wrong one never costs much more than bisection."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.accuracy.search import shortest_passing_prefix

TARGET = 30.0


class PromotionPath:
    """A promotion path whose measured SQNR rises with the prefix; ``check`` records the prefixes judged."""

    def __init__(self, measured_db: list[float]) -> None:
        self.measured_db = measured_db
        self.judged: list[int] = []

    def check(self, k: int, how: str) -> tuple[bool, float]:
        assert k not in self.judged, f"prefix {k} judged twice"
        self.judged.append(k)
        return self.measured_db[k] >= TARGET, self.measured_db[k]

    def answer(self) -> int:
        return next(
            (k for k in range(1, len(self.measured_db)) if self.measured_db[k] >= TARGET), len(self.measured_db) - 1
        )


def _bisection_bound(total: int) -> int:
    return 3 * math.ceil(math.log2(total + 1)) + 3


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=2, max_value=300),
    st.floats(min_value=0.05, max_value=1.0),
    st.floats(min_value=-15.0, max_value=15.0),
    st.floats(min_value=0.0, max_value=3.0),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_finds_the_shortest_passing_prefix_whatever_the_prediction(
    total: int, slope: float, bias: float, wobble: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    measured = list(np.cumsum(np.r_[5.0, rng.uniform(0.0, 2 * slope, total)]))  # rises with every promotion
    predicted = [m - bias - wobble * math.sin(k / 7) for k, m in enumerate(measured)]
    start = next((k for k in range(total + 1) if predicted[k] >= TARGET), total)
    path = PromotionPath(measured)
    best, judged = shortest_passing_prefix(predicted, start, path.check, TARGET, uniform_db=measured[0])
    assert best == path.answer()
    assert judged == path.judged
    assert len(judged) <= _bisection_bound(total)
    # Without a target (an accuracy budget) the same answer by galloping and bisection alone.
    plain = PromotionPath(measured)
    assert shortest_passing_prefix(predicted, start, plain.check, None)[0] == best
    assert len(plain.judged) <= 2 * math.ceil(math.log2(total + 1)) + 2


def test_an_accurate_prediction_costs_two_candidates() -> None:
    measured = [10.0 + 0.25 * k for k in range(161)]  # passes from prefix 80
    path = PromotionPath(measured)
    best, judged = shortest_passing_prefix(measured, 80, path.check, TARGET, uniform_db=measured[0])
    assert (best, judged) == (80, [80, 79])
    bisection = PromotionPath(measured)
    shortest_passing_prefix(measured, 80, bisection.check, None)
    assert len(bisection.judged) >= 7  # what the guidance saves: log2(80) more candidates


def test_an_offset_prediction_is_corrected_by_what_was_measured() -> None:
    measured = [10.0 + 0.25 * k for k in range(161)]
    predicted = [m - 3.0 * k / 80 for k, m in enumerate(measured)]  # exact for the uniform model, then pessimistic
    start = next(k for k, p in enumerate(predicted) if p >= TARGET)
    path = PromotionPath(measured)
    best, judged = shortest_passing_prefix(predicted, start, path.check, TARGET, uniform_db=measured[0])
    assert start > 90 and best == 80
    assert len(judged) <= 4


def test_no_passing_prefix_ends_on_the_whole_path() -> None:
    measured = [5.0 + 0.01 * k for k in range(41)]
    path = PromotionPath(measured)
    best, judged = shortest_passing_prefix(measured, 40, path.check, TARGET, uniform_db=measured[0])
    assert best == 40 and judged == [40]
    path = PromotionPath(measured)
    best, judged = shortest_passing_prefix(measured, 3, path.check, TARGET, uniform_db=measured[0])
    assert best == 40 and judged[-1] == 40 and len(judged) <= _bisection_bound(40)
