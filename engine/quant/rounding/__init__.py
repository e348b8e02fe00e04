"""Rounding methods: which integer level each weight gets once its scales are set.

Nearest rounding treats every weight alone.  The data-aware methods fit the codes to what the layer computes:
they minimize the layer's output error ``|| X (W - S * Q)^T ||^2`` on the inputs X the float model's layer saw on
calibration samples (the teacher's activations), through the inputs' second moment ``H = X^T X``.

A method is registered in ``engine.registry.ROUNDING_METHODS`` and selected with ``--rounding NAME`` (or
``"rounding"`` in a recipe, per op type or tensor); it is a function ``(problem: RoundingProblem) -> codes``:
``codes`` int array [C, K] with every value in [-qmax, qmax].  Weights whose layer has no input model here
(TRANSPOSE_CONV, GATHER, a weight read by several kinds of op) fall back to nearest rounding, and the report
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.registry import ROUNDING_METHODS


@dataclass(frozen=True)
class LayerInputs:
    """What a weight's layer read on the calibration samples, in the weight's row view.

    ``axis``: the weight's output-channel axis; the rows are ``as_rows(weight, "channel", axis)`` ([C, K], K
    in the order the layer reduces over).  ``hessian``: float64 [G, K, K], the sum of x x^T over the input
    vectors x the rows were applied to, one matrix shared by every row (G = 1) or one per row (G = C, depthwise
    filters).  ``vectors``: how many input vectors it sums.
    """

    axis: int
    hessian: np.ndarray
    vectors: int


@dataclass(frozen=True)
class RoundingProblem:
    """One weight to round: ``weight`` float32 [C, K] (rows by output channel), ``scales`` float32 [C, K] (each
    weight's step: per tensor, channel or block, already chosen by the scale method), levels in [-qmax, qmax],
    and what its layer read (``inputs``)."""

    weight: np.ndarray
    scales: np.ndarray
    qmax: int
    inputs: LayerInputs

    def nearest(self) -> np.ndarray:
        """Nearest rounding (as the engine's kernels do it), the starting point of every method and the fallback."""
        return nearest_codes(self.weight, self.scales, self.qmax)

    def output_error(self, codes: np.ndarray) -> float:
        """The layer's summed squared output error over the inputs it was fitted on, sum_c e_c^T H_c e_c with
        e_c the row's weight error: what every method tries to make small."""
        error = self.weight.astype(np.float64) - codes * self.scales.astype(np.float64)
        return float(np.sum(times_hessian(error, self.inputs.hessian) * error))


def times_hessian(rows: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Each row [C, K] times its group's H ([1, K, K] shared, or [C, K, K] one per row): the product every
    output-error term and gradient is built from."""
    return rows @ hessian[0] if hessian.shape[0] == 1 else np.matmul(rows[:, None, :], hessian)[:, 0]


def nearest_codes(values: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """round(values / scales), half away from zero like ``engine.quant.kernels.quantize``, saturated to +-qmax."""
    ratio = values / np.where(scales > 0, scales, 1.0)
    return np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + 0.5), -qmax, qmax).astype(np.int32)


@ROUNDING_METHODS.register("nearest")
def nearest(problem: RoundingProblem) -> np.ndarray:
    """Each weight to its nearest level (the default; needs no data)."""
    return problem.nearest()
