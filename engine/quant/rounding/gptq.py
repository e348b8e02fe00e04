"""GPTQ rounding (Frantar et al., 2022, after Optimal Brain Surgeon): round the weights one input column at a
time and push each column's rounding error onto the columns not yet rounded, through the inverse of the layer
inputs' second moment H, so the layer's output error stays small rather than each weight's.

Per row group (one H for all rows, or one per row for depthwise filters): H is damped (1% of its mean diagonal
added), columns the inputs never reach are left to nearest rounding, columns are taken in order of decreasing
H diagonal (act-order: the most used inputs first, while the others can still absorb their error), and the
updates are applied in blocks of 128 columns (the same arithmetic, done as matrix products).  The scales stay
the ones the scale method chose; the caller may refit them to the codes (``refit_scales``).
"""

from __future__ import annotations

import numpy as np

from engine.quant.rounding import RoundingProblem, nearest_codes
from engine.registry import ROUNDING_METHODS

DAMPING = 0.01
BLOCK = 128


@ROUNDING_METHODS.register("gptq")
def gptq(problem: RoundingProblem) -> np.ndarray:
    """Codes [C, K] by GPTQ with act-order; never worse than nearest on the fitting data (checked, falling back)."""
    hessian = problem.inputs.hessian
    if hessian.shape[0] == 1:
        codes = _gptq_rows(problem.weight, problem.scales, problem.qmax, hessian[0], problem.zeros)
    else:
        codes = _gptq_each_row(problem.weight, problem.scales, problem.qmax, hessian, problem.zeros)
    codes = problem.keep_zeros(codes)  # the columns left to nearest rounding too
    nearest = problem.nearest()
    return codes if problem.output_error(codes) <= problem.output_error(nearest) else nearest


def _gptq_rows(
    weight: np.ndarray,
    scales: np.ndarray,
    qmax: int,
    hessian: np.ndarray,
    zeros: np.ndarray | None = None,
    act_order: bool = True,
) -> np.ndarray:
    """GPTQ on rows sharing one H: weight and scales [R, K], H [K, K] -> codes [R, K]; ``zeros`` [R, K]: codes
    held at 0, their error pushed onto the columns after them like any other (as SparseGPT does for a mask)."""
    held = np.zeros(weight.shape, bool) if zeros is None else zeros
    w = weight.astype(np.float64).copy()
    s = np.where(scales > 0, scales, 1.0).astype(np.float64)
    h = hessian.astype(np.float64).copy()
    k = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0  # inputs that are always zero: any value computes the same; nearest codes below
    diag_mean = float(np.mean(np.diag(h)))
    h[np.diag_indices(k)] += DAMPING * diag_mean
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, s, h, held = w[:, order], s[:, order], h[np.ix_(order, order)], held[:, order]
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U, U upper triangular
    except np.linalg.LinAlgError:  # numerically singular even when damped: nearest (the caller compares anyway)
        return nearest_codes(weight, scales, qmax)
    codes = np.zeros(w.shape, np.int32)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block = w[:, start:end].copy()
        errors = np.zeros_like(block)
        for i in range(end - start):
            column = block[:, i]
            q = np.where(held[:, start + i], 0, nearest_codes(column, s[:, start + i], qmax))
            codes[:, start + i] = q
            error = (column - q * s[:, start + i]) / upper[start + i, start + i]
            block[:, i:] -= np.outer(error, upper[start + i, start + i : end])
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    result = np.empty_like(codes)
    result[:, order] = codes
    result[:, dead] = nearest_codes(weight, scales, qmax)[:, dead]
    return result


def _gptq_each_row(
    weight: np.ndarray, scales: np.ndarray, qmax: int, hessian: np.ndarray, zeros: np.ndarray | None = None
) -> np.ndarray:
    """GPTQ with one H per row (depthwise filters: K is the kernel's area, so no blocks and no act-order), all rows
    at once: weight and scales [C, K], H [C, K, K] -> codes [C, K]; ``zeros`` as in `_gptq_rows`."""
    held = np.zeros(weight.shape, bool) if zeros is None else zeros
    w = weight.astype(np.float64).copy()
    s = np.where(scales > 0, scales, 1.0).astype(np.float64)
    h = hessian.astype(np.float64).copy()
    k = h.shape[1]
    diagonal = np.einsum("ckk->ck", h)
    dead = diagonal <= 0
    h[:, np.arange(k), np.arange(k)] += np.where(dead, 1.0, 0.0) + DAMPING * diagonal.mean(axis=1, keepdims=True)
    w[dead] = 0.0
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    except np.linalg.LinAlgError:
        return nearest_codes(weight, scales, qmax)
    codes = np.zeros(w.shape, np.int32)
    for i in range(k):
        q = np.where(held[:, i], 0, nearest_codes(w[:, i], s[:, i], qmax))
        codes[:, i] = q
        error = (w[:, i] - q * s[:, i]) / upper[:, i, i]
        w[:, i:] -= error[:, None] * upper[:, i, i:]
    codes[dead] = nearest_codes(weight, scales, qmax)[dead]
    return codes
