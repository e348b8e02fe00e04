"""1-D k-means (weight sharing): Numba against numpy twin, Lloyd's monotone error, brute-force optima, bad input."""

import itertools
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.quant import jit
from engine.quant import kernels as k

INITS = st.sampled_from(["linear", "density", "kmeans++"])
FAST = settings(deadline=None, max_examples=60)  # the first example compiles (or loads) the kernels


@pytest.fixture(autouse=True, scope="module")
def compiled_kernels() -> None:
    """Load the Numba kernels, so that every public call here runs them (not a twin at start-up)."""


@st.composite
def weights(draw: st.DrawFn, max_n: int = 60) -> np.ndarray:
    """Weights at one magnitude: normal, heavy-tailed or few-valued (many duplicates), some exact zeros."""
    n = draw(st.integers(1, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "laplace", "few"]))
    if kind == "few":
        v = rng.integers(-3, 4, n).astype(np.float64)
    else:
        v = rng.standard_normal(n) if kind == "normal" else rng.laplace(size=n)
    v[rng.random(n) < draw(st.sampled_from([0.0, 0.3]))] = 0.0
    return (v * 10.0 ** draw(st.integers(-6, 6))).astype(np.float32)


def group_means(v: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=size)
    sums = np.bincount(labels, weights=v.astype(np.float64), minlength=size)
    return np.divide(sums, counts, out=np.zeros(size), where=counts > 0)


def sse(v: np.ndarray, labels: np.ndarray) -> float:
    """Squared error of a labelling with each group at its own mean (float64, two-pass)."""
    d = v.astype(np.float64) - group_means(v, labels, int(labels.max()) + 1)[labels]
    return float(d @ d)


def brute_force(v: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Least squared error over every partition of the sorted distinct values into min(k, m) contiguous
    groups (duplicates stay together: splitting equal values never helps), and its group means."""
    distinct = np.unique(v)
    m = distinct.size
    best, best_means = np.inf, None
    for cuts in itertools.combinations(range(1, m), min(k, m) - 1):
        labels = np.searchsorted(distinct[list(cuts)], v, side="right")
        error = sse(v, labels)
        if error < best:
            best, best_means = error, group_means(v, labels, min(k, m))
    return best, best_means


def scale(v: np.ndarray) -> float:
    """Tolerance unit for errors: the total squared magnitude (float64 prefix sums are exact to ~1e-16 of it)."""
    return float(np.sum(v.astype(np.float64) ** 2)) + 1e-300


@FAST
@given(weights(), st.integers(1, 20), INITS, st.booleans(), st.integers(0, 2**31))
def test_twins_agree_and_result_is_a_lloyd_partition(
    v: np.ndarray, clusters: int, init: str, keep_zero: bool, seed: int
) -> None:
    if keep_zero and clusters == 1 and (v == 0).any() and (v != 0).any():
        clusters = 2
    c, labels = k.kmeans_1d(v, clusters, init=init, seed=seed, keep_zero=keep_zero)
    c2, labels2 = k.kmeans_1d_numpy(v, clusters, init=init, seed=seed, keep_zero=keep_zero)
    np.testing.assert_allclose(c, c2, rtol=1e-6, atol=1e-6 * np.abs(v).max())
    assert np.array_equal(labels, labels2) or k.cluster_error(v, c, labels) == pytest.approx(
        k.cluster_error(v, c2, labels2), rel=1e-9, abs=1e-12 * scale(v)
    )
    assert c.dtype == np.float32 and labels.dtype == np.uint8 and labels.shape == v.shape
    assert c.size <= clusters and (labels < c.size).all() and np.unique(c).size <= clusters
    assert k.cluster_error(v, c, labels) == pytest.approx(k.cluster_error_numpy(v, c, labels), rel=1e-9, abs=1e-300)
    # Every code is used, and each centroid is the mean of the values carrying it.
    assert np.array_equal(np.unique(labels), np.arange(c.size))
    np.testing.assert_allclose(c, group_means(v, labels, c.size), rtol=1e-5, atol=1e-5 * np.abs(v).max())
    offset = 0
    if keep_zero and (v == 0).any():
        assert c[0] == 0.0 and (labels[v == 0] == 0).all() and (labels[v != 0] > 0).all()
        assert (c[labels][v == 0] == 0).all()
        offset = 1
    nonzero = v[labels >= offset]
    distinct = np.unique(nonzero).size
    assert c.size - offset == min(clusters - offset, distinct)  # empty clusters are replaced, never kept
    if clusters - offset >= distinct:  # exact: every distinct value is its own centroid
        assert np.array_equal(np.sort(c[offset:]), np.unique(nonzero))
    # Codes follow the values: a larger value never gets a smaller label (the clusters are ranges).
    order = np.argsort(nonzero, kind="stable")
    assert (np.diff(labels[labels >= offset][order].astype(int)) >= 0).all()


@FAST
@given(weights(), st.integers(1, 12), INITS, st.integers(0, 2**31))
def test_lloyd_never_increases_the_error(v: np.ndarray, clusters: int, init: str, seed: int) -> None:
    for twin in (False, True):
        history = k._lloyd_history(v, clusters, init=init, seed=seed, iterations=200, twin=twin)
        errors = [sse(v, labels) for labels in history]
        tolerance = 1e-12 * scale(v)
        assert all(b <= a + tolerance for a, b in itertools.pairwise(errors)), errors
        # The returned labels are the last partition Lloyd reached.
        assert np.array_equal(history[-1], (k.kmeans_1d_numpy if twin else k.kmeans_1d)(
            v, clusters, init=init, seed=seed, iterations=200)[1])  # fmt: skip


@FAST
@given(weights(max_n=12), st.integers(1, 4), INITS, st.integers(0, 2**31))
def test_against_brute_force(v: np.ndarray, clusters: int, init: str, seed: int) -> None:
    """Lloyd may stop in a local optimum, so from any init its error is at least the optimum; the optimum is a
    fixed point of Lloyd, so started from the optimal centroids it stays there (ties at midpoints aside,
    which cost the same)."""
    optimum, means = brute_force(v, clusters)
    tolerance = 1e-9 * scale(v)
    c, labels = k.kmeans_1d(v, clusters, init=init, seed=seed)
    assert k.cluster_error(v, c, labels) >= optimum - tolerance
    for kmeans in (k.kmeans_1d, k.kmeans_1d_numpy):
        c, labels = kmeans(v, clusters, init=means)
        assert k.cluster_error(v, c, labels) == pytest.approx(optimum, rel=1e-5, abs=tolerance)


@FAST
@given(weights(), st.integers(2, 20), INITS, st.integers(0, 2**31), st.integers(1, 3))
def test_checkpointed_prefix_sums_change_nothing(
    v: np.ndarray, clusters: int, init: str, seed: int, shift: int
) -> None:
    """Large inputs keep their prefix sums every 2**shift positions and continue them from there: the result is
    bit-identical to keeping them at every run (small inputs) and to the numpy twin's full prefix arrays."""
    a = k.kmeans_1d._prepare(v, clusters, init=init, seed=seed, keep_zero=True)
    assert a.shift == 0
    every = k.kmeans_1d(v, clusters, init=init, seed=seed, keep_zero=True)
    sparse = k.kmeans_1d._fast(*a._replace(shift=shift, history=np.full_like(a.history, -1)))
    twin = k.kmeans_1d_numpy(v, clusters, init=init, seed=seed, keep_zero=True)
    for result in (sparse, twin):
        assert np.array_equal(result[0], every[0]) and np.array_equal(result[1], every[1])


@pytest.mark.parametrize("clusters", [2, 16, 256])
def test_labelling_by_table_matches_the_search(clusters: int) -> None:
    """From 2**18 values the labels come from a table of float32 ranges: the same as searching every value
    (zeros, negative zeros, denormals and values on the edges included)."""
    rng = np.random.default_rng(clusters)
    v = rng.laplace(size=1 << 18).astype(np.float32)
    v[:4] = [0.0, -0.0, 1e-40, -1e-40]
    c, labels = k.kmeans_1d(v, clusters, keep_zero=True)
    v[4 : 4 + c.size] = c  # the centroids themselves, and values between them below
    v[4 + c.size : 4 + 2 * c.size - 1] = (c[:-1] + c[1:]) / 2
    for keep_zero in (False, True):
        c, labels = k.kmeans_1d(v, clusters, keep_zero=keep_zero)
        assert np.array_equal(labels, k.kmeans_1d_numpy(v, clusters, keep_zero=keep_zero)[1])


def test_large_inputs_are_sorted_and_labelled_in_chunks_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond one chunk (k._CHUNK values), the sorted copy, the removal of the zeros (both signs) and the
    labelling go a chunk at a time, so a weight read from the file is not resident beside its copies: the same
    values to cluster as whole-array numpy, the same result as in one chunk."""
    rng = np.random.default_rng(5)
    v = rng.standard_normal(2 * k._CHUNK + 12345).astype(np.float32)
    v[rng.integers(0, v.size, 4000)] = 0.0
    v[rng.integers(0, v.size, 1000)] = -0.0
    prepared = k.kmeans_1d._prepare(v, 16, keep_zero=True)
    for sort in (k._sorted_copy_numpy, jit._radix_sorted_copy):
        assert prepared.zero_code and np.array_equal(k._sorted_values(prepared, sort), np.sort(v[v != 0]))
    chunked = k.kmeans_1d(v, 16, keep_zero=True)
    monkeypatch.setattr(k, "_CHUNK", v.size)
    whole = k.kmeans_1d(v, 16, keep_zero=True)
    assert all(np.array_equal(a, b) for a, b in zip(chunked, whole, strict=True))
    assert (chunked[1][v == 0] == 0).all() and (chunked[1][v != 0] > 0).all()


def test_the_sorted_copy_is_gone_before_labelling() -> None:
    """The sorted copy (as large as the weight) is freed once the fit returns, so labelling a large weight never
    holds it beside the labels: a weak reference taken in the fit is dead when the labelling starts."""
    v = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    copies: list[weakref.ref] = []

    def fit(a: k._KMeansArguments, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        copies.append(weakref.ref(ordered.base if ordered.base is not None else ordered))
        return k._fit_numpy(a, ordered)

    def label(*args: np.ndarray) -> np.ndarray:
        assert copies and copies[0]() is None, "the sorted copy is still alive while labelling"
        return k._labels_numpy(*args)

    got = k._kmeans_with(fit, label, k._sorted_copy_numpy, *k.kmeans_1d._prepare(v, 16, keep_zero=True))
    assert all(np.array_equal(a, b) for a, b in zip(got, k.kmeans_1d_numpy(v, 16, keep_zero=True), strict=True))


@st.composite
def sortable(draw: st.DrawFn) -> np.ndarray:
    """Finite float32 values for the radix sort: any magnitude and sign, subnormals, both zeros, long runs of
    equal values, and sizes around its small-bucket and chunk limits."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([0, 1, 2, jit._SMALL_BUCKET, jit._SMALL_BUCKET + 1, 1000, 70_000]))
    kind = draw(st.sampled_from(["normal", "bits", "few", "narrow"]))
    if kind == "bits":  # every finite float32 pattern is as likely as any other
        v = rng.integers(0, 2**32, n, dtype=np.uint32).view(np.float32)
        v = np.where(np.isfinite(v), v, np.float32(0))
    elif kind == "few":
        v = rng.choice(np.array([0.0, -0.0, 1e-45, -1e-45, 1.0, -3e38], np.float32), n)
    elif kind == "narrow":  # one top-11-bit bucket: larger than the scratch, sorted by Numba's sort
        v = rng.uniform(0.5, 0.6, n).astype(np.float32)
    else:
        v = (rng.standard_normal(n) * 10.0 ** draw(st.integers(-30, 30))).astype(np.float32)
    return v


@FAST
@given(sortable())
def test_the_radix_sort_gives_numpys_order(v: np.ndarray) -> None:
    """The radix sort used where numpy's is slow returns the values numpy's sort returns (-0 and +0 compare
    equal; the radix puts -0 first), and leaves its input as it was."""
    before = v.copy()
    got = jit._radix_sorted_copy(v)
    assert got.dtype == np.float32 and np.array_equal(got, np.sort(v))
    assert np.array_equal(v.view(np.uint32), before.view(np.uint32))


def test_kmeans_is_the_same_whichever_sort_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the radix sort's threshold, k-means gives the same centroids and labels with numpy's sort and the
    radix sort, and the same as the numpy twin."""
    rng = np.random.default_rng(11)
    v = (rng.laplace(size=jit._RADIX_FROM + 4321) * 0.02).astype(np.float32)
    v[rng.integers(0, v.size, 3000)] = 0.0
    results = []
    for slow in (False, True):
        monkeypatch.setattr(jit, "_numpy_sort_is_slow", lambda slow=slow: slow)
        results.append(k.kmeans_1d(v, 16, keep_zero=True))
    results.append(k.kmeans_1d_numpy(v, 16, keep_zero=True))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other, strict=True))


ZEN4 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu sse2 avx2 avx512f\n\n"
)


@pytest.mark.parametrize(
    ("cpuinfo", "numpy_avx512", "slow"),
    [
        (ZEN4, True, True),
        (ZEN4, False, False),  # numpy's AVX-512 sort disabled (NPY_DISABLE_CPU_FEATURES) or not built
        (ZEN4.replace(" avx512f", ""), True, False),  # Zen 3: family 25, no AVX-512
        (ZEN4.replace("cpu family\t: 25", "cpu family\t: 26"), True, False),  # Zen 5
        (ZEN4.replace("AuthenticAMD", "GenuineIntel").replace(": 25", ": 6"), True, False),
        ("", True, False),
    ],
)
def test_numpys_sort_is_replaced_only_on_zen4(cpuinfo: str, numpy_avx512: bool, slow: bool) -> None:
    assert jit._slow_compress_store(cpuinfo, numpy_avx512) is slow


def test_two_clusters_of_distinct_groups_are_found() -> None:
    v = np.array([-5.0, -5.0, -4.0, 0.0, 0.0, 10.0, 11.0, 12.0], np.float32)
    for init in ("linear", "density", "kmeans++"):
        c, labels = k.kmeans_1d(v, 3, init=init)
        assert c.tolist() == pytest.approx([-14 / 3, 0.0, 11.0]) and labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    c, labels = k.kmeans_1d(v, 3, keep_zero=True)  # zero is code 0; the rest share two codes
    assert c.tolist() == pytest.approx([0.0, -14 / 3, 11.0]) and labels.tolist() == [1, 1, 1, 0, 0, 2, 2, 2]
    c, labels = k.kmeans_1d(v.reshape(2, 4), 256)  # exact; labels keep the shape
    assert c.tolist() == [-5, -4, 0, 10, 11, 12] and labels.shape == (2, 4)


def test_seed_makes_kmeanspp_deterministic() -> None:
    v = np.random.default_rng(3).laplace(size=5000).astype(np.float32)
    a, b = k.kmeans_1d(v, 8, init="kmeans++", seed=5, iterations=0), k.kmeans_1d(v, 8, init="kmeans++", seed=5,
                                                                                   iterations=0)  # fmt: skip
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], k.kmeans_1d(v, 8, init="kmeans++", seed=6, iterations=0)[0])


def test_bad_input_is_refused() -> None:
    v = np.ones(4, np.float32)
    cases = [
        (lambda: k.kmeans_1d(np.array([1.0, np.nan], np.float32), 2), "NaN or infinity"),
        (lambda: k.kmeans_1d(np.array([np.inf]), 2), "NaN or infinity"),
        (lambda: k.kmeans_1d(np.zeros(0, np.float32), 2), "empty"),
        (lambda: k.kmeans_1d(v, 0), "from 1 to 256"),
        (lambda: k.kmeans_1d(v, 257), "from 1 to 256"),
        (lambda: k.kmeans_1d(v, 2.0), "from 1 to 256"),
        (lambda: k.kmeans_1d(v, 2, init="random"), "unknown k-means init"),
        (lambda: k.kmeans_1d(v, 2, init=np.array([1.0, 2.0, 3.0])), "start centroids"),
        (lambda: k.kmeans_1d(v, 2, iterations=-1), "iterations"),
        (lambda: k.kmeans_1d(v, 2, seed=1.5), "seed"),
        (lambda: k.kmeans_1d(np.array([0.0, 1.0]), 1, keep_zero=True), "at least 2"),
        (lambda: k.cluster_error(v, np.ones(2), np.array([0, 1, 2, 0])), "index the 2 centroids"),
        (lambda: k.cluster_error(v, np.ones(2), np.zeros(3, int)), "expected 4 integer labels"),
    ]
    for call, message in cases:
        with pytest.raises(EngineError, match=message):
            call()
