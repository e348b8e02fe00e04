"""Magnitude pruning masks: which weights to zero, for one tensor (layer scope) or across many (global scope).

Pure numpy, no graph editing: a pass applies the masks. A mask is a boolean array of the weight's shape, True
where the weight is kept. Every pattern works on the weight's 2-D view ``[out, K]``: the output-channel axis
first, then the other axes in their order, the input (reduction) axis last, so K runs along the input axis
fastest. For the engine's layouts (``engine.graph.ops`` RULES' ``input_axis`` gives the axis per op):

- FULLY_CONNECTED [out, in]: channel 0, input 1. CONV_2D and TRANSPOSE_CONV OHWI: channel 0, input 3 (the
  view is TFLite's own im2col order H, W, I). CONV_3D DHWIO: channel 4, input 3. BATCH_MATMUL right-hand side
  [..., in, out]: channel -1, input -2 (swapped with ``adj_y``).
- DEPTHWISE_CONV_2D 1HWO: channel 3, input 2 (W). A depthwise filter reduces over its H x W taps only, never
  across channels, so its input dimension is a kernel row. N:M and block patterns then need W divisible by M
  (or C): 3x3 and 5x5 kernels are refused, which is right, as no kernel accelerates N:M depthwise filters.

Patterns (``pattern`` string):

- ``unstructured``: the ``round(sparsity * n)`` smallest |w| are pruned (rounding half up).
  Ties: among equal scores the group earlier in the [out, K] view's row-major order (in global scope: from the
  earlier tensor, then by that order) is pruned first, so the count is exact whatever the ties. For layouts with the
  channel axis first and the input axis last (FULLY_CONNECTED, CONV_2D, TRANSPOSE_CONV) that is the weight's
  own C order.
- ``N:M`` (e.g. ``2:4``): in every M consecutive weights along the input axis the N largest |w| are kept (ties
  as above). The input dimension must be a multiple of M (else ``EngineError`` naming the shape): a group
  never spans two kernel taps or batch matrices, and a tail group would break the N:M guarantee hardware
  relies on. The sparsity is implied, 1 - N/M; the ``sparsity`` argument must equal it (a mismatch is an
  error, so a caller asking for 75% does not silently get 50%). Global scope is the same as layer scope.
- ``block:RxC``: whole R x C blocks of the view (R output channels by C consecutive input positions at one
  kernel tap / batch matrix) are pruned by L2 norm; exactly ``round(sparsity * blocks)`` of them. The output
  channels must be a multiple of R and the input dimension a multiple of C.
- ``channel``: whole output filters (rows of the view) are pruned by L2 norm; exactly
  ``round(sparsity * channels)`` of them.

Global scope ranks every group (weight, block, filter) of every tensor by one normalized score, so the overall
sparsity is the asked one, counted in elements. See ``global_masks`` for the normalization.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineError

NORMALIZATIONS = ("lamp", "rms", "channel-lamp", "channel-rms")

_NM = re.compile(r"(\d+):(\d+)")
_BLOCK = re.compile(r"block:(\d+)x(\d+)")


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern string: ``kind`` is unstructured, n:m, block or channel; ``a``/``b`` are N, M or R, C."""

    kind: str
    a: int = 1
    b: int = 1


def parse_pattern(pattern: str) -> Pattern:
    """Check a pattern string once, so a typo is refused before any tensor is touched."""
    if pattern in ("unstructured", "channel"):
        return Pattern(pattern)
    if isinstance(pattern, str) and (nm := _NM.fullmatch(pattern)):
        n, m = int(nm[1]), int(nm[2])
        if not 0 < n < m:
            raise EngineError(f"pruning pattern {pattern!r}: N:M needs 0 < N < M")
        return Pattern("n:m", n, m)
    if isinstance(pattern, str) and (block := _BLOCK.fullmatch(pattern)):
        rows, cols = int(block[1]), int(block[2])
        if rows < 1 or cols < 1:
            raise EngineError(f"pruning pattern {pattern!r}: block sides must be at least 1")
        return Pattern("block", rows, cols)
    raise EngineError(f"unknown pruning pattern {pattern!r}: use unstructured, N:M (e.g. 2:4), block:RxC or channel")


def prune_mask(weight: np.ndarray, sparsity: float, pattern: str, channel_axis: int, input_axis: int) -> np.ndarray:
    """The keep-mask (True = keep) of one tensor pruned alone to ``sparsity`` with ``pattern`` (layer scope)."""
    return global_masks([(weight, channel_axis, input_axis)], sparsity, pattern)[0]


def global_masks(
    weights: Sequence[tuple[np.ndarray, int, int]],
    sparsity: float,
    pattern: str,
    normalization: str = "channel-lamp",
) -> list[np.ndarray]:
    """Keep-masks for ``(weight, channel_axis, input_axis)`` tensors pruned together to ``sparsity`` overall.

    Raw magnitudes would let scale decide (a layer with small weights would be emptied first), so each group's
    score is normalized where scales are shared. ``normalization``:

    - ``lamp`` (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021): with a
      tensor's group energies e (w^2, or the squared L2 norm of a block or filter) in ascending order,
      score(e_i) = e_i / sum(e_j for j >= i): the share of the energy still left that pruning e_i removes.
      Scale-free and monotone within the tensor (it still loses its smallest groups first); LAMP is the greedy
      minimizer of a bound on the model's output distortion. The largest group of a tensor scores 1 and goes
      last, so no tensor is emptied while others keep weights.
    - ``channel-lamp`` (default): the same within each output channel (each row of the [out, K] view; for
      block patterns each row of blocks) instead of each tensor. Converted models fold batch normalization into
      the weights, so the channels of one tensor have scales of their own, as different as layers' are; on
      the MediaPipe models it beats layer scope more often and by more than per-tensor ``lamp``
      (benchmarks/prune_scope.py). For the ``channel`` pattern (one score per filter) it is ``lamp``.
    - ``rms`` / ``channel-rms``: |w| (or the group's L2 norm) divided by the root mean square of the same over
      the tensor / the output channel.

    A single tensor is not normalized, so its mask is ``prune_mask``'s. Counts: when every group has the same
    size (weights, blocks, filters of equal length) exactly ``round(sparsity * groups)`` are pruned; otherwise
    (filters of different lengths) groups are pruned in score order while the pruned elements stay within
    ``round(sparsity * elements)``. N:M is per group by definition, so global scope equals layer scope.
    """
    kind = parse_pattern(pattern)
    _check_sparsity(sparsity, kind)
    if normalization not in NORMALIZATIONS:
        raise EngineError(f"unknown normalization {normalization!r}: use one of {', '.join(NORMALIZATIONS)}")
    views = [_View(w, c, i, kind) for w, c, i in weights]
    if not views:
        return []
    if kind.kind == "n:m":
        return [v.expand(v.n_of_m(kind.a, kind.b)) for v in views]
    scores = [v.scores() for v in views]
    if len(views) > 1:
        scores = [_normalize(s, normalization) for s in scores]
    # One tensor's scores are used as they are, and the group sizes only spelled out when they differ: on a
    # 4096x4096 weight the copy and an int64 size per weight took 3x the weight's bytes.
    flat = scores[0].ravel() if len(scores) == 1 else np.concatenate([s.ravel() for s in scores])
    sizes = None
    if len({v.group_size for v in views}) > 1:
        sizes = np.concatenate([np.full(s.size, v.group_size) for s, v in zip(scores, views, strict=True)])
    keep = _prune_lowest(flat, sizes, sparsity)
    masks, start = [], 0
    for s, v in zip(scores, views, strict=True):
        masks.append(v.expand(keep[start : start + s.size].reshape(s.shape)))
        start += s.size
    return masks


def sparsity_of(mask: np.ndarray | Sequence[np.ndarray]) -> float:
    """Fraction of elements pruned (False) in a mask, or overall in a list of masks, counted by element."""
    masks = [mask] if isinstance(mask, np.ndarray) else list(mask)
    total = sum(m.size for m in masks)
    return 1.0 - sum(int(np.count_nonzero(m)) for m in masks) / total if total else 0.0


class _View:
    """One weight as its 2-D view [out, K] (input axis fastest in K), and the groups a pattern scores."""

    def __init__(self, weight: np.ndarray, channel_axis: int, input_axis: int, pattern: Pattern) -> None:
        weight = np.asarray(weight)
        shape = tuple(weight.shape)
        if weight.dtype.kind != "f":
            raise EngineError(f"pruning needs a float weight, got {weight.dtype} of shape {shape}")
        if weight.ndim < 2 or weight.size == 0:
            raise EngineError(f"pruning needs a non-empty weight of rank 2 or more, got shape {shape}")
        axes = []
        for name, axis in (("channel", channel_axis), ("input", input_axis)):
            if not isinstance(axis, int | np.integer) or not -weight.ndim <= axis < weight.ndim:
                raise EngineError(f"{name} axis {axis!r} is out of range for weight shape {shape}")
            axes.append(int(axis) % weight.ndim)
        channel, inner = axes
        if channel == inner:
            raise EngineError(f"channel and input axis are both {channel} for weight shape {shape}")
        if not (np.isfinite(weight.min()) and np.isfinite(weight.max())):  # NaN wins both; no temporary
            raise EngineError(f"weight of shape {shape} holds NaN or infinity")
        self.order = [channel, *(a for a in range(weight.ndim) if a not in axes), inner]
        moved = np.transpose(weight, self.order)
        self.moved_shape = moved.shape
        self.matrix = np.abs(moved.reshape(moved.shape[0], -1))
        self.pattern, self.shape, self.inner = pattern, shape, weight.shape[inner]
        rows, cols = (pattern.a, pattern.b) if pattern.kind == "block" else (1, pattern.b)
        if pattern.kind in ("block", "n:m") and (self.matrix.shape[0] % rows or self.inner % cols):
            what = f"{rows} output channels by {cols} inputs" if pattern.kind == "block" else f"{cols} inputs"
            raise EngineError(
                f"pattern {pattern.kind}:{pattern.a}{'x' if pattern.kind == 'block' else ':'}{pattern.b} does not "
                f"tile weight shape {shape}: it has {self.matrix.shape[0]} output channels and input dimension "
                f"{self.inner} (axis {inner}), groups are {what}"
            )
        self.group_size = {"unstructured": 1, "block": rows * cols, "channel": self.matrix.shape[1]}.get(
            pattern.kind, 1
        )

    def scores(self) -> np.ndarray:
        """Per-group magnitude: |w|, or the L2 norm of each block or filter."""
        m = self.matrix
        if self.pattern.kind == "unstructured":
            return m
        if self.pattern.kind == "channel":
            return np.sqrt(np.einsum("ij,ij->i", m, m, dtype=np.float64))
        r, c = self.pattern.a, self.pattern.b
        blocks = m.reshape(m.shape[0] // r, r, m.shape[1] // c, c)
        return np.sqrt(np.einsum("arbc,arbc->ab", blocks, blocks, dtype=np.float64))

    def n_of_m(self, n: int, m: int) -> np.ndarray:
        """Keep the n largest of every m consecutive weights along the input axis; ties prune the earlier."""
        groups = self.matrix.reshape(-1, m)
        order = np.argsort(groups, axis=1, kind="stable")
        keep = np.ones(groups.shape, dtype=bool)
        np.put_along_axis(keep, order[:, : m - n], False, axis=1)
        return keep.reshape(self.matrix.shape)

    def expand(self, keep: np.ndarray) -> np.ndarray:
        """A group mask (same shape as ``scores()``, or the view's) as a mask of the weight's own shape."""
        rows, cols = self.matrix.shape
        if self.pattern.kind == "channel":
            keep = np.broadcast_to(keep[:, None], (rows, cols))
        elif self.pattern.kind == "block":
            r, c = self.pattern.a, self.pattern.b
            keep = np.broadcast_to(keep[:, None, :, None], (rows // r, r, cols // c, c)).reshape(rows, cols)
        return np.ascontiguousarray(keep.reshape(self.moved_shape).transpose(np.argsort(self.order)))


def _check_sparsity(sparsity: float, pattern: Pattern) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float | np.floating | np.integer):
        raise EngineError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0 <= sparsity < 1:
        raise EngineError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if pattern.kind == "n:m" and not math.isclose(sparsity, 1 - pattern.a / pattern.b, abs_tol=1e-9):
        implied = 1 - pattern.a / pattern.b
        raise EngineError(f"pattern {pattern.a}:{pattern.b} prunes {implied:g} of the weights, sparsity {sparsity!r}")


def _normalize(scores: np.ndarray, normalization: str) -> np.ndarray:
    """Scores made comparable across tensors (see ``global_masks``); all-zero rows score 0."""
    per_channel = normalization.startswith("channel-") and scores.ndim == 2
    s = scores.astype(np.float64).reshape(scores.shape[0] if per_channel else 1, -1)
    if normalization.endswith("rms"):
        rms = np.sqrt(np.mean(s * s, axis=1, keepdims=True))
        out = np.divide(s, rms, out=np.zeros_like(s), where=rms > 0)
    else:
        energy = s * s
        order = np.argsort(energy, axis=1, kind="stable")
        ranked = np.take_along_axis(energy, order, axis=1)
        tail = np.cumsum(ranked[:, ::-1], axis=1)[:, ::-1]  # each group's energy plus every larger one's
        out = np.empty_like(s)
        np.put_along_axis(out, order, np.divide(ranked, tail, out=np.zeros_like(tail), where=tail > 0), axis=1)
    return out.reshape(scores.shape)


def _prune_lowest(scores: np.ndarray, sizes: np.ndarray | None, sparsity: float) -> np.ndarray:
    """Keep-flags for groups pruned lowest score first (ties: lower index first) up to ``sparsity`` of elements;
    ``sizes``: each group's element count, None when they are all equal."""
    keep = np.ones(scores.size, dtype=bool)
    if sizes is not None:
        target = math.floor(sparsity * int(sizes.sum()) + 0.5)
        order = np.argsort(scores, kind="stable")
        count = int(np.searchsorted(np.cumsum(sizes[order]), target, side="right"))
        keep[order[:count]] = False
        return keep
    k = math.floor(sparsity * scores.size + 0.5)
    if k == 0:
        return keep
    threshold = np.partition(scores, k - 1)[k - 1]
    below = scores < threshold
    keep[below] = False
    keep[np.flatnonzero(scores == threshold)[: k - int(below.sum())]] = False
    return keep
