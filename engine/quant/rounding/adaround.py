"""AdaRound (Nagel et al., 2020): learn, per weight, whether to round down or up so the layer's output error is
smallest, rather than taking the nearest level.

Each weight is ``s * clip(floor(w / s) + h(v), -qmax, qmax)`` with ``h(v) = clip(sigmoid(v) * 1.2 - 0.1, 0, 1)``
(the rectified sigmoid), ``v`` starting where ``h`` equals the weight's fractional part (nearest rounding's
neighbourhood).  The loss is the layer's output error on the calibration inputs, computed exactly through their
second moment H (``e H e^T`` per row, relative to nearest rounding's), plus a regularizer that pushes every
``h`` to 0 or 1, ``lambda * mean(1 - |2h - 1|^beta)``, with beta annealed from 20 to 2 after a warm-up without
it (the paper's schedule).  Adam over ``ITERATIONS`` full-batch steps (fewer for large layers: each step is a
[C, K] x [K, K] product, and the steps stop at ``WORK`` multiply-adds, at least ``MIN_ITERATIONS``); then
``h >= 0.5`` rounds up.  No deep
learning framework: the gradient of ``e H e^T`` is ``-2 e H``, a matrix product per step.
"""

from __future__ import annotations

import numpy as np

from engine.quant.rounding import RoundingProblem, times_hessian
from engine.registry import ROUNDING_METHODS

# Steps per layer: the budget that keeps a MediaPipe model under a minute on 2 cores (issue 14).  At 400 steps
# pose_landmark_full took 60.6 s (weight-int4) and 71.7 s (int8); 250 steps cut every model's time by about a
# third at the same held-out SQNR within noise (iris_landmark, face_landmark, hand_recrop, palm_detection_lite:
# weight-int4 -0.7..+0.1 dB, int8 -2.5..+2.8 dB).
ITERATIONS = 250
MIN_ITERATIONS = 50
# Multiply-adds per layer: MobileNet's 1024x1024 pointwise layers took 10 s each at 400 steps (the whole model
# 100 s on 2 cores); this bounds a layer to about 0.6 s.
WORK = 2.5e10
WARMUP = 0.2  # the first 20% of the steps fit the output error alone
REGULARIZATION = 0.01
BETA = (20.0, 2.0)
LEARNING_RATE = 1.0  # in logit space; measured on low-rank inputs: 0.05 gains 1 dB in 400 steps, 1.0 gains 8
_ZETA, _GAMMA = 1.1, -0.1


@ROUNDING_METHODS.register("adaround")
def adaround(problem: RoundingProblem) -> np.ndarray:
    """Codes [C, K] by adaptive rounding; never worse than nearest on the fitting data (checked, falling back)."""
    nearest = problem.nearest()
    scales = np.where(problem.scales > 0, problem.scales, 1.0).astype(np.float64)
    ratio = problem.weight.astype(np.float64) / scales
    floor = np.floor(ratio)
    rest = np.clip(ratio - floor, 0.01, 0.99)
    v = -np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)
    hessian = problem.inputs.hessian
    baseline = max(problem.output_error(nearest), 1e-30)
    moment, velocity = np.zeros_like(v), np.zeros_like(v)
    rows, k = problem.weight.shape
    iterations = int(np.clip(WORK / (rows * k * k), MIN_ITERATIONS, ITERATIONS))
    warm = int(WARMUP * iterations)
    for step in range(1, iterations + 1):
        sigmoid = 1 / (1 + np.exp(-v))
        h = np.clip(sigmoid * (_ZETA - _GAMMA) + _GAMMA, 0, 1)
        levels = np.clip(floor + h, -problem.qmax, problem.qmax)
        error = problem.weight - levels * scales
        weighted = times_hessian(error, hessian)
        inside = (h > 0) & (h < 1) & (np.abs(floor + h) < problem.qmax)
        grad_h = -2 * weighted * scales / baseline
        if step > warm:
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - (step - warm) / (iterations - warm))
            centred = 2 * h - 1
            grad_h += REGULARIZATION * -beta * np.abs(centred) ** (beta - 1) * np.sign(centred) * 2 / h.size
        grad = grad_h * inside * sigmoid * (1 - sigmoid) * (_ZETA - _GAMMA)
        moment = 0.9 * moment + 0.1 * grad
        velocity = 0.999 * velocity + 0.001 * grad**2
        v -= LEARNING_RATE * (moment / (1 - 0.9**step)) / (np.sqrt(velocity / (1 - 0.999**step)) + 1e-8)
    h = np.clip(1 / (1 + np.exp(-v)) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)
    # Held zeros are set after the fit, not during it: holding them changed 39 k of pose_detection's 5 M int8 codes
    # (21 of its zeros the fit moves) and cost 0.8 dB on held-out photos.
    codes = problem.keep_zeros(np.clip(floor + (h >= 0.5), -problem.qmax, problem.qmax).astype(np.int32))
    return codes if problem.output_error(codes) <= problem.output_error(nearest) else nearest
