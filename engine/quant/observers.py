"""Calibration observers: a stream of one tensor's activation values in, a quantization range [lo, hi] out.

Full-integer quantization needs a range per activation, and the values an activation takes are only seen one
calibration sample at a time, so an observer takes them as a stream (``update``) in constant memory and
chooses the range at the end (``range``). One subclass per method, as onnxruntime's calibraters:

- ``minmax``: the extremes seen. Never clips, so one outlier sets the resolution of everything else.
- ``percentile``: clips the tails at a percentile (default 99.99), from the histogram.
- ``mse``: the range with the least expected squared error (rounding plus clipping) over the histogram, for
  the grid that will be used (bits, asymmetric or symmetric).
- ``entropy``: TensorRT's KL-divergence threshold search on the histogram of |x|.

Every range holds zero (lo <= 0 <= hi, so zero is exact on the grid) and lies within [min(seen_min, 0),
max(seen_max, 0)]: an observer may clip, never widen. The grids are those the full-integer pass builds
(engine/passes/full_integer/params.py): asymmetric ``2**bits`` levels with scale (hi - lo) / (2**bits - 1) and zero
point round(qmin - lo / scale) (half to even, as Python's round), or symmetric (int16 activations) with zero
point 0 and codes +-(2**(bits-1) - 1).

Values are observed as float32, the type activations have in the model. NaN and infinity raise
``EngineError`` (the caller adds the tensor's name); empty arrays are ignored. An observer that saw nothing
gives (0.0, 0.0), the range of an empty tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from engine.errors import EngineError
from engine.registry import OBSERVERS

# Bins of the streaming histogram. 4096 keeps the width between range/4095 and range/2048 (a power of two
# rounds it up at most 2x), so an int8 step of a full-range grid spans 8-16 bins and a range clipped to a
# quarter still 2-4; for a zero-centred tensor the |x| histogram then has 1024-2048 bins (TensorRT's KL search
# uses 2048). The searches cost O(BINS) per candidate; memory is 32 KB per tensor.
BINS = 4096
# Finest bin width, relative to the largest |value| (2**-40 of it) and absolute (2**-1000): it bounds the bin
# indices (|index| < 2**40, exact in int64 and float64) for constant or nearly constant tensors.
_RELATIVE_BITS = 40
_MIN_EXPONENT = -1000
_PERCENTILE = 99.99


def _bits(bits: int) -> int:
    if not (isinstance(bits, int | np.integer) and not isinstance(bits, bool) and 2 <= bits <= 16):
        raise EngineError(f"quantization bit width must be an integer from 2 to 16, got {bits!r}")
    return int(bits)


def _values(values: np.ndarray) -> np.ndarray:
    """``values`` as a flat float32 array (a view when it already is one)."""
    a = np.asarray(values)
    if a.dtype.kind not in "fiub":
        raise EngineError(f"activation values must be real numbers, got {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        return a.reshape(-1).astype(np.float32, copy=False)


class Observer:
    """Base class: tracks the count and extremes of the values seen; subclasses choose the range from them.
    ``spec`` is the name `make_observer` made it from ("" otherwise)."""

    spec = ""

    def __init__(self) -> None:
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self._floor, self._ceiling = -math.inf, math.inf

    def assume_within(self, lo: float, hi: float) -> None:
        """Promise that every value of the tensor lies in [lo, hi] (what a fused RELU6 lets through).  An observer
        that keeps only the extremes then stops computing one once it has reached its bound, since no later
        sample can move it: the same range, and a RELU6 network's calibration reads almost none of its
        activations after the first samples.  Observers that look at every value (histograms) ignore it."""
        if type(self)._observe is Observer._observe:
            self._floor, self._ceiling = float(lo), float(hi)

    @property
    def count(self) -> int:
        """Number of values seen."""
        return self._count

    @property
    def seen_min(self) -> float:
        """Smallest value seen (+inf before any)."""
        return self._min

    @property
    def seen_max(self) -> float:
        """Largest value seen (-inf before any)."""
        return self._max

    def update(self, values: np.ndarray) -> None:
        """Observe one sample's (or batch's) values, any shape. The observer is unchanged if they are refused.
        The values are lent for the call (calibration passes the interpreter's own buffer): keep a copy, if any."""
        if self._min <= self._floor and self._max >= self._ceiling:  # at both promised bounds: nothing to read
            self._count += np.size(values)
            return
        x = _values(values)
        if x.size == 0:
            return
        lo = self._min if self._min <= self._floor else float(x.min())
        hi = self._max if self._max >= self._ceiling else float(x.max())
        lo, hi = self._extremes(lo, hi)
        self._observe(x, lo, hi)
        self._min, self._max, self._count = lo, hi, self._count + x.size

    def _extremes(self, lo: float, hi: float) -> tuple[float, float]:
        """The extremes seen so far including a sample whose own are ``lo`` and ``hi`` (NaN propagates through
        numpy's min and max, so checking these two checks every value)."""
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise EngineError("activation values contain NaN or infinity (as float32); they cannot be calibrated")
        return min(lo, self._min), max(hi, self._max)

    def _observe(self, x: np.ndarray, lo: float, hi: float) -> None:
        """Subclass hook: ``x`` (flat float32, finite, lent for the call as in ``update``), the extremes
        including it."""

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
        """The chosen [lo, hi] for a ``bits``-bit grid: lo <= 0 <= hi, within the seen extremes (and 0);
        ``symmetric`` (zero point 0, int16 activations) gives (-a, a)."""
        bits = _bits(bits)
        if not isinstance(symmetric, bool | np.bool_):
            raise EngineError(f"symmetric must be true or false, got {symmetric!r}")
        lo0, hi0 = min(self._min, 0.0), max(self._max, 0.0)
        if self._count == 0 or lo0 == hi0:
            return 0.0, 0.0
        if symmetric:
            amax = max(-lo0, hi0)
            a = min(max(float(self._symmetric(bits, amax)), 0.0), amax)
            return (-a if a else 0.0), a
        lo, hi = self._asymmetric(bits, lo0, hi0)
        return min(max(float(lo), lo0), 0.0), max(min(float(hi), hi0), 0.0)

    def _symmetric(self, bits: int, amax: float) -> float:
        """Subclass hook: the magnitude a of the symmetric range, given the largest seen |value| (> 0)."""
        return amax

    def _asymmetric(self, bits: int, lo0: float, hi0: float) -> tuple[float, float]:
        """Subclass hook: the range, given the seen extremes widened to hold zero (lo0 < hi0)."""
        return lo0, hi0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self._count}, seen=[{self._min:g}, {self._max:g}])"


class MinMaxObserver(Observer):
    """The extremes seen: never clips (no histogram kept)."""


# ----------------------------------------------------------------------------------------------- histogram


class Histogram(NamedTuple):
    """Counts of bins of width ``2**exponent`` anchored at 0 (bin k covers [k*w, (k+1)*w)); ``counts[i]`` is bin
    ``first + i``, from the bin of the smallest value seen to that of the largest (at most BINS)."""

    exponent: int
    first: int
    counts: np.ndarray

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def edges(self) -> np.ndarray:
        """The len(counts) + 1 bin edges."""
        return (self.first + np.arange(self.counts.size + 1)) * self.width


def _index(x: float, exponent: int) -> int:
    """Bin of ``x`` at width 2**exponent: the same float64 product and floor as the vectorized binning."""
    return math.floor(x * math.ldexp(1.0, -exponent))


def _exponent(lo: float, hi: float) -> int:
    """The bin width (its exponent) for values in [lo, hi]: the finest power of two whose bins from lo's to
    hi's number at most BINS, but not below the finest width allowed. A function of (lo, hi) alone that never
    decreases as they widen: so a stream ends at the width one update of all its values would pick."""
    amax = max(-lo, hi)
    floor = _MIN_EXPONENT if amax == 0 else max(_MIN_EXPONENT, math.frexp(amax)[1] - _RELATIVE_BITS)
    if hi == lo:
        return floor
    # 2**estimate >= (hi - lo) / (BINS - 1) fits; any width 4x finer than that estimate cannot.
    e = max(floor, math.frexp((hi - lo) / (BINS - 1))[1] - 2)
    while _index(hi, e) - _index(lo, e) > BINS - 1:
        e += 1
    return e


class HistogramObserver(Observer):
    """Base of the histogram methods: one streaming histogram of at most BINS bins of a power-of-two width.

    When a value falls outside the bins, the width doubles (as often as needed) and pairs of bins merge: with
    bins anchored at 0, bin k at width w is exactly bins 2k and 2k+1 at width w/2 (floor(floor(x/w)/2) =
    floor(x/2w)), so merging loses nothing that a histogram at the coarser width would have had, and the result
    does not depend on the order or grouping of the updates.
    """

    def __init__(self) -> None:
        super().__init__()
        self._exp = _MIN_EXPONENT
        self._first = 0
        self._counts = np.zeros(0, np.int64)
        self._cache: tuple | None = None

    @property
    def histogram(self) -> Histogram:
        return Histogram(self._exp, self._first, self._counts.copy())

    def _observe(self, x: np.ndarray, lo: float, hi: float) -> None:
        e = _exponent(lo, hi)
        first = _index(lo, e)
        counts = np.zeros(_index(hi, e) - first + 1, np.int64)
        if e == self._exp:
            counts[self._first - first : self._first - first + self._counts.size] += self._counts
        elif self._counts.size:  # pairs of bins merge, as often as the width doubled: k -> floor(k / 2**shift)
            old = self._first + np.arange(self._counts.size, dtype=np.int64)
            np.add.at(counts, (old >> min(e - self._exp, 63)) - first, self._counts)
        from engine.quant import kernels

        kernels.histogram_add(x, e, first, counts)
        self._exp, self._first, self._counts, self._cache = e, first, counts, None

    def _support(self) -> tuple[np.ndarray, np.ndarray]:
        """The edges of the non-empty bins (float64, increasing) and the count between each two consecutive ones
        (0 across a gap): runs of empty bins (between the bulk and outliers) cost nothing in the searches."""
        if self._cache is None:
            nonzero = np.flatnonzero(self._counts)
            ends = np.unique(np.concatenate([nonzero, nonzero + 1]))
            edges = (self._first + ends) * math.ldexp(1.0, self._exp)
            bins = np.diff(ends) == 1
            weights = np.where(bins, self._counts[np.where(bins, ends[:-1], 0)], 0).astype(np.float64)
            self._cache = (edges, weights)
        return self._cache

    def _folded(self) -> tuple[int, np.ndarray]:
        """The histogram of |x| at the same width, as (index of its first bin, counts): bin k < 0, [kw, (k+1)w),
        is |x| in ((-k-1)w, -kw], i.e. bin -k-1 of |x|. At most BINS bins, since all bins seen fit in BINS."""
        k = self._first + np.arange(self._counts.size, dtype=np.int64)
        a = np.where(k >= 0, k, -k - 1)
        a0 = int(a.min())
        folded = np.zeros(int(a.max()) - a0 + 1, np.int64)
        np.add.at(folded, a - a0, self._counts)
        return a0, folded

    def errors(self, lo: np.ndarray, hi: np.ndarray, bits: int = 8, symmetric: bool = False) -> np.ndarray:
        """Expected squared error (rounding plus clipping), summed over the values in the histogram, of the grid
        each candidate range [lo[i], hi[i]] gives (see the module docstring), taking values as uniform within
        each bin: exact per bin (a closed form), so it stays right where bins are coarser than the grid step
        (16 bits) or the range clips deep into the bins, where bin centres would not."""
        bits = _bits(bits)
        lo, hi = np.atleast_1d(np.asarray(lo, np.float64)), np.atleast_1d(np.asarray(hi, np.float64))
        if not self._counts.size:
            return np.zeros(np.broadcast(lo, hi).shape)
        if symmetric:
            q = 2 ** (bits - 1) - 1
            s = np.maximum(-lo, hi) / q
            low, high = -q * s, q * s
        else:
            qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            s = (hi - lo) / (qmax - qmin)
            with np.errstate(divide="ignore", invalid="ignore"):
                zero_point = np.clip(np.rint(qmin - lo / s), qmin, qmax)
            zero_point = np.where(s > 0, zero_point, 0.0)
            low, high = (qmin - zero_point) * s, (qmax - zero_point) * s
        # In units of the step s (1 where s = 0: everything then rounds to 0 and all error is clipping), the error
        # has a primitive at each edge t: with c = t clipped to the grid's ends, u = c/s, m = round(u), f = u - m,
        # d = (t - c)/s, it is m/12 + f**3/3 (rounding: e(u) = u - round(u) integrates to 1/12 per step) plus
        # d**3/3 (clipping, signed). A bin's error is its count times the difference across it over its width.
        edges, weights = self._support()
        unit = np.where(s > 0, s, 1.0)[:, None]
        t = edges[None, :]
        c = np.clip(t, low[:, None], high[:, None])
        d = t - c
        d /= unit
        c /= unit
        m = np.floor(c + 0.5)
        c -= m
        primitive = c * c * c
        primitive += d * d * d
        primitive /= 3
        primitive += m / 12
        per_value = unit[:, 0] ** 3 / math.ldexp(1.0, self._exp)
        return (np.diff(primitive, axis=1) @ weights) * per_value


def histogram_error(observer: HistogramObserver, lo: float, hi: float, bits: int = 8, symmetric: bool = False) -> float:
    """Expected squared error over ``observer``'s histogram of quantizing with the grid of [lo, hi] (see
    ``HistogramObserver.errors``): the quantity ``MseObserver`` minimizes."""
    return float(observer.errors(np.array([lo]), np.array([hi]), bits, symmetric)[0])


def _quantile(first: int, counts: np.ndarray, width: float, fraction: float, low: float, high: float) -> float:
    """The value below which ``fraction`` of the histogram's values lie, taking them as uniform within each bin
    (within [low, high], the extremes seen: so a constant tensor gives its value exactly)."""
    cumulative = np.cumsum(counts)
    target = fraction * float(cumulative[-1])
    k = min(int(np.searchsorted(cumulative, target)), counts.size - 1)
    inside = (target - float(cumulative[k] - counts[k])) / counts[k] if counts[k] else 1.0
    lower, upper = max((first + k) * width, low), min((first + k + 1) * width, high)
    return lower + min(max(inside, 0.0), 1.0) * max(upper - lower, 0.0)


class PercentileObserver(HistogramObserver):
    """Clips the tails at a percentile p from the histogram: [q(100 - p), q(p)] of x, or for a symmetric grid
    q(p) of |x| (one tail: a symmetric grid has one magnitude)."""

    def __init__(self, percentile: float = _PERCENTILE) -> None:
        super().__init__()
        valid = isinstance(percentile, int | float | np.integer | np.floating) and not isinstance(percentile, bool)
        if not (valid and 50 < percentile <= 100):
            raise EngineError(f"percentile must be a number above 50 and at most 100, got {percentile!r}")
        self.percentile = float(percentile)

    def _symmetric(self, bits: int, amax: float) -> float:
        first, counts = self._folded()
        smallest = 0.0 if self._min <= 0 <= self._max else min(abs(self._min), abs(self._max))  # of |x|
        return _quantile(first, counts, math.ldexp(1.0, self._exp), self.percentile / 100, smallest, amax)

    def _asymmetric(self, bits: int, lo0: float, hi0: float) -> tuple[float, float]:
        w, p = math.ldexp(1.0, self._exp), self.percentile / 100
        low = _quantile(self._first, self._counts, w, 1 - p, self._min, self._max)
        return low, _quantile(self._first, self._counts, w, p, self._min, self._max)

    def __repr__(self) -> str:
        return f"PercentileObserver({self.percentile:g}, count={self._count})"


# The MSE search: ratios of the seen extremes, first on a coarse geometric grid down to 2**-10 (outliers a
# thousand times the bulk are clipped), then refined twice around the best (steps 2**(1/32), 2**(1/256)).
_COARSE = 2.0 ** (-np.arange(41) / 4)
_REFINE = [2.0 ** (np.arange(-7, 8) / 32), 2.0 ** (np.arange(-7, 8) / 256)]
_SWEEPS = 4
# The entropy search's count in an empty last bin of Q that values beyond t are folded into (see below).
_EPSILON = 1e-4
# Most (candidates x levels) entries the entropy search scores in one batch.
_BATCH = BINS * 257


class MseObserver(HistogramObserver):
    """The range whose grid has the least expected squared error over the histogram (``histogram_error``).

    Candidates shrink hi and lo from the seen extremes by ratios (one coordinate at a time, each a vectorized
    batch of candidates, repeated until neither improves); the minmax range is the starting point and only a
    strictly lower error replaces it, so the result is never worse than minmax on the histogram.
    """

    def _search(self, extremes: list[float], evaluate: Callable[[np.ndarray], np.ndarray]) -> list[float]:
        """Coordinate descent over ratios r of ``extremes`` (a coordinate at 0 stays there); ``evaluate``
        maps a (candidates, coordinates) array of ratios to errors."""
        best = np.ones(len(extremes))
        best_error = evaluate(best[None, :])[0]
        sides = [i for i, x in enumerate(extremes) if x != 0]
        for stage in (None, *_REFINE):
            for _ in range(_SWEEPS):
                improved = False
                for i in sides:
                    grid = _COARSE if stage is None else np.minimum(best[i] * stage, 1.0)
                    candidates = np.repeat(best[None, :], grid.size, axis=0)
                    candidates[:, i] = grid
                    errors = evaluate(candidates)
                    j = int(np.argmin(errors))
                    if errors[j] < best_error:
                        best, best_error, improved = candidates[j], errors[j], True
                if not improved:
                    break
        return [r * x for r, x in zip(best, extremes, strict=True)]

    def _symmetric(self, bits: int, amax: float) -> float:
        (a,) = self._search([amax], lambda r: self.errors(-r[:, 0] * amax, r[:, 0] * amax, bits, True))
        return a if histogram_error(self, -a, a, bits, True) <= histogram_error(self, -amax, amax, bits, True) else amax

    def _asymmetric(self, bits: int, lo0: float, hi0: float) -> tuple[float, float]:
        lo, hi = self._search([lo0, hi0], lambda r: self.errors(r[:, 0] * lo0, r[:, 1] * hi0, bits, False))
        better = histogram_error(self, lo, hi, bits) <= histogram_error(self, lo0, hi0, bits)
        return (lo, hi) if better else (lo0, hi0)


class EntropyObserver(HistogramObserver):
    """TensorRT's entropy calibration: the threshold t on |x| whose quantized histogram diverges least (KL
    divergence) from the observed one.

    For each candidate t (a bin edge of the |x| histogram, from as many bins as levels up to the largest |x|),
    the reference P is the histogram below t with everything beyond folded into its last bin; Q merges those
    bins into L levels of (nearly) equal width and spreads each level's count evenly over its non-empty bins;
    the score is KL(P || Q). All candidates are scored at once from prefix sums, in O(candidates * L) rather
    than O(bins**2). Where t's last bin is empty but values lie beyond it, Q there is _EPSILON of a count (the
    smoothing constant of MXNet's and onnxruntime's versions, which smooth every empty bin; elsewhere P and Q
    share their empty bins, so only this one would make the divergence infinite), so a t in the gap before
    outliers can clip them. Ties go to the larger t. As in NVIDIA's pytorch-quantization, bin 0 counts as much
    as bin 1: a ReLU's zeros are exact on any grid, and their spike would otherwise push t down.

    Symmetric grids: L = 2**(bits-1) (128 for int8, as in TensorRT). Asymmetric grids: the same 1-D search on
    |x|, then [-t, t] intersected with the seen extremes; L is the number of codes the asymmetric grid of that
    range puts in [0, t] (2**bits * t / its width: 128 for zero-centred data, 256 for one-sided data such as
    ReLU outputs, where the grid spends all its codes on one side). One search instead of a 2-D search of both
    tails: cheaper, and it is the method whose behaviour is known. With more levels than bins (16 bits) Q
    equals P and there is nothing to measure, so t is the largest |x| (no clipping).
    """

    def _threshold(self, bits: int, lo0: float, hi0: float, symmetric: bool) -> float:
        a0, h = self._folded()
        width = math.ldexp(1.0, self._exp)
        end = a0 + h.size  # t = end * width holds every value
        i = np.arange(max(a0 + 1, 2 ** (bits - 1)), end + 1, dtype=np.int64)  # candidate t = i * width
        if symmetric:
            levels = np.full(i.size, 2 ** (bits - 1), np.int64)
        else:
            t = i * width
            codes = np.ceil(2**bits * t / (np.minimum(t, hi0) - np.maximum(-t, lo0)))
            levels = np.clip(codes, 2 ** (bits - 1), 2**bits).astype(np.int64)
        keep = i >= levels
        i, levels = i[keep], levels[keep]
        if i.size == 0:
            return end * width
        score = _Divergence(a0, h)
        # int8 scores every candidate in one batch (at most BINS x 257); wider grids (9-12 bits, whose levels
        # number thousands) score every stride-th candidate, then every one around the best.
        stride = max(1, -(-i.size * (int(levels.max()) + 1) // _BATCH))
        best = score.best(i[::stride], levels[::stride])
        if stride > 1:
            near = np.abs(i - best) < stride
            best = score.best(i[near], levels[near])
        return float(best) * width

    def _symmetric(self, bits: int, amax: float) -> float:
        return self._threshold(bits, -amax, amax, True)

    def _asymmetric(self, bits: int, lo0: float, hi0: float) -> tuple[float, float]:
        t = self._threshold(bits, lo0, hi0, False)
        return -t, t


class _Divergence:
    """KL(P || Q) of EntropyObserver's candidates, from prefix sums over the |x| histogram (bins from a0)."""

    def __init__(self, a0: int, h: np.ndarray) -> None:
        counts = h.astype(np.float64)
        if a0 == 0 and counts.size > 1:
            counts[0] = counts[1]
        self.a0, self.size, self.total = a0, counts.size, float(counts.sum())
        self.cum = np.concatenate([[0.0], np.cumsum(counts)])
        self.nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
        with np.errstate(divide="ignore", invalid="ignore"):
            self.cum_plogp = np.concatenate([[0.0], np.cumsum(np.where(counts > 0, counts * np.log(counts), 0.0))])

    def _at(self, prefix: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Prefix sums over the |x| bins [0, index); those below a0 are empty."""
        return prefix[np.clip(index - self.a0, 0, self.size)]

    def scores(self, i: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """The divergence of each candidate: t = i bins, quantized into ``levels`` levels."""
        total = self.total
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = self._at(self.cum, i)  # the count below t
            beyond = total - inside
            last = inside - self._at(self.cum, i - 1)  # the count of t's last bin
            p_last = last + beyond
            p_log_p = self._at(self.cum_plogp, i - 1) + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
            # Level g covers bins [ceil(g * i / L), ceil((g + 1) * i / L)); columns beyond L are empty.
            g = np.arange(int(levels.max()) + 1)
            bounds = np.minimum((g[None, :] * i[:, None] + levels[:, None] - 1) // levels[:, None], i[:, None])
            mass = np.diff(self._at(self.cum, bounds), axis=1)
            filled = np.diff(self._at(self.nonzero, bounds), axis=1)
            q_log_q = np.where(mass > 0, mass * np.log(mass / filled), 0.0).sum(axis=1)
            # Q in t's last bin (in level L - 1), which the folded values are scored against; _EPSILON if empty.
            rows = np.arange(i.size)
            empty = last == 0
            q_last = np.where(empty, _EPSILON, mass[rows, levels - 1] / filled[rows, levels - 1])
            divergence = (p_log_p - q_log_q - beyond * np.log(q_last)) / total - math.log(total)
            return divergence + np.log(inside + np.where(empty, _EPSILON, 0.0))

    def best(self, i: np.ndarray, levels: np.ndarray) -> int:
        """The candidate of least divergence, the largest of equals."""
        divergence = self.scores(i, levels)
        return int(i[i.size - 1 - int(np.argmin(divergence[::-1]))])


def _without_argument(kind: type[Observer]) -> Callable[[str | None], Observer]:
    def make(argument: str | None) -> Observer:
        if argument is not None:
            raise EngineError("takes no argument")
        return kind()

    return make


for _name, _kind in (("minmax", MinMaxObserver), ("mse", MseObserver), ("entropy", EntropyObserver)):
    OBSERVERS.register(_name)(_without_argument(_kind))


@OBSERVERS.register("percentile")
def _percentile(argument: str | None) -> Observer:
    """``percentile`` (99.99) or ``percentile:P`` (50 < P <= 100)."""
    if argument is None:
        return PercentileObserver()
    try:
        return PercentileObserver(float(argument))
    except ValueError:
        raise EngineError(f"percentile must be a number above 50 and at most 100, got {argument!r}") from None


def make_observer(spec: str) -> Observer:
    """A fresh observer from its spec, ``NAME`` or ``NAME:ARGUMENT`` (``engine.registry.OBSERVERS``): "minmax",
    "mse", "entropy", "percentile" (99.99), "percentile:99.9", or a plugin's."""
    if not isinstance(spec, str):
        raise EngineError(f"a calibration observer is named by a string, not {spec!r}")
    name, colon, argument = spec.strip().lower().partition(":")
    try:
        observer = OBSERVERS.get(name)(argument if colon else None)
    except EngineError as exc:
        raise EngineError(f"calibration observer {spec!r}: {exc}") from None
    observer.spec = spec
    return observer
