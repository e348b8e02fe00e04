"""Rounding methods: which integer level each weight gets once its scales are set.

Nearest rounding treats every weight alone.  The data-aware methods fit the codes to what the layer computes:
they minimize the layer's output error ``|| X (W - S * Q)^T ||^2`` on the inputs X the float model's layer saw on
calibration samples (the teacher's activations), through the inputs' second moment ``H = X^T X``.

A method is registered in ``engine.registry.ROUNDING_METHODS`` and selected with ``--rounding NAME`` (or
``"rounding"`` in a recipe, per op type or tensor); it is a function ``(problem: RoundingProblem) -> codes``:
``codes`` int array [C, K] with every value in [-qmax, qmax].  Weights whose layer has no input model here
(GATHER and EMBEDDING_LOOKUP tables, which are copied rather than multiplied; a weight read by several kinds of
op) fall back to nearest rounding, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.registry import ROUNDING_METHODS

# The least ridge of ``compensation_target``, relative to H's mean diagonal (GPTQ damps H by as much).
COMPENSATION_DAMPING = 0.01


@dataclass(frozen=True)
class LayerInputs:
    """What a weight's layer read on the calibration samples, in the weight's row view.

    ``axis``: the weight's output-channel axis; the rows are ``as_rows(weight, "channel", axis)`` ([C, K], K
    in the order the layer reduces over).  ``hessian``: float64 [G, K, K], the sum of x x^T over the input
    vectors x the rows were applied to, one matrix shared by every row (G = 1) or one per row (G = C, depthwise
    filters).  ``vectors``: how many input vectors it sums.  ``cross`` (``--gradual``, when the x come from a
    model whose earlier layers are quantized): the sum of x_f x^T [G, K, K], x_f the float model's input vector
    at the same place; the fit then aims at the float layer's outputs (``compensation_target``).
    """

    axis: int
    hessian: np.ndarray
    vectors: int
    cross: np.ndarray | None = None


@dataclass(frozen=True)
class RoundingProblem:
    """One weight to round: ``weight`` float32 [C, K] (rows by output channel), ``scales`` float32 [C, K] (each
    weight's step: per tensor, channel or block, already chosen by the scale method), levels in [-qmax, qmax],
    and what its layer read (``inputs``).  ``zeros`` (bool [C, K], or None): codes that must stay 0, the pruned
    weights of a weight that stays sparse; a method moves the error only onto the others (the caller zeroes
    them again whatever a method returns)."""

    weight: np.ndarray
    scales: np.ndarray
    qmax: int
    inputs: LayerInputs
    zeros: np.ndarray | None = None

    def nearest(self) -> np.ndarray:
        """Nearest rounding (as the engine's kernels do it), the starting point of every method and the fallback."""
        return self.keep_zeros(nearest_codes(self.weight, self.scales, self.qmax))

    def keep_zeros(self, codes: np.ndarray) -> np.ndarray:
        """``codes`` with the ``zeros`` set to 0 (in place)."""
        if self.zeros is not None:
            codes[self.zeros] = 0
        return codes

    def output_error(self, codes: np.ndarray) -> float:
        """The layer's summed squared output error over the inputs it was fitted on, sum_c e_c^T H_c e_c with
        e_c the row's weight error: what every method tries to make small."""
        error = self.weight.astype(np.float64) - codes * self.scales.astype(np.float64)
        return float(np.sum(times_hessian(error, self.inputs.hessian) * error))


def times_hessian(rows: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Each row [C, K] times its group's H ([1, K, K] shared, or [C, K, K] one per row): the product every
    output-error term and gradient is built from."""
    return rows @ hessian[0] if hessian.shape[0] == 1 else np.matmul(rows[:, None, :], hessian)[:, 0]


def compensation_target(rows: np.ndarray, inputs: LayerInputs) -> np.ndarray:
    """The rows [C, K] a fit on ``inputs`` aims at so that it reproduces the float layer's outputs on the float
    inputs, rather than the float weights' outputs on the quantized model's inputs.

    With X the float inputs, Xq the quantized model's (H = Xq^T Xq, M = X^T Xq summed as ``cross``), the error
    ||X W^T - Xq Q^T||^2 + d ||Q - W||^2 is a constant plus (Q - T) (H + d I) (Q - T)^T with
    T = W + W (M - H) (H + d I)^-1: so rounding T with H, as every method does, minimizes it.  The ridge d keeps
    T near W where the samples say little: 1% of H's mean diagonal plus K / vectors of it, since a target fitted
    from fewer vectors than it has unknowns per row (a deep layer's few positions) follows the calibration
    samples, not the data (iris_landmark, one layer a stage, without the second term: output SQNR on the fitting
    crops 36 -> 60 dB, on held-out crops 32.1 -> 29.1 dB)."""
    assert inputs.cross is not None
    hessian = inputs.hessian
    k = hessian.shape[-1]
    ridge = (COMPENSATION_DAMPING + k / inputs.vectors) * np.einsum("gkk->g", hessian) / k
    damped = hessian + np.where(ridge > 0, ridge, 1.0)[:, None, None] * np.eye(k)  # H = 0: inputs never reached
    w = rows.astype(np.float64)
    shift = times_hessian(w, inputs.cross - hessian)
    if hessian.shape[0] == 1:
        return w + np.linalg.solve(damped[0], shift.T).T
    return w + np.linalg.solve(damped, shift[:, :, None])[:, :, 0]


def nearest_codes(values: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """round(values / scales), half away from zero like ``engine.quant.kernels.quantize``, saturated to +-qmax."""
    ratio = values / np.where(scales > 0, scales, 1.0)
    return np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + 0.5), -qmax, qmax).astype(np.int32)


@ROUNDING_METHODS.register("nearest")
def nearest(problem: RoundingProblem) -> np.ndarray:
    """Each weight to its nearest level (the default; needs no data)."""
    return problem.nearest()


# The data-aware methods register on import; importing them here makes this package the one module that registers
# every built-in rounding method (engine.registry loads it on first use).
from engine.quant.rounding import adaround, gptq  # noqa: E402, F401
