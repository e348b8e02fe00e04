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

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.errors import EngineError
from engine.quant import kernels
from engine.quant.metrics import power_ratio_db
from engine.registry import SCALE_METHODS


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
) -> QuantizedWeight:
    """Quantize ``values`` (float32) to ``bits``-bit symmetric levels by rows of ``granularity``.

    ``floor``: no scale below it (per row, or one value); ``positive``: an all-zero row gets scale 1 instead of 0
    (integer kernels need positive scales); ``float16_scales``: scales rounded to float16 (blockwise storage keeps
    them so, and the codes are computed against what is stored)."""
    rows, restore = as_rows(values, granularity, axis)
    scales = np.asarray(SCALE_METHODS.call(method, np.ascontiguousarray(rows, np.float32), bits), np.float32)
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
    code_rows = kernels.quantize(rows, scales, bits)
    signal, noise = kernels.signal_and_noise(rows, code_rows, scales)
    return QuantizedWeight(restore(code_rows), scales, power_ratio_db(signal, noise), restore, code_rows)
