"""A non-uniform 4-bit codebook as a plugin: NF4-like levels (QLoRA's NormalFloat idea), fixed quantiles of a
normal distribution scaled to each row's largest weight, so a bell-shaped row spends its 16 levels where its
weights are.  Zero is one of the levels, so pruned zeros stay exact.  Select it for weight sharing::

    python -m engine --plugin examples/plugins/nf4_codebook.py compress in.tflite -o out.tflite \\
        --cluster 16 --cluster-init nf4 --cluster-granularity channel --cluster-storage gather
"""

from statistics import NormalDist

import numpy as np

from engine.registry import CODEBOOK_METHODS

# 7 negative and 8 positive quantiles of N(0, 1) at evenly spaced probabilities, normalized to [-1, 1], and 0.
_HALF = np.array([NormalDist().inv_cdf(0.5 + 0.4677 * i / 8) for i in range(1, 9)])
LEVELS = np.concatenate([-_HALF[:7][::-1] / _HALF[6], [0.0], _HALF / _HALF[7]]).astype(np.float32)


@CODEBOOK_METHODS.register("nf4")
def nf4(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The 16 levels times max |row|, and each weight's nearest level (k must allow 16)."""
    if k < LEVELS.size:
        raise ValueError(f"nf4 has {LEVELS.size} levels; ask for --cluster {LEVELS.size} or more")
    book = LEVELS * np.float32(np.abs(row).max(initial=0.0))
    labels = np.abs(row[:, None] - book[None, :]).argmin(axis=1).astype(np.uint8)
    return book, labels
