"""The Numba half of engine.quant.kernels: the compiled kernels behind its public functions.

engine.quant.kernels checks the arguments, holds the numpy twins and calls these on the checked arrays; this
module is imported on the first compiled call, so importing the kernels (or the engine) never imports Numba.
Every kernel is ``cache=True``: compiled once per machine (benchmarks/kernels.py measures how long), then loaded
from ``__pycache__``.  The arithmetic is stated once, plainly, in each kernel's numpy twin in kernels.py.
"""

from __future__ import annotations

import functools
import importlib
import sys

import numba
import numpy as np

from engine.format.reader import released_chunks
from engine.quant.kernels import (
    _BLOCK,
    _CHUNK,
    _COARSE,
    _KMEANS_INITS,
    _LANES,
    _REFINE_POINTS,
    _REFINE_STAGES,
    _TABLE_FROM,
    _TINY,
    _kmeans_with,
    _KMeansArguments,
    _sorted_copy_numpy,
)


def _numpy_support_without_scipy_blas() -> None:
    """Import Numba's numpy support (numba.np.arraymath, which its first compilation or cache load would import)
    without letting it import SciPy's BLAS, where SciPy is installed and has not loaded it yet.  arraymath loads
    scipy.linalg only to choose how compiled np.correlate and np.convolve sum (0.13-0.16 s and 16 MB of a
    process, measured); the kernels here use neither.  Compiled np.dot and np.linalg still load it when they
    compile.  Left to Numba where its internals differ from what this expects."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg.cython_blas" in sys.modules:
        return
    linalg = importlib.import_module("numba.np.linalg")
    ensure_blas = getattr(linalg, "ensure_blas", None)
    if ensure_blas is None:
        return

    def without_blas() -> None:
        raise ImportError("not needed by the engine's kernels")

    linalg.ensure_blas = without_blas
    try:
        arraymath = importlib.import_module("numba.np.arraymath")
    finally:
        linalg.ensure_blas = ensure_blas
    if getattr(arraymath, "ensure_blas", None) is without_blas:
        arraymath.ensure_blas = ensure_blas


_numpy_support_without_scipy_blas()

# ----------------------------------------------------------------------------------- numba: scalar helpers


@numba.njit(cache=True)
def _code(w, s, q):
    """Code of one weight as float32: w/s rounded half away from zero, saturated at ±q.

    floor plus a test of the exact remainder, not floor(a + 0.5), which rounds 0.49999997 up in float32.
    """
    x = w / s
    a = min(abs(x), q)
    r = np.floor(a)
    r += np.float32(a - r >= 0.5)
    return np.copysign(r, x)


@numba.njit(cache=True)
def _squared_error(w, s, q):
    d = np.float64(w) - np.float64(s) * np.float64(_code(w, s, q))
    return d * d


@numba.njit(cache=True)
def _row_error(row, s, q, lanes, terms):
    """Sum of squared errors in float64, in the order kernels._errors_numpy states (``_LANES`` lanes, each summed
    in order, then the lanes, then the tail), so that the numpy twin finds the same sums and the same scale.  A
    block of terms is computed into ``terms`` (a vectorized loop), then added lane by lane: independent lanes need
    no reassociation (about twice the time of a free-order sum).  ``lanes`` (``_LANES``) and ``terms``
    (``_BLOCK``) are the caller's scratch."""
    n = row.size
    body = n - n % _LANES
    lanes[:] = 0.0
    start = 0
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        for i in range(m):
            terms[i] = _squared_error(row[start + i], s, q)
        for c in range(0, min(m, body - start), _LANES):
            for lane in range(_LANES):
                lanes[lane] += terms[c + lane]
    total = 0.0
    for lane in range(_LANES):
        total += lanes[lane]
    for i in range(body - start, n - start):  # the tail, in the last block
        total += terms[i]
    return total


@numba.njit(cache=True)
def _row_absmax(row):
    m = np.float32(0.0)
    for j in range(row.size):
        m = max(m, abs(row[j]))
    return m


@numba.njit(cache=True)
def _scale(amax, ratio, qmax):
    """float32(ratio * amax / qmax), rounded once from float64: for ratio 1 the float32 quotient amax / qmax."""
    return np.float32(ratio * np.float64(amax) / qmax)


@numba.njit(cache=True)
def _row_mse_scale(row, qmax, lowest):
    """The scale of the clipping ratio with the least squared error: coarse grid, then refinement stages."""
    q = np.float32(qmax)
    lanes, terms = np.empty(_LANES), np.empty(_BLOCK)
    amax = _row_absmax(row)
    best_s = _scale(amax, 1.0, qmax)
    if best_s < _TINY:
        return np.float32(1.0)
    best_r = 1.0
    best_e = _row_error(row, best_s, q, lanes, terms)
    step = (1.0 - lowest) / (_COARSE - 1)
    for k in range(1, _COARSE):
        r = 1.0 - k * step
        s = _scale(amax, r, qmax)
        if s >= _TINY:
            e = _row_error(row, s, q, lanes, terms)
            if e < best_e:
                best_s, best_r, best_e = s, r, e
    for _ in range(_REFINE_STAGES):
        step /= _REFINE_POINTS + 1
        center = best_r
        for j in range(-_REFINE_POINTS, _REFINE_POINTS + 1):
            r = center + j * step
            s = _scale(amax, r, qmax)
            if j != 0 and r <= 1.0 and s >= _TINY:
                e = _row_error(row, s, q, lanes, terms)
                if e < best_e:
                    best_s, best_r, best_e = s, r, e
    return best_s


# ------------------------------------------------------------------------------------ numba: array kernels


# Each kernel fills ``out``, which the public function allocates with numpy: numpy maps large arrays in huge
# pages, so a 67 MB result costs ~4 ms of page faults instead of ~30 ms through Numba's allocator.
# Only the MSE search runs rows in parallel: it is compute-bound (28 passes per row) and gains 1.6-2x on two
# free cores, while the one-pass kernels are near memory speed already and a parallel loop costs ~0.3 s more
# to compile.


@numba.njit(cache=True)
def _absmax_numba(groups, qmax, out):
    for i in range(groups.shape[0]):
        s = _scale(_row_absmax(groups[i]), 1.0, qmax)
        out[i] = s if s >= _TINY else np.float32(1.0)
    return out


@numba.njit(cache=True, parallel=True)
def _mse_numba(groups, qmax, lowest, out):
    for i in numba.prange(groups.shape[0]):
        out[i] = _row_mse_scale(groups[i], qmax, lowest)
    return out


@numba.njit(cache=True)
def _quantize_numba(groups, scales, qmax, out):
    q = np.float32(qmax)
    for i in range(groups.shape[0]):
        row, s, codes = groups[i], scales[i], out[i]
        for j in range(row.size):
            codes[j] = np.int8(_code(row[j], s, q))
    return out


@numba.njit(cache=True, fastmath={"reassoc"})
def _noise_numba(groups, codes, scales):
    """One memory-bound pass, so sequential like the other one-pass kernels; reassociating the float64 sums
    lets them vectorize (each term is exact in float64)."""
    signal = 0.0
    noise = 0.0
    for i in range(groups.shape[0]):
        s = np.float64(scales[i])
        for j in range(groups.shape[1]):
            w = np.float64(groups[i, j])
            d = w - s * np.float64(codes[i, j])
            signal += w * w
            noise += d * d
    return np.array([signal, noise])


@numba.njit(cache=True)
def _dequantize_numba(codes, scales, out):
    for i in range(codes.shape[0]):
        row, s, values = codes[i], scales[i], out[i]
        for j in range(row.size):
            values[j] = np.float32(row[j]) * s
    return out


@numba.njit(cache=True)
def _pack_numba(codes, bits, out):
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    for b in range(out.size):
        byte = 0
        for f in range(min(per_byte, codes.size - b * per_byte)):
            byte |= (np.int32(codes[b * per_byte + f]) & mask) << (f * bits)
        out[b] = byte
    return out


@numba.njit(cache=True)
def _unpack_numba(packed, bits, out):
    per_byte = 8 // bits
    mask, sign = (1 << bits) - 1, 1 << (bits - 1)
    for b in range(packed.size):
        byte = np.int32(packed[b])
        for f in range(min(per_byte, out.size - b * per_byte)):
            v = (byte >> (f * bits)) & mask
            out[b * per_byte + f] = v - 2 * (v & sign)  # sign extension
    return out


# ----------------------------------------------------------------------------------------- numba: k-means


# The k-means kernels copy, sort and compare their few split positions and centroids in plain loops: numpy's
# array expressions (slices, np.sort, ==/.all()) inside them took a third of the 16 s their first compile cost.


@numba.njit(cache=True)
def _head_numba(a, m):
    """A copy of the first ``m`` entries of ``a``."""
    out = np.empty(m, a.dtype)
    for i in range(m):
        out[i] = a[i]
    return out


@numba.njit(cache=True)
def _sorted_numba(a):
    """A sorted copy of the (at most 256) start centroids: insertion sort."""
    out = _head_numba(a, a.size)
    for i in range(1, out.size):
        x, j = out[i], i
        while j > 0 and out[j - 1] > x:
            out[j] = out[j - 1]
            j -= 1
        out[j] = x
    return out


@numba.njit(cache=True)
def _same_numba(a, b):
    if a.size != b.size:
        return False
    for i in range(a.size):  # noqa: SIM110 (all() of a generator is not Numba)
        if a[i] != b[i]:
            return False
    return True


@numba.njit(cache=True)
def _record_numba(history, row, splits):
    for j in range(splits.size):
        history[row, j] = splits[j]


@numba.njit(cache=True)
def _lower_numba(ordered, lo, hi, x):
    """First position in [lo, hi) whose value is >= x (float64 comparison), else hi."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.float64(ordered[mid]) < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def _upper_numba(ordered, lo, hi, x):
    """First position in [lo, hi) whose value is > x (float64 comparison), else hi."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.float64(ordered[mid]) <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def _checkpoints_numba(ordered, shift):
    """One pass over the sorted values: the number of distinct values, and for every t the first run start
    ``at[t]`` at or after position t * 2**shift (n past the last) with the prefix sums of count * value and
    count * value² before it."""
    n = ordered.size
    at = np.empty((n >> shift) + 1, np.int64)
    s1, s2 = np.empty(at.size), np.empty(at.size)
    t, distinct, i = 0, 0, 0
    run1, run2 = 0.0, 0.0
    while i < n:
        while t < at.size and (t << shift) <= i:
            at[t] = i
            s1[t] = run1
            s2[t] = run2
            t += 1
        end = i + 1
        while end < n and ordered[end] == ordered[i]:
            end += 1
        w, d = np.float64(end - i), np.float64(ordered[i])
        run1 = run1 + w * d
        run2 = run2 + w * d * d
        distinct += 1
        i = end
    for u in range(t, at.size):
        at[u], s1[u], s2[u] = n, run1, run2
    return distinct, at, s1, s2


@numba.njit(cache=True)
def _prefix_at_numba(ordered, at, s1, s2, shift, x):
    """The prefix sums of count * value and count * value² before run start ``x`` (or n), continued from the
    checkpoint at or before it."""
    t = x >> shift  # a shift: a division here made every lookup 40x slower
    i, run1, run2 = at[t], s1[t], s2[t]
    while i < x:
        end = i + 1
        while end < x and ordered[end] == ordered[i]:
            end += 1
        w, d = np.float64(end - i), np.float64(ordered[i])
        run1 = run1 + w * d
        run2 = run2 + w * d * d
        i = end
    return run1, run2


@numba.njit(cache=True)
def _sums_numba(ordered, at, s1, s2, shift, splits):
    """The two prefix sums at every split."""
    out1, out2 = np.empty(splits.size), np.empty(splits.size)
    for j in range(splits.size):
        out1[j], out2[j] = _prefix_at_numba(ordered, at, s1, s2, shift, splits[j])
    return out1, out2


@numba.njit(cache=True)
def _linear_numba(ordered, at, s1, s2, shift, k, uniforms):
    lo, hi = np.float64(ordered[0]), np.float64(ordered[-1])
    out = np.empty(k)
    for i in range(k):
        out[i] = lo + (hi - lo) * ((i + 0.5) / k)
    return out


@numba.njit(cache=True)
def _density_numba(ordered, at, s1, s2, shift, k, uniforms):
    """The values at the k mid-quantiles: the one at position floor(q) is the first whose run ends past q."""
    n = ordered.size
    out = np.empty(k)
    for i in range(k):
        out[i] = ordered[min(np.int64((i + 0.5) / k * n), n - 1)]
    return out


@numba.njit(cache=True)
def _cell_mass_numba(ordered, at, s1, s2, shift, a, b, c):
    """D² mass of the values in [a, b) around centroid c: sum of count * (value - c)², from the prefix sums."""
    a1, a2 = _prefix_at_numba(ordered, at, s1, s2, shift, a)
    b1, b2 = _prefix_at_numba(ordered, at, s1, s2, shift, b)
    return max((b2 - a2) - 2.0 * c * (b1 - a1) + c * c * np.float64(b - a), 0.0)


@numba.njit(cache=True)
def _kmeanspp_numba(ordered, at, s1, s2, shift, k, uniforms):
    """D² sampling: each next centroid is a distinct value drawn with probability count * (distance to the
    nearest centroid so far)², the first with probability count; ``uniforms`` are the k draws in [0, 1).
    The values nearest to each centroid are a range (between the midpoints of the sorted centroids), whose D²
    mass comes from the prefix sums in O(1); a new centroid changes only its own range and its neighbours'.  The
    draw picks a range, then a run in it by binary search: O(k + log n) per centroid, not a pass over the
    values."""
    n = ordered.size
    out = np.empty(k)
    out[0] = ordered[min(np.int64(uniforms[0] * n), n - 1)]
    centres, starts, masses = np.empty(k), np.empty(k + 1, np.int64), np.empty(k)
    centres[0], starts[0], starts[1] = out[0], 0, n
    masses[0] = _cell_mass_numba(ordered, at, s1, s2, shift, 0, n, out[0])
    for i in range(1, k):
        total = 0.0
        for j in range(i):
            total += masses[j]
        target = uniforms[i] * total
        running, cell = 0.0, -1
        for j in range(i):
            if running + masses[j] > target:
                cell = j
                break
            running += masses[j]
        if cell < 0:  # no mass left (every distinct value is a centroid): the last value, as a scan would
            out[i] = ordered[n - 1]
        else:
            a, b, c = starts[cell], starts[cell + 1], centres[cell]
            rest = target - running
            a1, a2 = _prefix_at_numba(ordered, at, s1, s2, shift, a)
            lo, hi = a, b
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                x = _lower_numba(ordered, a, mid, np.float64(ordered[mid]))  # the start of mid's run
                x1, x2 = _prefix_at_numba(ordered, at, s1, s2, shift, x)
                if (x2 - a2) - 2.0 * c * (x1 - a1) + c * c * np.float64(x - a) <= rest:
                    lo = mid
                else:
                    hi = mid
            out[i] = ordered[lo]
        if i == k - 1:
            break
        # Insert the new centroid into the sorted ones; its range and its neighbours' change.
        p = i
        while p > 0 and centres[p - 1] > out[i]:
            centres[p], masses[p], starts[p + 1] = centres[p - 1], masses[p - 1], starts[p]
            p -= 1
        centres[p] = out[i]
        starts[i + 1] = n
        for j in (p, p + 1):
            if 0 < j <= i:
                starts[j] = _lower_numba(ordered, 0, n, 0.5 * (centres[j - 1] + centres[j]))
        for j in range(max(p - 1, 0), min(p + 2, i + 1)):
            masses[j] = _cell_mass_numba(ordered, at, s1, s2, shift, starts[j], starts[j + 1], centres[j])
    return out


@numba.njit(cache=True)
def _means_numba(splits, sums1):
    out = np.empty(splits.size - 1)
    for j in range(out.size):
        out[j] = (sums1[j + 1] - sums1[j]) / np.float64(splits[j + 1] - splits[j])
    return out


@numba.njit(cache=True)
def _assign_numba(ordered, centroids):
    """Splits of the nearest-centroid partition of sorted centroids: a value at a midpoint goes up. Ranges
    of centroids no value is nearest to are dropped."""
    n = ordered.size
    splits = np.empty(centroids.size + 1, np.int64)
    splits[0] = 0
    kept = 1
    for j in range(1, centroids.size):
        split = _lower_numba(ordered, 0, n, 0.5 * (centroids[j - 1] + centroids[j]))
        if split > splits[kept - 1]:
            splits[kept] = split
            kept += 1
    if splits[kept - 1] == n:
        kept -= 1
    splits[kept] = n
    return _head_numba(splits, kept + 1)


@numba.njit(cache=True)
def _split_largest_numba(ordered, splits, sums1, sums2):
    """Splits with the largest-error range of at least two distinct values cut in two at its mean."""
    best, best_error = -1, -np.inf
    for j in range(splits.size - 1):
        a, b = splits[j], splits[j + 1]
        if ordered[a] != ordered[b - 1]:
            d = sums1[j + 1] - sums1[j]
            error = (sums2[j + 1] - sums2[j]) - d * d / np.float64(b - a)
            if error > best_error:
                best, best_error = j, error
    a, b = splits[best], splits[best + 1]
    mean = (sums1[best + 1] - sums1[best]) / np.float64(b - a)
    second = _upper_numba(ordered, a, b, np.float64(ordered[a]))
    last = _lower_numba(ordered, a, b, np.float64(ordered[b - 1]))
    cut = min(max(_lower_numba(ordered, a, b, mean), second), last)
    out = np.empty(splits.size + 1, np.int64)
    for j in range(splits.size):
        out[j + (j > best)] = splits[j]
    out[best + 1] = cut
    return out


@numba.njit(cache=True)
def _partition_numba(ordered, at, s1, s2, shift, centroids, target):
    """The nearest-centroid partition of sorted centroids, its largest ranges cut until it has ``target``."""
    splits = _assign_numba(ordered, centroids)
    while splits.size - 1 < target:
        sums1, sums2 = _sums_numba(ordered, at, s1, s2, shift, splits)
        splits = _split_largest_numba(ordered, splits, sums1, sums2)
    return splits


@numba.njit(cache=True)
def _lloyd_numba(ordered, at, s1, s2, shift, distinct, start, clusters, iterations, history):
    """Lloyd from the nearest-centroid partition of ``start``; returns the final splits."""
    target = min(clusters, distinct)
    splits = _partition_numba(ordered, at, s1, s2, shift, _sorted_numba(start), target)
    _record_numba(history, 0, splits)
    for t in range(iterations):
        sums1, _ = _sums_numba(ordered, at, s1, s2, shift, splits)
        moved = _partition_numba(ordered, at, s1, s2, shift, _means_numba(splits, sums1), target)
        _record_numba(history, t + 1, moved)
        if _same_numba(moved, splits):
            break
        splits = moved
    return splits


@numba.njit(cache=True)
def _search_numba(edges, top, v):
    """The number of ``edges`` <= v: ``edges`` are padded with +inf to 2**p - 1 entries, so the binary search is
    p fixed halvings (which compile to branch-free code: twice as fast as a branching search)."""
    position, step = 0, top
    while step:
        position += step * (edges[position + step - 1] <= v)
        step >>= 1
    return position


@numba.njit(cache=True)
def _labels_numba(values, edges, zero_code, out):
    """Label of each value: the number of cluster lower edges <= it, after the zero code.  Labels grow with the
    value, so every float32 whose top 16 bits (sign, exponent, 7 mantissa bits) fall in a range without an edge
    has that range's label: a table of the 2**16 ranges answers most values with one lookup, and the values in
    ranges holding an edge or a zero are searched one by one.  Below ``_TABLE_FROM`` values, building the table
    would cost more than it saves, and every value is searched."""
    offset = 1 if zero_code else 0
    top = (edges.size + 1) >> 1
    if values.size < _TABLE_FROM:
        for i in range(values.size):
            v = np.float64(values[i])
            out[i] = 0 if zero_code and v == 0 else _search_numba(edges, top, v) + offset
        return out
    table = np.empty(1 << 16, np.uint16)
    ends = np.empty(2, np.uint32)
    ends_value = ends.view(np.float32)
    for b in range(1 << 16):
        ends[0], ends[1] = b << 16, (b << 16) | 0xFFFF
        first = _search_numba(edges, top, np.float64(ends_value[0]))
        inf_nan, zero = (b & 0x7F80) == 0x7F80, (b & 0x7FFF) == 0
        same = first == _search_numba(edges, top, np.float64(ends_value[1]))
        table[b] = first + offset if same and not (inf_nan or zero) else 0xFFFF
    bits = values.view(np.uint32)
    for i in range(values.size):
        code = table[bits[i] >> 16]
        if code == 0xFFFF:
            v = np.float64(values[i])
            code = 0 if zero_code and v == 0 else _search_numba(edges, top, v) + offset
        out[i] = code
    return out


@numba.njit(cache=True, fastmath={"reassoc"})
def _cluster_error_numba(values, centroids, labels):
    total = 0.0
    for i in range(values.size):
        d = np.float64(values[i]) - np.float64(centroids[labels[i]])
        total += d * d
    return total


@numba.njit(cache=True)
def _fit_kernel(ordered, shift, init, start, clusters, uniforms, iterations, history):
    """Centroids and the lower edges of all clusters but the first (float64); ``init`` indexes _KMEANS_INITS, or
    is -1 for the ``start`` centroids.  One kernel, so that a run loads one compiled function from the cache."""
    distinct, at, s1, s2 = _checkpoints_numba(ordered, shift)
    if distinct == 0:
        return np.zeros(0), np.zeros(0)
    if init == 0:
        start = _linear_numba(ordered, at, s1, s2, shift, clusters, uniforms)
    elif init == 1:
        start = _density_numba(ordered, at, s1, s2, shift, clusters, uniforms)
    elif init == 2:
        start = _kmeanspp_numba(ordered, at, s1, s2, shift, clusters, uniforms)
    splits = _lloyd_numba(ordered, at, s1, s2, shift, distinct, start, clusters, iterations, history)
    sums1, _ = _sums_numba(ordered, at, s1, s2, shift, splits)
    edges = np.empty(splits.size - 2)
    for j in range(edges.size):
        edges[j] = ordered[splits[j + 1]]
    return _means_numba(splits, sums1), edges


def _fit_numba(a: _KMeansArguments, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_fit_kernel` on prepared arguments and the sorted values."""
    init, start = (-1, a.init) if isinstance(a.init, np.ndarray) else (_KMEANS_INITS.index(a.init), np.zeros(0))
    return _fit_kernel(ordered, a.shift, init, start, a.clusters, a.uniforms, a.iterations, a.history)


@numba.njit(cache=True)
def _histogram_add_numba(values, inverse_width, first, counts):
    for i in range(values.size):
        counts[np.int64(np.floor(np.float64(values[i]) * inverse_width)) - first] += 1
    return counts


# ------------------------------------------------------------------------------- numba: sorting for k-means
# numpy's sort runs 6-7x slower on AMD Zen 4 than its own AVX2 path on the same machine: its AVX-512 path stores
# with vpcompressd, which Zen 4 microcodes (numpy/x86-simd-sort#6; measured here: 0.70 s for 16.7 M float32
# against 0.11 s with numpy's AVX-512 disabled).  A radix sort takes ~0.23 s there; on other CPUs numpy's sort is
# the faster.  So a large k-means on Zen 4 with numpy's AVX-512 sort enabled sorts by radix; the sorted values
# are the same either way.

_RADIX_FROM = 1 << 20  # values from which the radix sort is worth loading its kernels (~0.1 s)
_SMALL_BUCKET = 32  # buckets up to this size get an insertion sort


@numba.njit(cache=True, inline="always")
def _sort_key(bits):
    """The float32 whose bits are ``bits`` as an unsigned key in the same order (finite values; -0 before +0)."""
    return ~bits if bits & np.uint32(0x80000000) else bits | np.uint32(0x80000000)


@numba.njit(cache=True)
def _count_top_digits(bits, counts):
    for i in range(bits.size):
        counts[(_sort_key(bits[i]) >> 21) + 1] += 1


@numba.njit(cache=True)
def _scatter_by_top_digit(bits, heads, out):
    for i in range(bits.size):
        digit = _sort_key(bits[i]) >> 21
        out[heads[digit]] = bits[i]
        heads[digit] += 1


@numba.njit(cache=True)
def _sort_buckets(out, starts, scratch):
    """Sort each bucket ``out[starts[b]:starts[b + 1]]`` (keys sharing their top 11 bits) by the low 21 bits: three
    7-bit LSD passes through ``scratch`` (128-way scatters stay in cache), an insertion sort for small buckets,
    Numba's sort for a bucket larger than ``scratch``."""
    counts = np.empty((3, 129), np.int64)
    for b in range(starts.size - 1):
        lo, hi = starts[b], starts[b + 1]
        if hi - lo <= _SMALL_BUCKET:
            for i in range(lo + 1, hi):
                x = out[i]
                key = _sort_key(x)
                j = i - 1
                while j >= lo and _sort_key(out[j]) > key:
                    out[j + 1] = out[j]
                    j -= 1
                out[j + 1] = x
            continue
        if hi - lo > scratch.size:
            out[lo:hi].view(np.float32).sort()
            continue
        counts[:] = 0
        for i in range(lo, hi):
            key = _sort_key(out[i])
            for p in range(3):
                counts[p, ((key >> (7 * p)) & np.uint32(127)) + 1] += 1
        for p in range(3):
            for d in range(128):
                counts[p, d + 1] += counts[p, d]
        for p in range(3):
            source, target = (out[lo:hi], scratch) if p != 1 else (scratch, out[lo:hi])
            for i in range(hi - lo):
                digit = (_sort_key(source[i]) >> (7 * p)) & np.uint32(127)
                target[counts[p, digit]] = source[i]
                counts[p, digit] += 1
        out[lo:hi] = scratch[: hi - lo]


def _radix_sorted_copy(values: np.ndarray) -> np.ndarray:
    """A sorted copy of flat finite float32 ``values``: one scatter by the keys' top 11 bits (sign, exponent, two
    mantissa bits) from ``values`` into the copy, read a chunk at a time with the file pages behind each chunk
    released (twice: counting, then scattering), then each bucket sorted in place with a scratch of at most a
    quarter of the values."""
    bits = values.view(np.uint32)
    counts = np.zeros(2049, np.int64)
    for part, _ in released_chunks(bits, _CHUNK):
        _count_top_digits(part, counts)
    starts = np.cumsum(counts)
    out = np.empty_like(bits)
    heads = starts[:-1].copy()
    for part, _ in released_chunks(bits, _CHUNK):
        _scatter_by_top_digit(part, heads, out)
    largest = int(np.diff(starts).max(initial=0))
    _sort_buckets(out, starts, np.empty(min(largest, bits.size // 4), np.uint32))
    return out.view(np.float32)


def _slow_compress_store(cpuinfo: str, numpy_avx512: bool) -> bool:
    """Whether numpy's sort takes its AVX-512 path (``numpy_avx512``) on an AMD Zen 4 CPU (family 25 with AVX-512;
    Zen 3, also family 25, has none, and Zen 5 is family 26), from the text of /proc/cpuinfo."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return (
        numpy_avx512
        and fields.get("vendor_id") == "AuthenticAMD"
        and fields.get("cpu family") == "25"
        and "avx512f" in fields.get("flags", "").split()
    )


@functools.cache
def _numpy_sort_is_slow() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:  # not Linux: numpy's sort
        return False
    features = getattr(getattr(np, "_core", None), "_multiarray_umath", None)
    numpy_avx512 = bool(getattr(features, "__cpu_features__", {}).get("AVX512_SKX", False))
    return _slow_compress_store(cpuinfo, numpy_avx512)


def _sorted_copy_numba(values: np.ndarray) -> np.ndarray:
    """A sorted copy of flat finite float32 ``values``: radix where numpy's sort is slow (see above)."""
    if values.size >= _RADIX_FROM and _numpy_sort_is_slow():
        return _radix_sorted_copy(values)
    return _sorted_copy_numpy(values)


# k-means on prepared arguments (kernels.kmeans_1d), through the glue both twins share.
_kmeans_numba = functools.partial(_kmeans_with, _fit_numba, _labels_numba, _sorted_copy_numba)
