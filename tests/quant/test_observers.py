"""Calibration observers: range invariants on random streams, exact histogram merging, the error model and the KL
scores against plain loops, and each method's behaviour on known distributions."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.quant import observers as obs
from engine.quant.observers import (
    BINS,
    OBSERVERS,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    histogram_error,
    make_observer,
)

SPECS = ("minmax", "percentile", "percentile:99", "mse", "entropy")
GRIDS = ((8, False), (8, True), (16, True), (4, False))  # int8, int16 activations, and a coarse grid
KINDS = ("normal", "relu", "heavy", "constant", "zeros", "offset", "outliers", "negative")
FEW = settings(max_examples=80, deadline=None)  # each example runs every observer's searches


def sample(rng: np.random.Generator, kind: str, size: int, scale: float) -> np.ndarray:
    """``size`` values of one kind of activation, at magnitude ``scale``."""
    x = rng.standard_normal(size) * scale
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "heavy":
        x = rng.standard_t(1.5, size) * scale
    elif kind == "constant":
        x = np.full(size, rng.standard_normal() * scale)
    elif kind == "zeros":
        x = np.zeros(size)
    elif kind == "offset":  # one-sided and far from zero
        x = scale * (100 + rng.uniform(0, 1, size))
    elif kind == "outliers":
        x[rng.random(size) < 0.01] *= 1000
    elif kind == "negative":
        x = -np.abs(x)
    return x


@st.composite
def streams(draw: st.DrawFn) -> list[np.ndarray]:
    """A few updates of mixed kinds, magnitudes from 1e-20 to 1e20, float32 or float64, some empty, any shape."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-20, 20))
    arrays = []
    for _ in range(draw(st.integers(1, 4))):
        x = sample(rng, draw(st.sampled_from(KINDS)), draw(st.integers(0, 2000)), scale)
        x = x.astype(draw(st.sampled_from([np.float32, np.float64])))
        arrays.append(x.reshape(2, -1) if x.size % 2 == 0 else x)
    return arrays


def fed(spec: str, arrays: list[np.ndarray]) -> obs.Observer:
    observer = make_observer(spec)
    for x in arrays:
        observer.update(x)
    return observer


# ------------------------------------------------------------------------------------------- range invariants


@FEW
@given(streams())
def test_ranges_hold_zero_and_stay_within_what_was_seen(arrays: list[np.ndarray]) -> None:
    values = np.concatenate([x.reshape(-1).astype(np.float32) for x in arrays])
    minmax = fed("minmax", arrays)
    mse = fed("mse", arrays)
    assert isinstance(mse, MseObserver)
    for spec in SPECS:
        observer = mse if spec == "mse" else fed(spec, arrays)
        assert observer.count == values.size
        if values.size:
            assert (observer.seen_min, observer.seen_max) == (float(values.min()), float(values.max()))
        low, high = min(observer.seen_min, 0.0), max(observer.seen_max, 0.0)
        for bits, symmetric in GRIDS:
            lo, hi = observer.range(bits, symmetric)
            assert isinstance(lo, float) and isinstance(hi, float)
            if symmetric:
                assert lo == -hi and 0.0 <= hi <= max(-low, high)
            else:
                assert low <= lo <= 0.0 <= hi <= high
            if spec == "minmax":
                assert (lo, hi) == ((-max(-low, high), max(-low, high)) if symmetric else (low, high))
    for bits, symmetric in GRIDS:  # the MSE search never loses to minmax on its own criterion
        chosen = histogram_error(mse, *mse.range(bits, symmetric), bits, symmetric)
        assert chosen <= histogram_error(mse, *minmax.range(bits, symmetric), bits, symmetric)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("value", [3.25, -0.5, 0.0, 1e-30, -7e20])
def test_constant_tensor_range_is_zero_to_the_value(spec: str, value: float) -> None:
    observer = fed(spec, [np.full(1000, value, np.float32), np.full((3, 3), value)])
    v = float(np.float32(value))
    assert observer.range(8, False) == (min(v, 0.0), max(v, 0.0))
    assert observer.range(16, True) == ((-abs(v), abs(v)) if v else (0.0, 0.0))


def test_nothing_observed_gives_the_empty_range() -> None:
    for spec in SPECS:
        observer = fed(spec, [np.zeros(0, np.float32), np.zeros((0, 4))])
        assert observer.count == 0 and observer.range() == (0.0, 0.0) and observer.range(16, True) == (0.0, 0.0)
        assert (observer.seen_min, observer.seen_max) == (math.inf, -math.inf)


# ------------------------------------------------------------------------------------------------- histogram


def oracle(values: np.ndarray, exponent: int) -> tuple[int, np.ndarray]:
    """Bins of ``values`` at width 2**exponent computed directly: floor(x / w), counted."""
    k = np.floor(values.astype(np.float32).astype(np.float64) / math.ldexp(1.0, exponent)).astype(np.int64)
    return int(k.min()), np.bincount(k - k.min())


@settings(max_examples=150, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_streaming_merges_exactly(arrays: list[np.ndarray], random) -> None:
    """Any order and grouping of the updates gives the histogram of one update with every value, which is the
    direct binning at the finest power-of-two width that fits the values in BINS bins."""
    values = np.concatenate([x.reshape(-1) for x in arrays]).astype(np.float32)
    one = HistogramObserver()
    one.update(values)
    shuffled = [x.reshape(-1) for x in arrays]
    random.shuffle(shuffled)
    pieces = [piece for x in shuffled for piece in np.array_split(x, random.randint(1, 3))]
    for stream in (arrays, pieces):
        streamed = HistogramObserver()
        for x in stream:
            streamed.update(x)
        a, b = streamed.histogram, one.histogram
        assert (a.exponent, a.first) == (b.exponent, b.first) and np.array_equal(a.counts, b.counts)
    if values.size:
        h = one.histogram
        first, counts = oracle(values, h.exponent)
        assert h.first == first and np.array_equal(h.counts, counts) and h.counts.sum() == values.size
        assert 1 <= h.counts.size <= BINS and h.counts[0] > 0 and h.counts[-1] > 0
        assert h.edges[0] <= values.min() and values.max() < h.edges[-1]
        _, counts = oracle(values, h.exponent - 1)  # one width finer would take more than BINS bins ...
        amax = float(np.abs(values).max())
        finest = -1000 if amax == 0 else max(-1000, math.frexp(amax)[1] - 40)
        assert counts.size > BINS or h.exponent == finest  # ... unless the width is the finest allowed


def test_width_doubles_and_pairs_merge() -> None:
    rng = np.random.default_rng(0)
    small, wide = rng.uniform(0, 1, 10_000), rng.uniform(-1000, 1000, 10_000)
    observer = HistogramObserver()
    observer.update(small)
    narrow = observer.histogram
    observer.update(wide)
    h = observer.histogram
    assert narrow.exponent == -12 and h.exponent == -1  # [0, 1) in 4096 bins of 2**-12; [-1000, 1000] of 0.5
    assert (h.first, list(h.counts)) == (lambda f, c: (f, list(c)))(*oracle(np.concatenate([small, wide]), -1))
    observer.update(np.array([1500.0]))  # one doubling: pairs merge once
    assert observer.histogram.exponent == 0
    assert np.array_equal(observer.histogram.counts, oracle(np.concatenate([small, wide, [1500.0]]), 0)[1])
    observer.update(np.full(4, 1e6))  # far outside: the width jumps many doublings at once
    assert observer.histogram.counts.size <= BINS and observer.histogram.counts.sum() == 20_005


# ---------------------------------------------------------------------------------------------- error model


def quantized(x: np.ndarray, lo: float, hi: float, bits: int, symmetric: bool) -> np.ndarray:
    """What the full-integer pass's parameters make of ``x``: codes rounded and saturated, then dequantized."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        scale = max(-lo, hi) / q
        return np.clip(np.rint(x / scale), -q, q) * scale
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return (np.clip(np.rint(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(8, False), (8, True), (16, True), (4, False), (2, False), (12, True)]),
    st.floats(0.05, 1.0),
    st.floats(0.05, 1.0),
)
def test_histogram_error_is_the_expected_error_of_values_uniform_in_each_bin(grid, r_lo, r_hi) -> None:
    bits, symmetric = grid
    observer = HistogramObserver()
    observer.update(np.array([-1.2, 0.3, 2.5, 2.5, 2.6, 7.0, -0.001], np.float32))
    lo, hi = r_lo * observer.seen_min, r_hi * observer.seen_max
    h = observer.histogram
    nonzero = np.flatnonzero(h.counts)
    m = 20_000  # midpoints of m equal slices of each non-empty bin, each carrying count / m
    points = (h.first + nonzero[:, None] + (np.arange(m) + 0.5) / m) * h.width
    expected = ((points - quantized(points, lo, hi, bits, symmetric)) ** 2).sum(axis=1) @ (h.counts[nonzero] / m)
    assert histogram_error(observer, lo, hi, bits, symmetric) == pytest.approx(expected, rel=1e-4)


def test_histogram_error_of_the_zero_range_is_the_energy() -> None:
    observer = HistogramObserver()
    observer.update(np.array([1.0, -3.0], np.float32))
    w = observer.histogram.width  # values uniform in [1, 1 + w) and [-3, -3 + w): E[x**2] per bin
    expected = ((1 + w) ** 3 - 1) / (3 * w) + (27 - (3 - w) ** 3) / (3 * w)
    assert histogram_error(observer, 0.0, 0.0) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------------- methods


def gaussian_with_outliers(n: int = 1_000_000) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    x[:4] = [50, -50, 49, -48]
    return x


def test_percentile_matches_numpy_on_a_normal_sample() -> None:
    x = np.random.default_rng(1).standard_normal(1_000_000).astype(np.float32)
    observer = PercentileObserver(99.9)
    for part in np.array_split(x, 7):
        observer.update(part)
    lo, hi = observer.range()
    assert lo == pytest.approx(np.percentile(x, 0.1), abs=0.005)
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=0.005)
    _, a = observer.range(16, True)
    assert a == pytest.approx(np.percentile(np.abs(x), 99.9), abs=0.005)
    relu = PercentileObserver(99.0)
    relu.update(np.maximum(x, 0))
    lo, hi = relu.range()
    assert lo == 0.0 and hi == pytest.approx(np.percentile(np.maximum(x, 0), 99.0), abs=0.005)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_and_entropy_clip_outliers_minmax_keeps(symmetric: bool) -> None:
    x = gaussian_with_outliers()
    observers = {spec: fed(spec, [x]) for spec in ("minmax", "mse", "entropy")}
    ranges = {spec: o.range(8, symmetric) for spec, o in observers.items()}
    assert ranges["minmax"][1] == 50.0
    assert ranges["mse"][1] < 30 and ranges["mse"][0] > -30  # a compromise: clipping four values costs their distance
    assert 3 < ranges["entropy"][1] < 6 and -6 < ranges["entropy"][0] < -3  # near the bulk
    mse = observers["mse"]
    error = histogram_error(mse, *ranges["mse"], 8, symmetric)
    assert error < 0.5 * histogram_error(mse, *ranges["minmax"], 8, symmetric)


def test_mse_keeps_the_outliers_when_clipping_them_costs_more() -> None:
    """Three values at 1000 sigma: clipping them costs more squared error than rounding the bulk to zero."""
    x = np.random.default_rng(4).standard_normal(100_000).astype(np.float32)
    x[:3] = [1000, -800, 950]
    lo, hi = fed("mse", [x]).range()
    assert lo < -790 and hi > 990  # at most aligned to the grid


def test_mse_on_relu_clips_only_the_top() -> None:
    x = np.maximum(np.random.default_rng(5).standard_normal(200_000), 0).astype(np.float32)
    mse = fed("mse", [x])
    lo, hi = mse.range(4, False)  # 16 levels: clipping pays
    assert lo == 0.0 and 1.5 < hi < float(x.max()) * 0.8
    assert histogram_error(mse, lo, hi, 4) < histogram_error(mse, 0.0, float(x.max()), 4)


def reference_divergence(a0: int, h: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q) of one entropy candidate, with plain loops, as EntropyObserver defines it."""
    full = np.concatenate([np.zeros(a0), h]).astype(np.float64)
    if a0 == 0 and full.size > 1:
        full[0] = full[1]
    p = full[:i].copy()
    p[-1] += full[i:].sum()
    q = np.zeros(i)
    for g in range(levels):
        start, stop = math.ceil(g * i / levels), math.ceil((g + 1) * i / levels)
        segment = full[start:stop]
        if (segment > 0).any():
            q[start:stop][segment > 0] = segment.sum() / (segment > 0).sum()
    if q[-1] == 0 and p[-1] > 0:
        q[-1] = obs._EPSILON
    p, q = p / p.sum(), q / q.sum()
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


@pytest.mark.parametrize("kind", ["normal", "relu", "heavy", "outliers", "offset"])
def test_entropy_scores_match_plain_loops(kind: str) -> None:
    rng = np.random.default_rng(6)
    observer = EntropyObserver()
    observer.update(sample(rng, kind, 50_000, 1.0).astype(np.float32))
    a0, h = observer._folded()
    divergence = obs._Divergence(a0, h)
    for levels in (16, 128, 256):
        i = np.arange(max(a0 + 1, levels), a0 + h.size + 1)
        scores = divergence.scores(i, np.full(i.size, levels))
        assert np.isfinite(scores).all()
        picked = divergence.best(i, np.full(i.size, levels))
        assert scores[i == picked][0] == scores.min() and not (scores[i > picked] == scores.min()).any()
        for j in [*range(0, i.size, max(1, i.size // 25)), int(np.flatnonzero(i == picked)[0])]:
            assert scores[j] == pytest.approx(reference_divergence(a0, h, int(i[j]), levels), rel=1e-7, abs=1e-12)


def test_entropy_uses_all_the_codes_of_a_one_sided_grid() -> None:
    """ReLU data: the asymmetric grid spends 256 codes on [0, t], so its search scores 256 levels, not 128."""
    x = np.maximum(np.random.default_rng(7).standard_normal(300_000), 0).astype(np.float32)
    observer = fed("entropy", [x])
    a0, h = observer._folded()
    divergence = obs._Divergence(a0, h)
    w = observer.histogram.width
    for levels, (bits, symmetric) in ((256, (8, False)), (128, (8, True))):
        i = np.arange(levels, a0 + h.size + 1)
        assert observer.range(bits, symmetric)[1] == min(divergence.best(i, np.full(i.size, levels)) * w, x.max())


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("spec", SPECS)
def test_nan_and_infinity_are_refused_and_leave_the_observer_as_it_was(spec: str) -> None:
    observer = fed(spec, [np.array([1.0, -2.0], np.float32)])
    before = observer.range()
    for bad in (np.array([0.0, np.nan]), np.array([np.inf, 1.0], np.float32), np.array([-np.inf]), np.array([1e39])):
        with pytest.raises(EngineError, match="NaN"):
            observer.update(bad)
    assert observer.count == 2 and observer.range() == before
    with pytest.raises(EngineError, match="real numbers"):
        observer.update(np.array(["a"]))


@FEW
@given(
    st.sampled_from(SPECS),
    st.sampled_from([(0.0, 6.0), (-1.0, 1.0), (0.0, math.inf)]),
    st.integers(0, 2**32 - 1),
    st.integers(1, 6),
)
def test_values_promised_within_bounds_give_the_same_observer(spec: str, bounds, seed: int, updates: int) -> None:
    """``assume_within`` (a fused RELU6's [0, 6]) changes nothing an observer reports for values that keep the
    promise, including streams that reach a bound early, late or never."""
    rng = np.random.default_rng(seed)
    lo, hi = bounds
    scales = rng.choice([0.5, 3.0, 10.0], updates)
    arrays = [np.clip(rng.standard_normal(int(rng.integers(0, 300))) * s, lo, hi).astype(np.float32) for s in scales]
    promised = make_observer(spec)
    promised.assume_within(lo, hi)
    for x in arrays:
        promised.update(x)
    plain = fed(spec, arrays)
    assert (promised.count, promised.seen_min, promised.seen_max) == (plain.count, plain.seen_min, plain.seen_max)
    for bits, symmetric in GRIDS:
        assert promised.range(bits, symmetric) == plain.range(bits, symmetric)


def test_an_extremes_only_observer_stops_reading_at_the_promised_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once min-max has seen both promised bounds it reads no more values (only counts them); with one bound
    reached (a RELU's 0) it still reads for the other; a histogram observer reads every update."""
    reads: list[int] = []
    values = obs._values
    monkeypatch.setattr(obs, "_values", lambda x: reads.append(np.size(x)) or values(x))
    full = np.array([0.0, 3.0, 6.0], np.float32)
    minmax = make_observer("minmax")
    minmax.assume_within(0.0, 6.0)
    for x in (np.array([1.0, 2.0], np.float32), full, full[:2], np.array([5.0], np.float32)):
        minmax.update(x)
    assert reads == [2, 3] and minmax.count == 8 and (minmax.seen_min, minmax.seen_max) == (0.0, 6.0)
    reads.clear()
    relu = make_observer("minmax")
    relu.assume_within(0.0, math.inf)
    for x in (full, np.array([7.0], np.float32), np.array([np.nan], np.float32)):
        with pytest.raises(EngineError, match="NaN") if np.isnan(x).any() else nullcontext():
            relu.update(x)
    assert reads == [3, 1, 1] and relu.seen_max == 7.0
    reads.clear()
    histogram = make_observer("percentile")
    histogram.assume_within(0.0, 6.0)
    for x in (full, full):
        histogram.update(x)
    assert reads == [3, 3]


def test_bad_bits_and_symmetric_are_refused() -> None:
    observer = fed("mse", [np.array([1.0, -2.0])])
    for bits in (1, 17, 8.0, True, "8", None):
        with pytest.raises(EngineError, match="bit width"):
            observer.range(bits)
    with pytest.raises(EngineError, match="symmetric"):
        observer.range(8, "yes")


def test_make_observer() -> None:
    built_in = {
        "minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MseObserver, "entropy": EntropyObserver
    }  # fmt: skip
    assert set(built_in) <= set(OBSERVERS)
    for name, cls in built_in.items():
        made = make_observer(name)
        assert type(made) is cls and made is not make_observer(name)
    assert type(make_observer("minmax")) is MinMaxObserver
    assert make_observer("percentile").percentile == 99.99
    assert make_observer("percentile:99.9").percentile == 99.9
    assert make_observer(" Percentile:100 ").percentile == 100.0
    assert type(make_observer("MSE")) is MseObserver
    for bad in ("", "max", "kl"):
        with pytest.raises(EngineError, match="unknown calibration observer") as info:
            make_observer(bad)
        assert repr(bad) in str(info.value) and all(name in str(info.value) for name in built_in)
    bad_arguments = [(f"percentile:{p}", "percentile must be") for p in ("", "abc", "50", "100.5", "nan")]
    bad_arguments += [("minmax:1", "takes no argument"), ("mse:3", "takes no argument")]
    for bad, why in [*bad_arguments, (99.9, "named by a string"), (None, "named by a string")]:
        with pytest.raises(EngineError, match=why) as info:
            make_observer(bad)
        assert repr(bad) in str(info.value)
    for bad in (50, 0, 101, -1, math.nan, True, "99"):
        with pytest.raises(EngineError, match="percentile must be"):
            PercentileObserver(bad)
