"""Quantization kernels: the Numba kernels against their numpy twins, their properties, and the runtime's packing."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.schema_py_generated import TensorType
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.errors import EngineError
from engine.format.builder import GraphBuilder
from engine.format.ir import QuantizationParams
from engine.format.writer import model_to_bytes
from engine.quant import kernels as k
from tests.runtimes import RUNTIMES, run_model

ROOT = Path(__file__).resolve().parents[2]
BITS = st.integers(2, 8)
LIMIT = float(np.float32(1e38))  # the largest |weight| the kernels accept
FAST = settings(deadline=None)  # the first example of each test compiles (or loads) its kernels


@pytest.fixture(autouse=True, scope="module")
def compiled_kernels() -> Iterator[None]:
    """Load the Numba kernels, so that every public call here runs them (not their twins at start-up: kernels'
    docstring): the tests compare them with the twins.  The start-up tests below run in fresh processes.  The
    twins' tiles shrink to 8 elements (one lane group), so the small examples here cross tile borders both ways
    (several rows to a tile, several tiles to a row)."""
    import engine.quant.jit  # noqa: F401

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(k, "_TILE", k._LANES)
        yield


@st.composite
def weights(draw: st.DrawFn, max_rows: int = 6, max_n: int = 40) -> np.ndarray:
    """Weight groups: heavy- or light-tailed rows at any magnitude, some all zero, or any float32 up to ±1e38."""
    shape = (draw(st.integers(0, max_rows)), draw(st.integers(0, max_n)))
    if draw(st.booleans()):
        return draw(arrays(np.float32, shape, elements=st.floats(-LIMIT, LIMIT, width=32)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    df = draw(st.sampled_from([1.5, 3.0, 30.0]))
    magnitude = 10.0 ** draw(st.integers(-30, 30))
    g = (rng.standard_t(df, shape) * magnitude).astype(np.float32)
    g[rng.random(shape[0]) < 0.2] = 0.0
    return g


def squared_errors(groups: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """Per-row reconstruction error of quantizing with ``scales``, in float64."""
    d = groups.astype(np.float64) - scales.astype(np.float64)[:, None] * k.quantize_numpy(groups, scales, bits)
    return (d * d).sum(axis=1)


# ------------------------------------------------------------------------------------------------ scales


def test_qmax() -> None:
    assert [k.qmax(b) for b in range(2, 9)] == [1, 3, 7, 15, 31, 63, 127]
    assert k.qmax(np.int64(4)) == 7
    for bad in (1, 9, 0, -4, 4.0, True, "8", None):
        with pytest.raises(EngineError, match="bit width"):
            k.qmax(bad)


@FAST
@given(weights(), BITS)
def test_absmax_scales(g: np.ndarray, bits: int) -> None:
    s = k.absmax_scales(g, bits)
    assert s.dtype == np.float32 and s.shape == (g.shape[0],)
    assert np.array_equal(s, k.absmax_scales_numpy(g, bits))
    assert (s > 0).all()
    amax = np.abs(g).max(axis=1, initial=0.0)
    expected = (amax.astype(np.float64) / k.qmax(bits)).astype(np.float32)
    normal = expected >= np.finfo(np.float32).tiny
    assert np.array_equal(s[normal], expected[normal])
    assert (s[~normal] == 1.0).all()  # all-zero (or vanishingly small) rows


@FAST
@given(weights(), BITS)
def test_mse_scales(g: np.ndarray, bits: int) -> None:
    s = k.mse_scales(g, bits)
    assert s.dtype == np.float32 and s.shape == (g.shape[0],) and (s > 0).all()
    assert np.array_equal(s, k.mse_scales_numpy(g, bits))  # the errors are summed in one order: near-ties too
    minmax = k.absmax_scales(g, bits)
    assert (squared_errors(g, s, bits) <= squared_errors(g, minmax, bits) * (1 + 1e-12)).all()
    assert (s <= minmax).all()  # clipping ratios are at most 1
    assert (s[(g == 0).all(axis=1)] == 1.0).all()


@FAST
@given(weights(max_rows=3, max_n=300), BITS)
def test_mse_scales_of_long_rows(g: np.ndarray, bits: int) -> None:
    """Rows of several of the kernel's blocks (64 terms) and the twin's tiles: still the same scales."""
    assert np.array_equal(k.mse_scales(g, bits), k.mse_scales_numpy(g, bits))


@FAST
@given(weights(max_rows=4, max_n=60), BITS, st.integers(1, 200))
def test_mse_scales_of_a_tensor_larger_than_one_stacked_sum(g: np.ndarray, bits: int, stacked: int) -> None:
    """The twin sums a stage's candidates stacked, a few at a time when the tensor is large (at most
    ``_STACKED`` elements a call, shrunk here): the scales stay the kernel's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(k, "_STACKED", stacked)
        assert np.array_equal(k.mse_scales(g, bits), k.mse_scales_numpy(g, bits))


def test_error_sum_order() -> None:
    """The order both implementations sum a row's squared errors in, stated as a plain loop: lane j mod 8 while
    j < n - n mod 8, the lanes in order, then the tail.  Magnitudes 1e-8..1e8 make any other order differ."""
    rng = np.random.default_rng(3)
    g = (rng.standard_normal((4, 203)) * 10.0 ** rng.integers(-8, 9, (4, 203))).astype(np.float32)
    s = k.absmax_scales(g, 4) * np.float32(0.3)  # clip hard: large and tiny errors mixed
    terms = (g.astype(np.float64) - s.astype(np.float64)[:, None] * k.quantize_numpy(g, s, 4)) ** 2
    for row, row_terms, total in zip(g, terms, k._errors_numpy(g, s, 7), strict=True):
        body = row.size - row.size % 8
        lanes = [0.0] * 8
        for j in range(body):
            lanes[j % 8] += row_terms[j]
        expected = 0.0
        for lane in lanes:
            expected += lane
        for j in range(body, row.size):
            expected += row_terms[j]
        assert total == expected
    different = 0.0
    for term in terms[0]:
        different += term
    assert different != k._errors_numpy(g, s, 7)[0]  # the example does tell orders apart


def test_mse_scales_clip_heavy_tails() -> None:
    """At 4 bits, clipping a Gaussian row's extremes clearly beats covering them (the point of the search)."""
    g = np.random.default_rng(0).standard_normal((8, 4096)).astype(np.float32)
    mse, minmax = k.mse_scales(g, 4), k.absmax_scales(g, 4)
    assert (squared_errors(g, mse, 4) < 0.7 * squared_errors(g, minmax, 4)).all()
    assert (squared_errors(g, k.mse_scales(g, 8), 8) <= squared_errors(g, k.absmax_scales(g, 8), 8)).all()


# ------------------------------------------------------------------------------------ quantize / dequantize


@st.composite
def weights_and_scales(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    g, bits = draw(weights()), draw(BITS)
    kind = draw(st.sampled_from(["absmax", "mse", "random"]))
    if kind == "random":
        positive = st.floats(float(np.finfo(np.float32).tiny), 2.0**100, width=32)
        return g, draw(arrays(np.float32, g.shape[:1], elements=positive)), bits
    return g, (k.absmax_scales if kind == "absmax" else k.mse_scales)(g, bits), bits


@FAST
@given(weights_and_scales())
def test_quantize_dequantize(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    g, s, bits = case
    q = k.qmax(bits)
    codes = k.quantize(g, s, bits)
    assert codes.dtype == np.int8 and codes.shape == g.shape
    assert np.array_equal(codes, k.quantize_numpy(g, s, bits))
    assert g.flags.writeable  # the kernels get read-only views; the caller's array is untouched
    # An independent statement of the rounding: half away from zero of the float32 quotient, then saturation.
    with np.errstate(over="ignore"):
        x = (g / s[:, None]).astype(np.float64)
    assert np.array_equal(codes, np.clip(np.trunc(x + np.copysign(0.5, x)), -q, q))

    back = k.dequantize(codes, s)
    assert back.dtype == np.float32 and back.shape == g.shape
    assert np.array_equal(back, k.dequantize_numpy(codes, s))
    s64, w = s.astype(np.float64)[:, None], g.astype(np.float64)
    inside = np.abs(w) <= q * s64
    bound = s64 * (0.5 + q * 2.0**-23)  # half a step, plus float32 rounding of w/s and of code*s
    assert (np.abs(back - w) <= bound)[inside].all()

    signal, noise = k.signal_and_noise(g, codes, s)
    assert np.allclose([signal, noise], k.signal_and_noise_numpy(g, codes, s), rtol=1e-9, atol=0)
    assert signal == pytest.approx(float(np.sum(w * w)), rel=1e-9)
    assert noise == pytest.approx(float(np.sum((w - codes * s64) ** 2)), rel=1e-9, abs=1e-300)


def test_rounding_is_half_away_from_zero_and_saturates() -> None:
    g = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, np.nextafter(0.5, 0, dtype=np.float32), 7.49, 7.5, -100.0]], np.float32)
    assert k.quantize(g, np.ones(1, np.float32), 4).tolist() == [[1, 2, 3, -1, -3, 0, 7, 7, -7]]
    assert k.quantize(g, np.ones(1, np.float32), 2).tolist() == [[1, 1, 1, -1, -1, 0, 1, 1, -1]]


# ---------------------------------------------------------------------------------------------- packing

PACKERS = {4: (k.pack_int4, k.unpack_int4, k.pack_int4_numpy, k.unpack_int4_numpy),
           2: (k.pack_int2, k.unpack_int2, k.pack_int2_numpy, k.unpack_int2_numpy)}  # fmt: skip


def _codes(bits: int, max_size: int = 70) -> st.SearchStrategy[np.ndarray]:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return st.lists(st.integers(low, high), max_size=max_size).map(lambda c: np.array(c, np.int8))


@FAST
@given(st.data(), st.sampled_from([4, 2]))
def test_pack_round_trip(data: st.DataObject, bits: int) -> None:
    pack, unpack, pack_numpy, unpack_numpy = PACKERS[bits]
    codes = data.draw(_codes(bits))
    packed = pack(codes)
    per_byte = 8 // bits
    assert packed.dtype == np.uint8 and packed.shape == (-(-codes.size // per_byte),)
    assert np.array_equal(packed, pack_numpy(codes))
    for out in (unpack(packed, codes.size), unpack_numpy(packed, codes.size)):
        assert out.dtype == np.int8 and np.array_equal(out, codes)
    if codes.size % per_byte:  # unused fields of the last byte are zero
        assert packed[-1] >> (codes.size % per_byte * bits) == 0
    # Every byte is valid packed data: unpacking whole bytes and packing again gives them back.
    raw = data.draw(arrays(np.uint8, st.integers(0, 20)))
    full = unpack(raw, raw.size * per_byte)
    assert np.array_equal(full, unpack_numpy(raw, raw.size * per_byte))
    assert np.array_equal(pack(full), raw)


def test_packing_layout() -> None:
    assert k.pack_int4(np.array([1, -1, -8], np.int8)).tolist() == [0xF1, 0x08]
    assert k.pack_int4(np.array([[7, -7], [0, 3]], np.int8)).tolist() == [0x97, 0x30]  # C order
    assert k.pack_int2(np.array([1, -1, 0, -2, -1], np.int8)).tolist() == [0b10_00_11_01, 0b11]
    assert k.unpack_int4(np.array([0x8F], np.uint8), 2).tolist() == [-1, -8]
    assert k.unpack_int2(np.array([0b01_10_11_00], np.uint8), 4).tolist() == [0, -1, -2, 1]
    assert k.pack_int4(np.zeros(0, np.int8)).size == 0 and k.unpack_int2(np.zeros(0, np.uint8), 0).size == 0


@pytest.mark.parametrize(("bits", "tensor_type"), [(4, TensorType.INT4), (2, TensorType.INT2)])
def test_packing_matches_litert(bits: int, tensor_type: int) -> None:
    """LiteRT's DEQUANTIZE reads the packed constant back as the codes: the runtime agrees on the layout."""
    pack = PACKERS[bits][0]
    rng = np.random.default_rng(bits)
    for count in (1, 2, 3, 5, 8, 13, 64, 255):
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), count).astype(np.int8)
        b = GraphBuilder()
        constant = b.constant(pack(codes))
        constant.type, constant.shape = tensor_type, (count,)
        constant.quantization = QuantizationParams(scale=np.ones(1, np.float32), zero_point=np.zeros(1, np.int64))
        b.output(b.dequantize(constant), "out")
        model = bytes(model_to_bytes(b.build()))
        assert all(np.array_equal(run_model(model, {}, runtime)["out"], codes) for runtime in RUNTIMES)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad: float) -> None:
    g = np.ones((3, 5), np.float32)
    g[1, 2] = bad
    for call in (lambda: k.absmax_scales(g, 8), lambda: k.mse_scales_numpy(g, 4),
                 lambda: k.quantize(g, np.ones(3, np.float32), 8)):  # fmt: skip
        with pytest.raises(EngineError, match="NaN or infinity"):
            call()


def test_bad_arguments_are_refused() -> None:
    g, ones = np.ones((2, 4), np.float32), np.ones(2, np.float32)
    cases = [
        (lambda: k.absmax_scales(np.ones(4, np.float32), 8), "2-D"),
        (lambda: k.mse_scales(np.array([[1.0, -2e38]], np.float32), 8), "overflow float32"),
        (lambda: k.mse_scales(g, 9), "bit width"),
        (lambda: k.quantize(g, np.ones(3, np.float32), 8), "expected 2 scales"),
        (lambda: k.quantize(g, np.array([1.0, 0.0], np.float32), 8), "finite and positive"),
        (lambda: k.quantize(g, np.array([1.0, np.nan], np.float32), 8), "finite and positive"),
        (lambda: k.dequantize(np.ones((2, 4), np.int16), ones), "must be int8"),
        (lambda: k.dequantize(np.ones(4, np.int8), ones), "2-D"),
        (lambda: k.dequantize(np.ones((2, 4), np.int8), -ones), "finite and positive"),
        (lambda: k.pack_int4(np.array([8], np.int8)), r"\[-8, 7\]"),
        (lambda: k.pack_int2(np.array([0, -3], np.int8)), r"\[-2, 1\]"),
        (lambda: k.pack_int4(np.array([1], np.int32)), "must be int8"),
        (lambda: k.unpack_int4(np.zeros(2, np.uint8), 5), "take 3 packed bytes"),
        (lambda: k.unpack_int2(np.zeros(2, np.uint8), 4), "take 1 packed bytes"),
        (lambda: k.unpack_int2(np.zeros(1, np.int8), 4), "uint8"),
        (lambda: k.unpack_int4(np.zeros(1, np.uint8), -1), "non-negative"),
    ]
    for call, message in cases:
        with pytest.raises(EngineError, match=message):
            call()


@FAST
@given(
    arrays(np.float32, st.integers(0, 300), elements=st.floats(-(2.0**100), 2.0**100, width=32)), st.integers(-130, 100)
)
def test_histogram_add_twins_agree(values: np.ndarray, exponent: int) -> None:
    """Any finite float32 values at any bin width: the kernel counts exactly what the numpy twin counts."""
    if values.size:
        first = int(np.floor(float(values.min()) * 2.0**-exponent))
        size = int(np.floor(float(values.max()) * 2.0**-exponent)) - first + 1
    else:
        first, size = 0, 1
    if size > 1 << 20 or abs(first) > 1 << 60:  # too fine a width for this range: the observer picks coarser
        return
    start = np.arange(size, dtype=np.int64)  # counts are added to, not overwritten
    fast = k.histogram_add(values, exponent, first, start.copy())
    twin = k.histogram_add_numpy(values, exponent, first, start.copy())
    assert np.array_equal(fast, twin) and fast.sum() == start.sum() + values.size


def test_numpy_first_kernels_run_as_twins_until_the_budget() -> None:
    """In a fresh process the kernels with exact twins run as the twins (no Numba import) until their estimated
    cost reaches the budget, then compiled, and stay compiled; the kernels without one (k-means) load Numba at
    once."""
    code = """
import sys
import numpy as np
from engine.quant import kernels as k
g = np.random.default_rng(0).standard_normal((64, 1000)).astype(np.float32)
s = k.absmax_scales(g, 8)
codes = k.quantize(g, s, 8)
k.signal_and_noise(g, codes, s)
k.pack_int4(np.clip(codes, -8, 7))
k.mse_scales(g, 4)
assert 'numba' not in sys.modules, 'numba imported by small calls'
used = (k.absmax_scales, k.quantize, k.signal_and_noise, k.pack_int4, k.mse_scales)
spent = sum(f.numpy_ns * g.size + f.numpy_call_ns for f in used)
assert k._StartUp.left == k.NUMPY_FIRST_NS - spent, k._StartUp.left
assert k.mse_scales.numpy_cost(9) > 100 * k.mse_scales.numpy_ns * 9  # a small tensor: the call's own cost
k._StartUp.left = 1000 + k.quantize.numpy_call_ns  # as if the budget were nearly spent
big = np.ones((1, 1000 // k.quantize.numpy_ns + 1), np.float32)
assert np.array_equal(k.quantize(big, np.ones(1, np.float32), 8), k.quantize.numpy(big, np.ones(1, np.float32), 8))
assert 'engine.quant.jit' in sys.modules, 'the call over the budget did not run compiled'
assert k._StartUp.left == 0
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    code = "import sys, numpy as np; from engine.quant import kernels as k; "
    code += "k.kmeans_1d(np.arange(4, dtype=np.float32), 2); assert 'numba' in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_expected_work_beyond_the_budget_runs_compiled_from_the_start() -> None:
    """A pass that announces more twin work than loading Numba costs gets the compiled kernels at once, and Numba
    starts loading in the background at the announcement; a small announcement changes nothing."""
    code = """
import sys
import numpy as np
from engine.quant import kernels as k
g = np.ones((4, 16), np.float32)
k.expect([(k.mse_scales, 1000), (k.quantize, 1000)])
k.mse_scales(g, 4)
assert 'numba' not in sys.modules and k._loader is None
k.expect([(k.mse_scales, 9)] * (k.NUMPY_FIRST_NS // k.mse_scales.numpy_cost(9) + 1))  # many small tensors
assert k._loader is not None, 'no background load at the announcement'
k._loader.join()
assert 'engine.quant.jit' in sys.modules
assert np.array_equal(k.mse_scales(g, 4), k.mse_scales.numpy(g, 4))
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_numba_loads_in_the_background_once_and_the_results_do_not_change() -> None:
    """``load_in_background`` (clustering starts it before its sort) imports Numba in one thread, once per
    process; a compiled call made while it loads waits for it and gives the kernel's result."""
    code = """
import sys
import numpy as np
from engine.quant import kernels as k
v = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
k.load_in_background()
loader = k._loader
c, labels = k.kmeans_1d(v, 16)
k.load_in_background()
assert k._loader is loader and loader.name == "load Numba"
loader.join()
assert 'engine.quant.jit' in sys.modules
twin = k.kmeans_1d_numpy(v, 16)
assert np.array_equal(c, twin[0]) and np.array_equal(labels, twin[1])
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_loading_the_kernels_leaves_scipy_blas_to_code_that_needs_it() -> None:
    """The kernels load without SciPy's BLAS (Numba would import scipy.linalg for np.correlate alone), and compiled
    code of the process that needs BLAS still gets it: np.dot in a user's own kernel compiles and is right."""
    pytest.importorskip("scipy")
    code = """
import sys
import numba
import numpy as np
from engine.quant import kernels as k
k.kmeans_1d.compiled(np.arange(8, dtype=np.float32), 2)
assert "scipy.linalg" not in sys.modules, "the kernels imported SciPy's BLAS"
import numba.np.arraymath, numba.np.linalg
assert numba.np.arraymath.ensure_blas is numba.np.linalg.ensure_blas
dot = numba.njit(lambda a, b: np.dot(a, b))
a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
assert np.array_equal(dot(a, b), a @ b)
assert "scipy.linalg.cython_blas" in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_small_model_compresses_without_numba_to_the_same_bytes(tmp_path: Path) -> None:
    """weight-int8 and dynamic-int8 of a small model in a fresh process import no Numba and write the bytes the
    compiled kernels write (this process has them loaded)."""
    import engine

    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", (1, 96))
    h = b.fully_connected(x, b.constant(rng.normal(0, 1, (128, 96)).astype(np.float32), "w1"))
    b.output(b.fully_connected(h, b.constant(rng.normal(0, 1, (10, 128)).astype(np.float32), "w2")), "y")
    source = tmp_path / "mlp.tflite"
    engine.write_model(b.build(), source)
    for mode in ("weight-int8", "dynamic-int8"):
        fresh = tmp_path / f"fresh-{mode}.tflite"
        code = (
            "import sys, engine; "
            f"engine.compress({str(source)!r}, output={str(fresh)!r}, quantize={mode!r}, min_elements=0); "
            "assert 'numba' not in sys.modules, 'numba imported'"
        )
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        compiled = tmp_path / f"compiled-{mode}.tflite"
        engine.compress(source, output=compiled, quantize=mode, min_elements=0)
        assert fresh.read_bytes() == compiled.read_bytes()


def test_import_engine_does_not_import_numba() -> None:
    code = "import engine, sys; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
