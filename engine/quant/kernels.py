"""The hot loops of weight quantization, as Numba kernels with plain-numpy twins.

Everything here works on ``groups``: a 2-D float32 array (rows, n) whose rows each share one scale (per-tensor:
one row; per-channel: one row per output channel; blockwise: one row per block). Quantization is symmetric with
zero point 0 and narrow range: ``bits`` b gives integer codes in [-qmax, qmax], ``qmax = 2**(b-1) - 1``, rounded
half away from zero and saturated at ±qmax. Scales are positive float32; a row whose scale would be zero or
subnormal (all zeros, or values too tiny to matter) gets scale 1.0, since the runtime needs positive scales.

Why two implementations: the Numba kernels (engine.quant.jit) are what the engine runs on large tensors (one
pass over 67 M weights instead of numpy's temporaries); the numpy twins (``<name>_numpy``) state the same
arithmetic plainly and are what the tests compare the kernels against. Each public function checks its
arguments once, cheaply, with numpy, and raises ``EngineError`` for bad input (NaN, infinity or |w| > 1e38,
wrong shapes, codes out of range); the kernels then trust them.

Start-up: importing this module does not import Numba. The first compiled call imports it and loads the cached
kernels, about 0.45 s of a process (0.65-0.8 s while Numba's numpy support also imported SciPy's BLAS, which
engine.quant.jit now avoids; benchmarks/kernels.py measures it), more than a small model's whole quantization takes
in numpy. So the kernels whose twins give exactly their codes and scales (``numpy_ns``: absmax and MSE scales,
quantize, dequantize, signal_and_noise, int4/int2 packing) run as their twins, a tile at a time (``_tiles``: 0.6-3
ns an element for the one-pass ones, 10-12 for packing, ~300 for the 28-candidate MSE search, each stage's
candidates summed in one stacked call; plus a fixed cost a call, ~50 us, ~1 ms for the MSE search, which decides on
a model of many small tensors), until their estimated cost in the process reaches ``NUMPY_FIRST_NS`` (about Numba's
start-up: the rent-or-buy rule, never worse than twice the better choice), then compiled. A pass that knows its
weights announces the work first (``expect``), and beyond the budget gets the compiled kernels from the start,
Numba loading in a thread meanwhile (full int8 announces before calibrating, which hides part of the load). So
weight-int8 of a model of up to ~100 M weights (the 268 MB benchmark MLP: 0.7 s whole process) and full int8 or
weight-int4 of a model of up to ~2 M weights (a MediaPipe hand model: 0.5 s) never load Numba. The output bytes are
the same either way (the tests prove the twins equal; the MSE search sums each row's errors in one stated order,
``_errors_numpy``, in both); ``signal_and_noise`` sums in another order and agrees to 1e-9, which only the reported
weight SQNR sees. Clustering, whose compiled kernels follow single-threaded numpy work (its sort), starts loading
Numba in a thread first too (``load_in_background``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, ParamSpec

import numpy as np

from engine.errors import EngineError
from engine.format.reader import released_chunks

_P = ParamSpec("_P")

# Largest |weight| accepted: it keeps qmax * scale, hence every dequantized value, a finite float32.
_LIMIT = 1e38
# Smallest normal float32: smaller scales are replaced (all-zero-like row) or skipped (search candidates).
_TINY = float(np.finfo(np.float32).tiny)

# The MSE clipping search (see mse_scales): coarse grid size, then refinement stages of ±_REFINE_POINTS
# around the best ratio so far, each stage's step a (_REFINE_POINTS + 1)-th of the previous one.
_COARSE = 16
_REFINE_STAGES = 3
_REFINE_POINTS = 2

# Elements of one step of the numpy twins (see _tiles): 64 KB of float32, below malloc's mmap threshold; a multiple
# of _LANES.
_TILE = 16_384
# The order of a row's error sum (_errors_numpy): _LANES interleaved lanes; the kernel computes _BLOCK terms at once.
_LANES = 8
_BLOCK = 64
# Elements of the MSE search twin's stacked error sums (_best_of): several candidates of a small tensor at once.
_STACKED = 1 << 20


def _is_integer(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def qmax(bits: int) -> int:
    """Largest code of narrow-range symmetric ``bits``-bit quantization (int8: 127, int4: 7, int2: 1)."""
    if not (_is_integer(bits) and 2 <= bits <= 8):
        raise EngineError(f"quantization bit width must be an integer from 2 to 8, got {bits!r}")
    return 2 ** (int(bits) - 1) - 1


def _lowest_ratio(bits: int) -> float:
    """Bottom of the coarse clipping grid: fewer bits pay more for resolution, so they may clip harder."""
    return max(0.05, 0.5 - 0.1 * (8 - bits))


# Nanoseconds of numpy-twin work a process may do before it loads Numba instead: what loading it cost when set
# (module docstring), now about 1.5x that; the per-element estimates (``numpy_ns``, each numpy-first kernel's) are
# conservative too (weight-int8 of the 268 MB MLP: estimated 0.6 s, measured 0.45 s), so it stays until both
# are measured again together.
NUMPY_FIRST_NS = 700_000_000


class _StartUp:
    """How much numpy-twin work (ns, estimated) the process may still do before the compiled kernels are loaded."""

    left: float = NUMPY_FIRST_NS

    @classmethod
    def take(cls, cost: float) -> bool:
        """True (and counted) when work of ``cost`` ns still fits the budget and Numba is not loaded yet."""
        if cost > cls.left or "engine.quant.jit" in sys.modules:
            cls.left = 0
            return False
        cls.left -= cost
        return True

    @classmethod
    def expect(cls, cost: float) -> bool:
        """Work of ``cost`` ns is coming: beyond the budget, run compiled from now on (loading Numba costs less),
        and say so (True)."""
        if cost > cls.left:
            cls.left = 0
            return True
        return False


_loader: threading.Thread | None = None


def load_in_background() -> None:
    """Start importing Numba and its compiler in a thread (once per process), for a pass that will call compiled
    kernels after work that releases the GIL (clustering's sort, full int8's calibration in LiteRT): the ~0.35 s
    load then overlaps that work instead of following it.  Most of it is the first compiled call of the process
    (its typing and code-generation set-up), so one small kernel is loaded; each later kernel loads in ~10 ms.
    Beside calibration, whose interpreter keeps both cores busy, about a third of it is saved (full int8 of the
    MobileNet-sized net: 1.31 -> 1.23 s whole process)."""
    global _loader
    if _loader is None:
        _loader = threading.Thread(target=_load_numba, name="load Numba")
        _loader.start()  # not a daemon: a process that ends sooner waits for it rather than stop Numba midway


def _load_numba() -> None:
    with contextlib.suppress(Exception):  # the pass's own compiled call raises it again, where it is reported
        quantize.compiled(np.zeros((1, 1), np.float32), np.ones(1, np.float32), 8)


class _Twins(Generic[_P]):
    """A public kernel and its numpy twin behind one argument check.

    ``prepare`` (the decorated function, which gives the public signature and docstring) checks and converts the
    arguments and returns the kernel's arguments. Calling the object runs the Numba kernel on them (or, for a
    numpy-first kernel, one with an exact twin costing ``numpy_ns`` an element, before Numba is loaded, the twin:
    module docstring); ``.compiled`` always runs the kernel and ``.numpy`` the twin on the same prepared arguments,
    so the tests compare the two implementations, not checks. The kernel is named (``fast``, in engine.quant.jit),
    so Numba is imported on its first call.
    """

    def __init__(
        self,
        prepare: Callable[_P, tuple[Any, ...]],
        fast: str,
        reference: Callable[..., Any],
        returns: str,
        numpy_ns: float | None,
        numpy_call_ns: float,
    ):
        functools.update_wrapper(self, prepare)
        self.__signature__ = inspect.signature(prepare).replace(return_annotation=returns)
        self._prepare, self._fast_name, self._reference = prepare, fast, reference
        self.numpy_ns, self.numpy_call_ns = numpy_ns, numpy_call_ns

    def numpy_cost(self, elements: int) -> float:
        """Estimated ns of the twin on a tensor of ``elements``: per element, plus its fixed cost a call (numpy
        calls, the Python around them), which decides on a model of many small tensors."""
        assert self.numpy_ns is not None
        return self.numpy_ns * elements + self.numpy_call_ns

    @property
    def _fast(self) -> Callable[..., Any]:
        return getattr(importlib.import_module("engine.quant.jit"), self._fast_name)

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> Any:
        prepared = self._prepare(*args, **kwargs)
        if self.numpy_ns is not None and _StartUp.take(self.numpy_cost(prepared[0].size)):
            return self._reference(*prepared)
        return self._fast(*prepared)

    def compiled(self, *args: _P.args, **kwargs: _P.kwargs) -> Any:
        """The Numba kernel, whatever the start-up budget says."""
        return self._fast(*self._prepare(*args, **kwargs))

    def numpy(self, *args: _P.args, **kwargs: _P.kwargs) -> Any:
        """The plain-numpy twin: same checks, same result (see each function for how exactly)."""
        return self._reference(*self._prepare(*args, **kwargs))


def _twins(
    fast: str,
    reference: Callable[..., Any],
    returns: str = "np.ndarray",
    numpy_ns: float | None = None,
    numpy_call_ns: float = 50_000,
) -> Callable[[Callable[_P, tuple]], _Twins[_P]]:
    """Decorator: turn an argument-checking function into a public kernel (engine.quant.jit's ``fast``) with a
    numpy twin; ``returns`` is the public signature's return annotation (what the kernels return);
    ``numpy_ns``: the twin gives exactly the kernel's result, at about this many ns an element plus
    ``numpy_call_ns`` a call, and runs first."""
    return lambda prepare: _Twins(prepare, fast, reference, returns, numpy_ns, numpy_call_ns)


def expect(work: Iterable[tuple[_Twins[Any], int]]) -> None:
    """Announce the kernel work a pass is about to do, (kernel, elements) pairs (a pass knows its weights before it
    starts): when the numpy twins would take longer than loading Numba, the compiled kernels run from the start
    rather than after the twins have spent the budget, and Numba starts loading in the background (whatever the
    pass does before its first kernel call overlaps it).  Results are the same either way."""
    if _StartUp.expect(sum(kernel.numpy_cost(elements) for kernel, elements in work if kernel.numpy_ns is not None)):
        load_in_background()


# ---------------------------------------------------------------------------------------------------- checks


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only view: the kernels then see one array type (one compilation) whether the caller's data is
    writable or a read-only view of a mapped model file."""
    view = a.view()
    view.flags.writeable = False
    return view


def _checked_groups(groups: np.ndarray) -> np.ndarray:
    g = np.ascontiguousarray(groups, dtype=np.float32)
    if g.ndim != 2:
        raise EngineError(f"weight groups must be a 2-D array (rows, n), got shape {g.shape}")
    flat = g.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.dot(flat, flat)  # one fast pass: finite rules out NaN, infinity and anything near _LIMIT
    if not np.isfinite(squares) and not (flat.min() >= -_LIMIT and flat.max() <= _LIMIT):
        if not np.isfinite(g).all():
            raise EngineError("weights contain NaN or infinity; they cannot be quantized")
        raise EngineError(f"weights beyond ±{_LIMIT:g} cannot be quantized: dequantized, they would overflow float32")
    return _frozen(g)


def _checked_scales(scales: np.ndarray, rows: int) -> np.ndarray:
    s = np.ascontiguousarray(scales, dtype=np.float32)
    if s.shape != (rows,):
        raise EngineError(f"expected {rows} scales (one per row), got shape {s.shape}")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise EngineError("quantization scales must be finite and positive")
    return _frozen(s)


def _checked_int8(codes: np.ndarray) -> np.ndarray:
    c = np.ascontiguousarray(codes)
    if c.dtype != np.int8:
        raise EngineError(f"quantized codes must be int8, got {c.dtype}")
    return _frozen(c)


def _pack_arguments(codes: np.ndarray, bits: int) -> tuple[np.ndarray, int, np.ndarray]:
    """The codes flattened in C order, checked to fit ``bits``-bit two's complement; bits; the output bytes."""
    c = _checked_int8(codes).reshape(-1)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if c.size and (c.min() < low or c.max() > high):
        raise EngineError(f"int{bits} codes must lie in [{low}, {high}], got values in [{c.min()}, {c.max()}]")
    return c, bits, np.empty(-(-c.size // (8 // bits)), np.uint8)


def _unpack_arguments(packed: np.ndarray, count: int, bits: int) -> tuple[np.ndarray, int, np.ndarray]:
    """The packed bytes, checked to hold exactly ``count`` fields of ``bits`` bits; bits; the output codes."""
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.ndim != 1:
        raise EngineError(f"packed int{bits} data must be a 1-D uint8 array, got {p.dtype} of shape {p.shape}")
    if not (_is_integer(count) and count >= 0):
        raise EngineError(f"element count must be a non-negative integer, got {count!r}")
    per_byte = 8 // bits
    needed = -(-int(count) // per_byte)
    if p.size != needed:
        raise EngineError(f"{count} int{bits} values take {needed} packed bytes, got {p.size}")
    return _frozen(np.ascontiguousarray(p)), bits, np.empty(count, np.int8)


# ------------------------------------------------------------------------------------------- numpy twins


def _codes_numpy(groups: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """Codes as float32, the arithmetic of ``_code`` on whole arrays."""
    with np.errstate(over="ignore"):  # w / s beyond float32 saturates like any large quotient
        x = groups / scales[:, None]
    a = np.minimum(np.abs(x), np.float32(qmax))
    r = np.floor(a)
    r += a - r >= 0.5
    return np.copysign(r, x)


def _squared_errors_numpy(groups: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    d = groups.astype(np.float64) - scales.astype(np.float64)[:, None] * _codes_numpy(groups, scales, qmax)
    return d * d


def _errors_numpy(groups: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """Each row's sum of squared errors in float64, in one fixed order that the Numba kernel follows too (so the
    MSE search picks the same scale in both, near-ties included): element j goes to lane j mod ``_LANES`` while
    j < n - n mod ``_LANES``, each lane summed in element order; then the lanes, first to last; then the
    remaining elements in order.  ``np.add.accumulate`` states the in-order sums; a row spanning several tiles
    carries its lanes from tile to tile (tile widths are multiples of ``_LANES``)."""
    rows, n = groups.shape
    body = n - n % _LANES
    lanes = np.zeros((rows, _LANES))
    for r, c in _tiles((rows, body)) if body else ():
        blocks = _squared_errors_numpy(groups[r, c], scales[r], qmax).reshape(len(lanes[r]), -1, _LANES)
        lanes[r] = np.add.accumulate(np.concatenate((lanes[r, None], blocks), axis=1), axis=1)[:, -1]
    total = lanes[:, 0].copy()
    for lane in range(1, _LANES):
        total += lanes[:, lane]
    for term in _squared_errors_numpy(groups[:, body:], scales, qmax).T:
        total += term
    return total


def _scales_numpy(amax: np.ndarray, ratio: np.ndarray | float, qmax: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # ratios above 1 (skipped candidates) may overflow
        return (ratio * amax.astype(np.float64) / qmax).astype(np.float32)


def _tiles(shape: tuple[int, int]) -> Iterator[tuple[slice, slice]]:
    """(rows, columns) slices covering a (rows, n) array in tiles of about ``_TILE`` elements: the twins of the
    one-pass kernels and the MSE search's error sums work tile by tile, so their temporaries stay small and in
    cache (4x faster than whole-array numpy on a 16 M-weight layer, and no float64 copy of it)."""
    rows, n = shape
    if n >= _TILE:
        for i in range(rows):
            for j in range(0, n, _TILE):
                yield slice(i, i + 1), slice(j, min(j + _TILE, n))
    else:
        step = _TILE // max(n, 1)
        for i in range(0, rows, step):
            yield slice(i, i + step), slice(0, n)


def _row_absmax_numpy(groups: np.ndarray) -> np.ndarray:
    amax = np.zeros(groups.shape[0], np.float32)
    for r, c in _tiles(groups.shape):
        np.maximum(amax[r], np.abs(groups[r, c]).max(axis=1, initial=0.0), out=amax[r])
    return amax


def _absmax_numpy(groups: np.ndarray, qmax: int, out: np.ndarray) -> np.ndarray:
    s = _scales_numpy(_row_absmax_numpy(groups), 1.0, qmax)
    out[:] = np.where(s >= _TINY, s, np.float32(1.0))
    return out


def _mse_numpy(groups: np.ndarray, qmax: int, lowest: float, out: np.ndarray) -> np.ndarray:
    """The search of ``_row_mse_scale`` for all rows at once, a stage's candidates together (`_best_of`)."""
    amax = _row_absmax_numpy(groups)
    best_s = _scales_numpy(amax, 1.0, qmax)
    live = best_s >= _TINY
    best_s[~live] = 1.0
    best_r = np.ones(len(groups))
    best_e = _errors_numpy(groups, best_s, qmax)
    step = (1.0 - lowest) / (_COARSE - 1)
    coarse = np.repeat(1.0 - np.arange(1, _COARSE)[:, None] * step, len(groups), axis=1)
    best = _best_of(groups, amax, live, qmax, coarse, best_s, best_r, best_e)
    for _ in range(_REFINE_STAGES):
        step /= _REFINE_POINTS + 1
        offsets = np.array([j * step for j in range(-_REFINE_POINTS, _REFINE_POINTS + 1) if j != 0])
        best = _best_of(groups, amax, live, qmax, best[1][None, :] + offsets[:, None], *best)
    out[:] = best[0]
    return out


def _best_of(
    groups: np.ndarray,
    amax: np.ndarray,
    live: np.ndarray,
    qmax: int,
    ratios: np.ndarray,
    best_s: np.ndarray,
    best_r: np.ndarray,
    best_e: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best of its current (scale, ratio, error) and the candidate ``ratios`` [candidates, rows], as
    the kernel's scan in candidate order keeps it: a candidate replaces the best only when its error is strictly
    smaller, so the winner is the first minimum, the current best first.  The candidates' errors come from one
    `_errors_numpy` call over the rows stacked once per candidate (a few at a time for a large tensor), so a
    small tensor costs a few numpy calls a stage instead of a few per candidate."""
    count, rows = ratios.shape
    scales = _scales_numpy(amax[None, :], ratios, qmax)
    valid = live[None, :] & (ratios <= 1.0) & (scales >= _TINY)
    errors = np.empty((count, rows))
    per_call = max(1, _STACKED // max(groups.size, 1))
    for first in range(0, count, per_call):
        chunk = slice(first, min(first + per_call, count))
        trial = np.where(valid[chunk], scales[chunk], np.float32(1.0))
        stacked = np.broadcast_to(groups, (trial.shape[0], *groups.shape)).reshape(trial.size, groups.shape[1])
        errors[chunk] = _errors_numpy(stacked, trial.reshape(-1), qmax).reshape(trial.shape[0], rows)
    errors[~valid] = np.inf
    pick = np.argmin(np.concatenate((best_e[None, :], errors)), axis=0)
    won = pick > 0
    chosen = pick[won] - 1
    columns = np.flatnonzero(won)
    best_s, best_r, best_e = best_s.copy(), best_r.copy(), best_e.copy()
    best_s[won], best_r[won], best_e[won] = scales[chosen, columns], ratios[chosen, columns], errors[chosen, columns]
    return best_s, best_r, best_e


def _quantize_numpy(groups: np.ndarray, scales: np.ndarray, qmax: int, out: np.ndarray) -> np.ndarray:
    for r, c in _tiles(groups.shape):
        out[r, c] = _codes_numpy(groups[r, c], scales[r], qmax)
    return out


def _dequantize_numpy(codes: np.ndarray, scales: np.ndarray, out: np.ndarray) -> np.ndarray:
    for r, c in _tiles(codes.shape):
        np.multiply(codes[r, c], scales[r, None], out=out[r, c])
    return out


def _noise_numpy(groups: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    total = np.zeros(2)
    for r, c in _tiles(groups.shape):
        w = groups[r, c].astype(np.float64)
        d = w - scales[r].astype(np.float64)[:, None] * codes[r, c]
        total += [np.sum(w * w), np.sum(d * d)]
    return total


def _shifts(bits: int) -> np.ndarray:
    return np.arange(0, 8, bits, dtype=np.uint8)


def _pack_numpy(codes: np.ndarray, bits: int, out: np.ndarray) -> np.ndarray:
    fields = np.zeros((out.size, 8 // bits), np.uint8)
    fields.reshape(-1)[: codes.size] = codes.view(np.uint8) & ((1 << bits) - 1)
    return np.bitwise_or.reduce(fields << _shifts(bits), axis=1, out=out)


def _unpack_numpy(packed: np.ndarray, bits: int, out: np.ndarray) -> np.ndarray:
    fields = ((packed[:, None] >> _shifts(bits)) & ((1 << bits) - 1)).ravel()[: out.size].astype(np.int8)
    out[:] = np.where(fields >= 1 << (bits - 1), fields - (1 << bits), fields)
    return out


# ------------------------------------------------------------------------------------------ public kernels
# Each is declared by its argument check, which returns the kernel's arguments; _twins makes it the public
# function (returning the kernel's result) with the numpy twin as ``.numpy``.


def check_weights(values: np.ndarray) -> None:
    """Refuse, as every kernel here would, weights that cannot be quantized (NaN, infinity, beyond ±1e38), without
    quantizing them: for a pass that checks a model before its slow steps."""
    _checked_groups(np.asarray(values, np.float32).reshape(1, -1))


@_twins("_absmax_numba", _absmax_numpy, numpy_ns=1)
def absmax_scales(groups: np.ndarray, bits: int) -> tuple:
    """Per-row scale max|w| / qmax ("minmax"): no weight is clipped. Returns float32[rows]."""
    g = _checked_groups(groups)
    return g, qmax(bits), np.empty(g.shape[0], np.float32)


@_twins("_mse_numba", _mse_numpy, numpy_ns=300, numpy_call_ns=1_000_000)
def mse_scales(groups: np.ndarray, bits: int) -> tuple:
    """Per-row scale whose clipping range r * max|w| minimizes the squared reconstruction error.

    Clipping a few large weights buys finer steps for all the others, which pays at low bit widths. The search
    tries r = 1 first (so the result is never worse than ``absmax_scales``, and ties keep it), then a coarse
    grid of 16 ratios down to a bit-width-dependent floor (0.5 for 8 bits, 0.1 for 4, 0.05 for 2 and 3), then
    three refinement stages of ±2 points around the best ratio, each a third of the previous step: 28 error
    evaluations per row, each exactly the arithmetic of ``quantize``, summed in float64. Returns float32[rows].
    """
    g = _checked_groups(groups)
    return g, qmax(bits), _lowest_ratio(bits), np.empty(g.shape[0], np.float32)


@_twins("_quantize_numba", _quantize_numpy, numpy_ns=4)
def quantize(groups: np.ndarray, scales: np.ndarray, bits: int) -> tuple:
    """int8 codes round(w / scale) (half away from zero) saturated to ±qmax, one scale per row."""
    g = _checked_groups(groups)
    return g, _checked_scales(scales, g.shape[0]), qmax(bits), np.empty(g.shape, np.int8)


@_twins("_dequantize_numba", _dequantize_numpy, numpy_ns=1)
def dequantize(codes: np.ndarray, scales: np.ndarray) -> tuple:
    """float32 codes * scale, one scale per row of the int8 codes (rows, n): what the runtime computes."""
    c = _checked_int8(codes)
    if c.ndim != 2:
        raise EngineError(f"codes must be a 2-D array (rows, n), got shape {c.shape}")
    return c, _checked_scales(scales, c.shape[0]), np.empty(c.shape, np.float32)


@_twins("_noise_numba", _noise_numpy, numpy_ns=4)
def signal_and_noise(groups: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> tuple:
    """[sum of w², sum of (w - scale * code)²] in float64 over all rows: the weight SQNR's two terms, without
    the float64 copies of the weight a plain numpy SQNR makes (hundreds of MB on a large layer)."""
    g, c = _checked_groups(groups), _checked_int8(codes)
    if c.shape != g.shape:
        raise EngineError(f"codes of shape {c.shape} do not match weight groups of shape {g.shape}")
    return g, c, _checked_scales(scales, g.shape[0])


@_twins("_pack_numba", _pack_numpy, numpy_ns=12)
def pack_int4(codes: np.ndarray) -> tuple:
    """TFLite INT4 bytes of int8 codes in [-8, 7] (flattened in C order): two's-complement nibbles, element 2i in
    the low nibble of byte i and 2i+1 in the high one; an odd count leaves the last high nibble 0."""
    return _pack_arguments(codes, 4)


@_twins("_unpack_numba", _unpack_numpy, numpy_ns=10)
def unpack_int4(packed: np.ndarray, count: int) -> tuple:
    """The ``count`` sign-extended int8 codes stored in TFLite INT4 bytes (the inverse of ``pack_int4``)."""
    return _unpack_arguments(packed, count, 4)


@_twins("_pack_numba", _pack_numpy, numpy_ns=12)
def pack_int2(codes: np.ndarray) -> tuple:
    """TFLite INT2 bytes of int8 codes in [-2, 1] (flattened in C order): four two's-complement 2-bit fields
    per byte, element 4i+j in bits 2j..2j+1 (lowest first); unused fields of the last byte are 0."""
    return _pack_arguments(codes, 2)


@_twins("_unpack_numba", _unpack_numpy, numpy_ns=10)
def unpack_int2(packed: np.ndarray, count: int) -> tuple:
    """The ``count`` sign-extended int8 codes stored in TFLite INT2 bytes (the inverse of ``pack_int2``)."""
    return _unpack_arguments(packed, count, 2)


absmax_scales_numpy = absmax_scales.numpy
mse_scales_numpy = mse_scales.numpy
quantize_numpy = quantize.numpy
dequantize_numpy = dequantize.numpy
signal_and_noise_numpy = signal_and_noise.numpy
pack_int4_numpy = pack_int4.numpy
unpack_int4_numpy = unpack_int4.numpy
pack_int2_numpy = pack_int2.numpy
unpack_int2_numpy = unpack_int2.numpy


# ================================================================================ 1-D k-means (weight sharing)
# Weight sharing replaces every weight by the nearest of k shared values (the centroids) and stores its index.
# In 1-D each cluster of an optimal or Lloyd partition is a contiguous range of the sorted values, so the state
# is k + 1 split positions into the sorted values (``splits``, first 0, last n, strictly increasing, each the
# start of a run of equal values), and with prefix sums of count, count * value and count * value² over the
# runs a cluster's mean and squared error cost O(1).  A Lloyd iteration (means, then boundaries at the midpoints
# of consecutive means, found by binary search) then costs O(k log n): only sorting the values, one pass over
# them for the prefix sums and labelling them (a binary search per weight) touch all n.
#
# Memory: the sorted float32 copy is the only array of n entries.  The prefix sums are kept at checkpoints (the
# first run start at or after every 2**shift-th position, about every √n / 4-th; every position on small inputs)
# and continued from the nearest one when asked for at a run start, adding the same terms in the same order:
# bit-identical to the full prefix arrays the numpy twin keeps, at O(√n) memory and O(√n) work per lookup.  The
# count prefix is the position.
#
# Precision: prefix sums are float64, so a mean is exact to about m * 2**-53 of the largest |value| (ample for
# weights, which do not span 30 orders of magnitude within a tensor).

_KMEANS_INITS = ("linear", "density", "kmeans++")
_MAX_CODES = 256  # labels are uint8
_CHUNK = 1 << 20  # values a large k-means copies or labels at a time (4 MB of float32)
_TABLE_FROM = 1 << 18  # values from which labelling builds its table of 2**16 ranges (it takes about 1 ms)
_EVERY_RUN_BELOW = 1 << 16  # fewer values keep the prefix sums at every run (24 bytes a value): lookups in O(1)


class _KMeansArguments(NamedTuple):
    """What the k-means twins get: the checked flat values, the checkpoint spacing (2**shift) and the options,
    resolved; ``history`` receives the splits after each iteration (row 0: the start).  The fits also get the
    sorted copy (``_sorted_values``), which the shared glue makes and drops before labelling, so a large weight's
    copy and its labels are never in memory together."""

    values: np.ndarray
    shift: int
    clusters: int
    init: str | np.ndarray
    uniforms: np.ndarray
    iterations: int
    zero_code: bool
    history: np.ndarray
    shape: tuple[int, ...]


# ----------------------------------------------------------------------------------------- numpy: k-means
# The same arithmetic on the full prefix arrays over the runs (distinct values): a run start's prefix sums are
# looked up by its rank among the run starts, where the kernels continue them from a checkpoint.


class _Runs(NamedTuple):
    """The sorted values as float64, the run starts (then n) and the prefix sums at each."""

    ordered: np.ndarray
    starts: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    def at(self, positions: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        rank = np.searchsorted(self.starts, positions)
        return self.s1[rank], self.s2[rank]


def _runs_numpy(ordered: np.ndarray) -> _Runs:
    """The runs of equal values of the sorted values and the full prefix sums over them."""
    values = ordered.astype(np.float64)
    first = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    starts = np.append(first, ordered.size)
    w, d = np.diff(starts).astype(np.float64), values[first]
    sums = []
    for term in (w * d, w * d * d):
        s = np.zeros(first.size + 1)
        np.cumsum(term, out=s[1:])  # sequential, as the kernels add
        sums.append(s)
    return _Runs(values, starts, *sums)


def _linear_numpy(r: _Runs, k: int, uniforms: np.ndarray) -> np.ndarray:
    return r.ordered[0] + (r.ordered[-1] - r.ordered[0]) * ((np.arange(k) + 0.5) / k)


def _density_numpy(r: _Runs, k: int, uniforms: np.ndarray) -> np.ndarray:
    n = r.ordered.size
    return r.ordered[np.minimum(((np.arange(k) + 0.5) / k * n).astype(np.int64), n - 1)]


def _kmeanspp_numpy(r: _Runs, k: int, uniforms: np.ndarray) -> np.ndarray:
    n = r.ordered.size
    out = np.empty(k)
    out[0] = r.ordered[min(int(uniforms[0] * n), n - 1)]
    for i in range(1, k):
        centres = np.sort(out[:i])
        starts = np.concatenate(([0], np.searchsorted(r.ordered, 0.5 * (centres[:-1] + centres[1:])), [n]))
        (a1, a2), (b1, b2) = r.at(starts[:-1]), r.at(starts[1:])
        masses = np.maximum((b2 - a2) - 2.0 * centres * (b1 - a1) + centres * centres * np.diff(starts), 0.0)
        running = np.cumsum(masses)
        target = uniforms[i] * running[-1]
        cell = int(np.searchsorted(running, target, side="right"))
        if cell == i:
            out[i] = r.ordered[-1]
            continue
        a, b, c = starts[cell], starts[cell + 1], centres[cell]
        rest = target - (running[cell - 1] if cell else 0.0)
        a1, a2 = r.at(a)
        lo, hi = a, b
        while hi - lo > 1:
            mid = (lo + hi) // 2
            x = int(np.searchsorted(r.ordered, r.ordered[mid]))
            x1, x2 = r.at(x)
            lo, hi = (mid, hi) if (x2 - a2) - 2.0 * c * (x1 - a1) + c * c * (x - a) <= rest else (lo, mid)
        out[i] = r.ordered[lo]
    return out


def _means_numpy(splits: np.ndarray, r: _Runs) -> np.ndarray:
    return np.diff(r.at(splits)[0]) / np.diff(splits)


def _assign_numpy(ordered: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    inner = np.searchsorted(ordered, 0.5 * (centroids[:-1] + centroids[1:]))
    return np.unique(np.concatenate(([0], inner, [ordered.size])))


def _split_largest_numpy(r: _Runs, splits: np.ndarray) -> np.ndarray:
    sums1, sums2 = r.at(splits)
    a, b = splits[:-1], splits[1:]
    d = np.diff(sums1)
    errors = np.where(r.ordered[a] != r.ordered[b - 1], np.diff(sums2) - d * d / (b - a), -np.inf)
    best = int(np.argmax(errors))
    a, b = splits[best], splits[best + 1]
    part = r.ordered[a:b]
    second = a + np.searchsorted(part, part[0], side="right")
    last = a + np.searchsorted(part, part[-1])
    cut = min(max(a + np.searchsorted(part, d[best] / (b - a)), second), last)
    return np.insert(splits, best + 1, cut)


def _lloyd_numpy(r: _Runs, start: np.ndarray, clusters: int, iterations: int, history: np.ndarray) -> np.ndarray:
    def partition(centroids: np.ndarray) -> np.ndarray:
        splits = _assign_numpy(r.ordered, centroids)
        while splits.size - 1 < min(clusters, r.starts.size - 1):
            splits = _split_largest_numpy(r, splits)
        return splits

    splits = partition(np.sort(start))
    history[0, : splits.size] = splits
    for t in range(iterations):
        moved = partition(_means_numpy(splits, r))
        history[t + 1, : moved.size] = moved
        if np.array_equal(moved, splits):
            break
        splits = moved
    return splits


def _labels_numpy(values: np.ndarray, edges: np.ndarray, zero_code: bool, out: np.ndarray) -> np.ndarray:
    out[:] = np.searchsorted(edges, values.astype(np.float64), side="right") + zero_code
    if zero_code:
        out[values == 0] = 0
    return out


def _cluster_error_numpy(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    d = values.astype(np.float64) - centroids.astype(np.float64)[labels]
    return float(np.dot(d, d))


def _fit_numpy(a: _KMeansArguments, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What `_fit_numba` returns, from the full prefix arrays."""
    if not ordered.size:
        return np.zeros(0), np.zeros(0)
    r = _runs_numpy(ordered)
    if isinstance(a.init, np.ndarray):
        start = a.init
    else:
        init = (_linear_numpy, _density_numpy, _kmeanspp_numpy)[_KMEANS_INITS.index(a.init)]
        start = init(r, a.clusters, a.uniforms)
    splits = _lloyd_numpy(r, start, a.clusters, a.iterations, a.history)
    return _means_numpy(splits, r), r.ordered[splits[1:-1]]


def _kmeans_with(fit: Callable[[_KMeansArguments, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 label: Callable[..., np.ndarray], sort: Callable[[np.ndarray], np.ndarray],
                 *args: Any) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """k-means on prepared arguments with one fit, labelling and sorted copy (Numba or numpy): the glue both
    twins share.  The sorted copy exists only during the fit."""
    a = _KMeansArguments(*args)
    centroids, edges = fit(a, _sorted_values(a, sort))
    edges = np.concatenate((edges, np.full((1 << edges.size.bit_length()) - 1 - edges.size, np.inf)))
    if a.zero_code:
        centroids = np.concatenate(([0.0], centroids))
    labels = np.empty(a.values.size, np.uint8)
    for part, start in released_chunks(a.values, _CHUNK):
        label(part, edges, a.zero_code, labels[start : start + part.size])
    return centroids.astype(np.float32), labels.reshape(a.shape)


def _cut(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``values`` without ``values[lo:hi]``: the rest moved down in place a chunk at a time; a view of it."""
    for start in range(hi, values.size, _CHUNK):
        part = values[start : start + _CHUNK]
        values[start - (hi - lo) : start - (hi - lo) + part.size] = part
    return values[: values.size - (hi - lo)]


def _sorted_copy_numpy(values: np.ndarray) -> np.ndarray:
    """A sorted copy of flat float32 ``values``, copied a chunk at a time with the file pages behind each chunk
    released, then sorted by numpy."""
    ordered = np.empty_like(values)
    for part, start in released_chunks(values, _CHUNK):
        ordered[start : start + part.size] = part
    ordered.sort()
    return ordered


def _sorted_values(a: _KMeansArguments, sort: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The values to cluster, sorted by ``sort`` (a sorted copy; read-only, flat): without the zeros (both signs)
    when they keep code 0.  Which ±0 comes first may differ between sorts; nothing here depends on it."""
    ordered = sort(a.values)
    if a.zero_code:
        zero = np.float32(0)  # a float64 key would make searchsorted copy the values to float64
        ordered = _cut(ordered, *(int(np.searchsorted(ordered, zero, side)) for side in ("left", "right")))
    return _frozen(ordered)


# ----------------------------------------------------------------------------------------- public: k-means


@_twins("_kmeans_numba", functools.partial(_kmeans_with, _fit_numpy, _labels_numpy, _sorted_copy_numpy),
        returns="tuple[np.ndarray, np.ndarray]")  # fmt: skip
def kmeans_1d(
    values: np.ndarray,
    k: int,
    init: str | np.ndarray = "linear",
    iterations: int = 50,
    seed: int = 0,
    keep_zero: bool = False,
) -> tuple:
    """Weight sharing: the k shared values (centroids) of exact 1-D Lloyd k-means and each value's index.

    Returns ``(centroids, labels)``: float32[k'] sorted ascending (after the zero code, if any) with k' <= k,
    and uint8 labels of the values' shape, ``centroids[labels]`` being the shared weights. Every centroid is
    the mean of the values labelled with it. Lloyd runs on the sorted distinct values, weighted by their
    counts, from the nearest-centroid partition of the ``init`` centroids: "linear" (k evenly spaced over
    [min, max], at bin centres), "density" (the values at the k mid-quantiles of the count CDF), "kmeans++"
    (D² sampling, drawn with ``seed``), or an array of 1..k start centroids. It stops when the boundaries stop
    moving or after ``iterations``; the squared error never increases from one iteration to the next.

    Empty clusters never survive: a cluster no value is nearest to is dropped and replaced by cutting the
    cluster of largest squared error at its mean (which lowers the error), so k' = min(k, distinct values).
    With k >= the number of distinct values, each distinct value is its own centroid (exact).

    ``keep_zero`` (sparsity): exact zeros (and -0.0) are left out of the clustering and keep the value 0 as
    code 0, ``centroids[0] == 0.0``; the other values share the remaining k - 1 codes. Without zeros in the
    values, it changes nothing.
    """
    v = np.ascontiguousarray(values, dtype=np.float32)
    shape, v = v.shape, v.reshape(-1)
    if v.size == 0:
        raise EngineError("k-means needs at least one value, got an empty array")
    if not (np.isfinite(v.min()) and np.isfinite(v.max())):  # NaN wins both; no temporary of n booleans
        raise EngineError("values contain NaN or infinity; they cannot be clustered")
    if not (_is_integer(k) and 1 <= k <= _MAX_CODES):
        raise EngineError(f"the number of clusters k must be an integer from 1 to {_MAX_CODES}, got {k!r}")
    if not (_is_integer(iterations) and iterations >= 0):
        raise EngineError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not _is_integer(seed):
        raise EngineError(f"seed must be an integer, got {seed!r}")
    clustered = np.count_nonzero(v) if keep_zero else v.size  # the values Lloyd sees (-0.0 is a zero too)
    zero_code = clustered < v.size
    clusters = int(k) - zero_code
    if clusters == 0 and clustered:
        raise EngineError("keep_zero spends one code on zero, so k must be at least 2 for values with non-zeros")
    if isinstance(init, str):
        if init not in _KMEANS_INITS:
            raise EngineError(f"unknown k-means init {init!r}; expected one of {', '.join(_KMEANS_INITS)}")
    else:
        init = np.ascontiguousarray(init, dtype=np.float64)
        if not (init.ndim == 1 and 1 <= init.size <= max(clusters, 1) and np.isfinite(init).all()):
            raise EngineError(f"start centroids must be 1 to {max(clusters, 1)} finite values, got shape {init.shape}")
    uniforms = np.random.default_rng(int(seed)).random(max(clusters, 1))
    history = np.full((int(iterations) + 1, clusters + 1), -1, np.int64)
    shift = 0 if clustered < _EVERY_RUN_BELOW else (math.isqrt(clustered) // 4).bit_length() - 1
    return _KMeansArguments(_frozen(v), shift, clusters, init, uniforms, int(iterations), zero_code, history, shape)


@_twins("_cluster_error_numba", _cluster_error_numpy, returns="float")
def cluster_error(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> tuple:
    """Sum of squared errors (float64) of replacing each value by ``centroids[label]``: what k-means lowers."""
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    lab = np.ascontiguousarray(labels).reshape(-1)
    if lab.size != v.size or lab.dtype.kind not in "iu":
        raise EngineError(f"expected {v.size} integer labels, got {lab.size} of type {lab.dtype}")
    if c.ndim != 1 or (lab.size and (lab.min() < 0 or lab.max() >= c.size)):
        raise EngineError(f"labels must index the {c.size} centroids")
    return _frozen(v), _frozen(c), _frozen(lab)


kmeans_1d_numpy = kmeans_1d.numpy
cluster_error_numpy = cluster_error.numpy


def _lloyd_history(values: np.ndarray, k: int, *, twin: bool = False, **options: Any) -> list[np.ndarray]:
    """The labels of every partition Lloyd went through (the start, then one per iteration), for the tests
    of its monotone error; options as for ``kmeans_1d``."""
    a = kmeans_1d._prepare(values, k, **options)
    (kmeans_1d._reference if twin else kmeans_1d._fast)(*a)
    edges = _sorted_values(a, _sorted_copy_numpy).astype(np.float64)
    rows = [row[row >= 0] for row in a.history if row[0] >= 0]
    return [_labels_numpy(a.values, edges[s[1:-1]], a.zero_code, np.empty(a.values.size, np.uint8)) for s in rows]


# ======================================================================== calibration: streaming histograms
# engine.quant.observers keeps one histogram per activation: bins of width 2**exponent anchored at 0, bin k holding
# [k w, (k + 1) w).  Adding a sample's values is the calibration's hot loop (about 10 M values per sample on a
# mid-sized conv net); numpy needs five passes and two temporaries for it, the kernel one pass and none.


def _histogram_add_numpy(values: np.ndarray, inverse_width: float, first: int, counts: np.ndarray) -> np.ndarray:
    k = np.multiply(values, inverse_width, dtype=np.float64)
    np.floor(k, out=k)
    k -= first
    counts += np.bincount(k.astype(np.intp), minlength=counts.size)
    return counts


@_twins("_histogram_add_numba", _histogram_add_numpy)
def histogram_add(values: np.ndarray, exponent: int, first: int, counts: np.ndarray) -> tuple:
    """Add flat float32 ``values`` to ``counts`` (int64, in place; returned), bin floor(x / 2**exponent) - first.

    The caller guarantees every value lands in ``counts`` (the observer sizes the bins from the values' range).
    """
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if counts.dtype != np.int64 or counts.ndim != 1:
        raise EngineError(f"histogram counts must be a 1-D int64 array, got {counts.dtype} of shape {counts.shape}")
    return v, float(np.ldexp(1.0, -int(exponent))), int(first), counts


histogram_add_numpy = histogram_add.numpy
