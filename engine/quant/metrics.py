"""Error figures between a reference tensor and a candidate, and affine (de)quantization of arrays.

Plain numpy, no runtime: the passes report weight SQNR with these, validation compares model outputs with them.
"""

from __future__ import annotations

import math

import numpy as np

_CHUNK = 1 << 20  # values per step of weight_sqnr_db


def _normalized(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both tensors flattened to float64 and divided by their joint peak, so squares never underflow."""
    ref = np.asarray(reference, np.float64).ravel()
    cand = np.asarray(candidate, np.float64).ravel()
    peak = max(float(np.abs(ref).max(initial=0.0)), float(np.abs(cand).max(initial=0.0)))
    if peak == 0.0 or not math.isfinite(peak):
        return ref, cand
    return ref / peak, cand / peak


def _difference(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """reference - candidate, 0 where they are equal (equal infinities too), NaN where either is NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(reference == candidate, 0.0, np.subtract(reference, candidate, dtype=np.float64))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: +inf when identical, -inf for a zero reference or an infinite
    error, NaN when either holds NaN or both are infinite.  Never raises: the inf outputs of a model whose weights
    overflow are exactly what validation has to report."""
    ref, cand = _normalized(reference, candidate)
    with np.errstate(over="ignore"):
        noise = float(np.sum(np.square(_difference(ref, cand))))
        signal = float(np.sum(np.square(ref)))
    return power_ratio_db(signal, noise)


def weight_sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``sqnr_db`` of a float32 or float16 weight and what replaces it (same size), its two powers summed in float64
    a chunk at a time: sqnr_db's float64 copies of a large weight took several times its size (hundreds of MB for a
    4096x4096 layer).  Float32 squares cannot underflow or overflow float64, so no normalization is needed;
    non-finite values take sqnr_db's rules."""
    ref, cand = np.ravel(reference), np.ravel(candidate)
    signal = noise = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, ref.size, _CHUNK):
            r = ref[start : start + _CHUNK].astype(np.float64)
            d = r - cand[start : start + _CHUNK]
            signal += float(np.dot(r, r))
            noise += float(np.dot(d, d))
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return sqnr_db(reference, candidate)
    return power_ratio_db(signal, noise)


def power_ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) from the two powers: +inf without noise, -inf without signal, NaN if either is."""
    if math.isnan(noise) or math.isnan(signal):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * (math.log10(signal) - math.log10(noise))  # the ratio itself could underflow to 0


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest elementwise |reference - candidate| (0 for empty tensors, NaN if either holds NaN)."""
    diff = np.abs(_difference(np.asarray(reference, np.float64), np.asarray(candidate, np.float64)))
    return float(diff.max()) if diff.size else 0.0


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine of the angle between the flattened tensors; 1 if both are zero, 0 if only one is, NaN with
    infinities or NaN."""
    a, b = _normalized(reference, candidate)
    with np.errstate(invalid="ignore", over="ignore"):
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if na == 0.0 or nb == 0.0:
            return 1.0 if na == nb else 0.0
        return float(np.dot(a, b) / (na * nb))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows (all dims but the last) whose argmax over the last dim agrees."""
    ref = np.asarray(reference)
    rows_ref = ref.reshape(-1, ref.shape[-1])
    rows_cand = np.asarray(candidate).reshape(rows_ref.shape)
    return float(np.mean(rows_ref.argmax(axis=1) == rows_cand.argmax(axis=1)))


def quantize_array(values: np.ndarray, scale: float, zero_point: int, dtype: type | np.dtype) -> np.ndarray:
    """Affine-quantize float values to an integer dtype, rounding to nearest and saturating."""
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(values, np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_array(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Map affine-quantized integers back to float64."""
    return (np.asarray(values, np.float64) - zero_point) * scale
