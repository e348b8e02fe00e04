"""A scale method as a plugin: power-of-two scales, which fixed-point hardware applies as a shift.

Each row's scale is the smallest power of two that still fits its largest weight (2^ceil(log2(max|w| / qmax))),
so no weight is clipped and the step is at most twice ``minmax``'s.  Load it and select it like a built-in::

    python -m engine --plugin examples/plugins/pow2_scale.py compress in.tflite -o out.tflite \\
        --quantize weight-int8 --scale pow2
"""

import numpy as np

from engine.registry import SCALE_METHODS


@SCALE_METHODS.register("pow2")
def pow2(rows: np.ndarray, bits: int) -> np.ndarray:
    """rows float32 [R, n] -> one power-of-two scale per row (0 for an all-zero row)."""
    qmax = 2 ** (bits - 1) - 1
    peak = np.abs(rows).max(axis=1)
    exponent = np.ceil(np.log2(np.maximum(peak, np.finfo(np.float32).tiny) / qmax))
    return np.where(peak > 0, np.exp2(exponent), 0.0).astype(np.float32)
