"""Symmetric integer quantization of a weight: one path for every pass that quantizes or shares weights.

A weight is quantized as rows that share one scale (``as_rows``): the whole tensor, each output channel along an
axis, or blocks of N consecutive values along the last axis.  ``quantize_weight`` finds the rows' scales by a
method registered in ``engine.registry.SCALE_METHODS`` (``minmax``: max |w| / qmax; ``mse``: the clipping range
with the least squared error; or a plugin's), rounds to codes in
[-qmax, qmax] (zero point 0) and measures the weight SQNR, all in the Numba kernels; the result gives back the
codes in the weight's shape and, on demand, the values they stand for.  quantize_weights (weight and dynamic
modes), full_integer (int8 / 16x8 weights) and cluster (rows of a channel) share it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.quant import kernels
from engine.quant.metrics import power_ratio_db
from engine.quant.rounding import LayerInputs, RoundingProblem, compensation_target, times_hessian
from engine.registry import ROUNDING_METHODS, SCALE_METHODS
from engine.remembered import digest, remembered

# The built-in scale searches are pure, so a caller that quantizes the same weights many times (the accuracy
# search builds every candidate from one model) finds each weight's scales once inside `engine.remembered`'s
# block.  A plugin's method may not be pure: it always runs.
_PURE_SCALE_METHODS = frozenset({"minmax", "mse"})


def _scales(method: str, rows: np.ndarray, bits: int, rows_digest: Callable[[], bytes]) -> np.ndarray:
    """The rows' scales by ``method`` (``rows`` contiguous float32), remembered where ``remembering`` asks."""

    def compute() -> np.ndarray:
        return np.asarray(SCALE_METHODS.call(method, rows, bits), np.float32)

    if method not in _PURE_SCALE_METHODS:
        return compute()
    found = remembered(lambda: ("scales", method, bits, rows.shape, rows_digest()), compute)
    assert found is not None
    return found


def as_rows(
    values: np.ndarray, granularity: str, axis: int | None
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``values`` as contiguous rows that share a scale ("tensor": one row; "channel": one per index of ``axis``;
    "block:N": N consecutive values of the last axis), and the function that puts such rows back in the shape."""
    shape = values.shape
    if granularity == "tensor":
        return values.reshape(1, -1), lambda rows: rows.reshape(shape)
    if granularity == "channel":
        assert axis is not None
        moved = np.ascontiguousarray(np.moveaxis(values, axis, 0))
        moved_shape = moved.shape
        return moved.reshape(moved_shape[0], -1), lambda rows: np.moveaxis(rows.reshape(moved_shape), 0, axis)
    block = int(granularity.split(":")[1])
    return values.reshape(-1, block), lambda rows: rows.reshape(shape)


@dataclass(frozen=True)
class QuantizedWeight:
    """Codes (int8 container, the weight's shape), one float32 scale per row, and the weight SQNR in dB."""

    codes: np.ndarray
    scales: np.ndarray
    sqnr_db: float
    _restore: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    _code_rows: np.ndarray = field(repr=False)

    def dequantized(self) -> np.ndarray:
        """The float64 values the codes stand for, in the weight's shape."""
        return self._restore(self._code_rows.astype(np.float64) * self.scales.astype(np.float64)[:, None])


def expect_weights(work: Iterable[tuple[str, int]]) -> None:
    """Tell the kernels what ``quantize_weight`` is about to do, (scale method, elements) per weight, so they pick
    numpy or compiled once (``kernels.expect``): a built-in scale search, then ``quantize`` and the weight SQNR's
    ``signal_and_noise`` over each weight (a plugin's scale method is its own business)."""
    search = {"minmax": kernels.absmax_scales, "mse": kernels.mse_scales}
    plan: list[tuple[Any, int]] = []
    for method, elements in work:
        plan += [(kernels.quantize, elements), (kernels.signal_and_noise, elements)]
        if method in search:
            plan.append((search[method], elements))
    kernels.expect(plan)


def quantize_weight(
    values: np.ndarray,
    bits: int,
    granularity: str,
    axis: int | None,
    method: str,
    *,
    floor: np.ndarray | float | None = None,
    positive: bool = False,
    float16_scales: bool = False,
    rounding: str = "nearest",
    inputs: LayerInputs | None = None,
    keep_zeros: bool = False,
) -> QuantizedWeight:
    """Quantize ``values`` (float32) to ``bits``-bit symmetric levels by rows of ``granularity``.

    ``floor``: no scale below it (per row, or one value); ``positive``: an all-zero row gets scale 1 instead of 0
    (integer kernels need positive scales); ``float16_scales``: scales rounded to float16 (blockwise storage keeps
    them so, and the codes are computed against what is stored).  ``rounding``: a method registered in
    ``engine.registry.ROUNDING_METHODS``, fitted to what the layer read (``inputs``); per-channel scales are then
    refit to the codes (the scale minimizing the layer's output error for them), unless a floor binds them.
    Inputs with a ``cross`` moment (``--gradual``) make the fit aim at ``compensation_target`` rather than at
    ``values``; the weight SQNR is against ``values`` either way.  ``keep_zeros``: the fit leaves the zeros of
    ``values`` at code 0 (a pruned weight that is to stay sparse: moving error onto them would make it dense)."""
    target = values
    if rounding != "nearest" and inputs is not None and inputs.cross is not None:
        channels, back = as_rows(values, "channel", inputs.axis)
        target = back(compensation_target(channels, inputs)).astype(np.float32)
    rows, restore = as_rows(target, granularity, axis)
    rows = np.ascontiguousarray(rows, np.float32)  # as the kernels read them
    rows_digest = functools.cache(lambda: digest(rows))  # hashed once a call (new arrays are hashed each time)
    scales = _scales(method, rows, bits, rows_digest)
    if scales.shape != (rows.shape[0],) or not np.all(np.isfinite(scales) & (scales >= 0)):
        raise EngineError(
            f"scale method {method!r} returned {scales.shape} scales for {rows.shape[0]} rows, or a "
            "negative or non-finite one"
        )
    if float16_scales:
        scales = np.maximum(scales.astype(np.float16), np.finfo(np.float16).smallest_normal).astype(np.float32)
    if positive:
        scales = np.where(scales > 0, scales, np.float32(1.0))
    if floor is not None:
        scales = np.maximum(scales, floor).astype(np.float32)
    if rounding == "nearest" or inputs is None:
        code_rows, signal, noise = _nearest(rows, scales, bits, rows_digest)
        return QuantizedWeight(restore(code_rows), scales, power_ratio_db(signal, noise), restore, code_rows)
    zeros = values == 0 if keep_zeros else None
    code_rows = _fitted_codes(target, rows, restore, scales, bits, (granularity, axis), rounding, inputs, zeros)
    if granularity == "channel" and axis is not None and axis % values.ndim == inputs.axis and floor is None:
        scales = _refit_scales(rows, code_rows, scales, inputs.hessian)
    reference = rows if target is values else as_rows(values, granularity, axis)[0]
    signal, noise = kernels.signal_and_noise(reference, code_rows, scales)
    return QuantizedWeight(restore(code_rows), scales, power_ratio_db(signal, noise), restore, code_rows)


def _nearest(
    rows: np.ndarray, scales: np.ndarray, bits: int, rows_digest: Callable[[], bytes]
) -> tuple[np.ndarray, float, float]:
    """Each value rounded to its nearest level, and the weight's signal and noise powers; remembered, like the
    scales, where ``remembering`` asks (the accuracy search quantizes each weight alike in most of its builds)."""

    key = functools.cache(lambda: (bits, rows.shape, rows_digest(), digest(scales)))  # built only inside the block
    codes = remembered(lambda: ("nearest codes", *key()), lambda: kernels.quantize(rows, scales, bits))
    assert codes is not None
    powers = remembered(
        lambda: ("weight powers", *key()), lambda: np.array(kernels.signal_and_noise(rows, codes, scales))
    )
    assert powers is not None
    return codes, float(powers[0]), float(powers[1])


def _fitted_codes(
    values: np.ndarray,
    rows: np.ndarray,
    restore: Callable[[np.ndarray], np.ndarray],
    scales: np.ndarray,
    bits: int,
    grouping: tuple[str, int | None],
    rounding: str,
    inputs: LayerInputs,
    zeros: np.ndarray | None = None,
) -> np.ndarray:
    """Codes in the rows of ``grouping`` (granularity, axis) from a rounding method, which sees the weight by
    output channel; ``zeros`` (the weight's shape): codes held at 0."""
    qmax = 2 ** (bits - 1) - 1
    weight, channel_restore = as_rows(values, "channel", inputs.axis)
    steps, _ = as_rows(restore(np.broadcast_to(scales[:, None], rows.shape)), "channel", inputs.axis)
    held = None if zeros is None else as_rows(zeros, "channel", inputs.axis)[0]
    problem = RoundingProblem(np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(steps), qmax, inputs, held)
    codes = np.array(ROUNDING_METHODS.call(rounding, problem))
    if codes.shape != weight.shape or np.abs(codes).max(initial=0) > qmax:
        raise EngineError(f"rounding method {rounding!r} returned codes of shape {codes.shape} or beyond +-{qmax}")
    problem.keep_zeros(codes)  # whatever the method did with them
    return as_rows(channel_restore(codes.astype(np.int8)), *grouping)[0]


def _refit_scales(rows: np.ndarray, codes: np.ndarray, scales: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Per row, the scale s minimizing (w - s q)^T H (w - s q) for the codes q: q^T H w / q^T H q."""
    q, w = codes.astype(np.float64), rows.astype(np.float64)
    weighted = times_hessian(q, hessian)
    numerator, denominator = (weighted * w).sum(axis=1), (weighted * q).sum(axis=1)
    fitted = np.divide(numerator, denominator, out=scales.astype(np.float64), where=denominator > 0)
    return np.where(fitted > 0, fitted, scales).astype(np.float32)
