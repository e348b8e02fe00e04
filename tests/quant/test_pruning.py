"""Pruning masks: exact counts and tie rule, N:M on every group, blocks and filters whole, global scope."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.format.ir import Table
from engine.graph.ops import rule
from engine.quant.pruning import NORMALIZATIONS, global_masks, parse_pattern, prune_mask, sparsity_of


def input_axis(op: str, ndim: int, adjoint: bool = False) -> int:
    """The ops table's input axis for ``op``, made non-negative."""
    options = Table("BatchMatMulOptions", {"adj_y": True}) if adjoint else None
    return rule(op).input_axis(options) % ndim


# (shape, channel axis, input axis) of each weighted op's layout, as the ops table gives them.
LAYOUTS = {
    "FULLY_CONNECTED": ((16, 8), 0, 1),
    "CONV_2D": ((8, 3, 3, 8), 0, 3),
    "TRANSPOSE_CONV": ((4, 2, 2, 12), 0, 3),
    "DEPTHWISE_CONV_2D": ((1, 2, 4, 8), 3, 2),
    "CONV_3D": ((2, 2, 2, 8, 4), 4, 3),
    "BATCH_MATMUL": ((3, 8, 4), 2, 1),
}

sparsities = st.floats(0, 0.99, allow_nan=False)


def _weight(shape: tuple[int, ...], seed: int, levels: int | None = None) -> np.ndarray:
    """Random weights; ``levels`` few distinct magnitudes make ties common."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    if levels is not None:
        w = np.round(w * levels / 3) / levels
    return w.astype(np.float32)


def _rounded(sparsity: float, n: int) -> int:
    return math.floor(sparsity * n + 0.5)


def _view(a: np.ndarray, channel: int, inner: int) -> np.ndarray:
    """The [out, K] view the module documents: channel first, input axis last."""
    order = [channel, *(x for x in range(a.ndim) if x not in (channel, inner)), inner]
    t = np.transpose(a, order)
    return t.reshape(t.shape[0], -1)


@pytest.mark.parametrize("op", list(LAYOUTS))
def test_input_axis_of_each_layout(op: str) -> None:
    shape, _, inner = LAYOUTS[op]
    assert input_axis(op, len(shape)) == inner
    assert input_axis("BATCH_MATMUL", 3, adjoint=True) == 2  # adj_y: [..., out, in]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(LAYOUTS)), sparsities, st.integers(0, 2**16), st.sampled_from([None, 2, 4]))
def test_unstructured_prunes_exactly_the_smallest_with_earlier_ties_first(
    op: str, sparsity: float, seed: int, levels: int | None
) -> None:
    shape, channel, inner = LAYOUTS[op]
    w = _weight(shape, seed, levels)
    mask = prune_mask(w, sparsity, "unstructured", channel, inner)
    assert mask.shape == w.shape and mask.dtype == bool
    assert int((~mask).sum()) == _rounded(sparsity, w.size)
    kept, pruned = np.abs(w[mask]), np.abs(w[~mask])
    if kept.size and pruned.size:
        assert pruned.max() <= kept.min()
        tie = _view(np.abs(w), channel, inner).ravel() == pruned.max()
        flags = _view(mask, channel, inner).ravel()[tie]
        assert (np.sort(flags) == flags).all()  # among ties, pruned ones come first in the view's order


@settings(max_examples=40, deadline=None)
@given(sparsities, st.integers(0, 2**16), st.sampled_from(NORMALIZATIONS))
def test_global_unstructured_count_is_exact_and_each_tensor_loses_its_smallest(
    sparsity: float, seed: int, normalization: str
) -> None:
    weights = [(_weight(s, seed + k, 3) * 10.0**k, c, i) for k, (s, c, i) in enumerate(LAYOUTS.values())]
    masks = global_masks(weights, sparsity, "unstructured", normalization)
    total = sum(w.size for w, _, _ in weights)
    assert sum(int((~m).sum()) for m in masks) == _rounded(sparsity, total)
    assert sparsity_of(masks) == pytest.approx(_rounded(sparsity, total) / total)
    for (w, _, _), m in zip(weights, masks, strict=True):
        assert m.shape == w.shape
        if not normalization.startswith("channel-") and m.any() and not m.all():
            assert np.abs(w[~m]).max() <= np.abs(w[m]).min()


@pytest.mark.parametrize("normalization", ["lamp", "rms"])
@pytest.mark.parametrize("copies", [2, 3])
def test_global_over_identical_tensors_equals_layer(normalization: str, copies: int) -> None:
    rng = np.random.default_rng(copies)
    w = (rng.permutation(512).reshape(16, 32) + 1).astype(np.float32) * rng.choice([-1, 1], (16, 32))
    for sparsity in (0.25, 0.5, 0.875):
        layer = prune_mask(w, sparsity, "unstructured", 0, 1)
        for m in global_masks([(w, 0, 1)] * copies, sparsity, "unstructured", normalization):
            assert (m == layer).all()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_global_masks_do_not_depend_on_each_tensors_scale(normalization: str) -> None:
    weights = [(_weight(s, k), c, i) for k, (s, c, i) in enumerate(LAYOUTS.values())]
    scaled = [(w * 10.0 ** (3 - 2 * k), c, i) for k, (w, c, i) in enumerate(weights)]
    for pattern in ("unstructured", "channel", "block:2x4"):
        both = [(w, c, i) for w, c, i in weights if w.shape[c] % 2 == 0 and w.shape[i] % 4 == 0]
        both_scaled = [(w, c, i) for w, c, i in scaled if w.shape[c] % 2 == 0 and w.shape[i] % 4 == 0]
        for a, b in zip(
            global_masks(both, 0.6, pattern, normalization),
            global_masks(both_scaled, 0.6, pattern, normalization),
            strict=True,
        ):
            assert (a == b).all(), pattern


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(list(LAYOUTS)), st.integers(0, 2**16), st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4)]))
def test_n_of_m_holds_on_every_group_along_the_input_axis(op: str, seed: int, nm: tuple[int, int]) -> None:
    shape, channel, inner = LAYOUTS[op]
    n, m = nm
    w = _weight(shape, seed, 2)
    mask = prune_mask(w, 1 - n / m, f"{n}:{m}", channel, inner)
    groups_w, groups_m = _view(np.abs(w), channel, inner).reshape(-1, m), _view(mask, channel, inner).reshape(-1, m)
    assert (groups_m.sum(axis=1) == n).all()
    smallest_kept = np.where(groups_m, groups_w, np.inf).min(axis=1)
    largest_pruned = np.where(groups_m, -np.inf, groups_w).max(axis=1)
    assert (largest_pruned <= smallest_kept).all()
    # along the input axis means: moving the input axis to the end, every run of m holds n kept
    runs = np.moveaxis(mask, inner, -1).reshape(-1, m)
    assert (runs.sum(axis=1) == n).all()
    assert global_masks([(w, channel, inner)] * 2, 1 - n / m, f"{n}:{m}")[1].tolist() == mask.tolist()


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(list(LAYOUTS)),
    sparsities,
    st.integers(0, 2**16),
    st.sampled_from([(1, 1), (2, 4), (4, 2), (1, 8), (2, 2)]),
)
def test_block_masks_are_whole_blocks_and_the_count_is_exact(
    op: str, sparsity: float, seed: int, rc: tuple[int, int]
) -> None:
    shape, channel, inner = LAYOUTS[op]
    r, c = rc
    w = _weight(shape, seed, 2)
    if shape[channel] % r or shape[inner] % c:
        with pytest.raises(EngineError, match="does not tile weight shape"):
            prune_mask(w, sparsity, f"block:{r}x{c}", channel, inner)
        return
    mask = prune_mask(w, sparsity, f"block:{r}x{c}", channel, inner)
    view = _view(mask, channel, inner)
    blocks = view.reshape(view.shape[0] // r, r, view.shape[1] // c, c)
    assert (blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))).all()  # each block all kept or all pruned
    n_blocks = w.size // (r * c)
    assert int((~blocks.any(axis=(1, 3))).sum()) == _rounded(sparsity, n_blocks)
    norms = np.sqrt((_view(w.astype(np.float64), channel, inner) ** 2).reshape(blocks.shape).sum(axis=(1, 3)))
    kept = blocks.any(axis=(1, 3))
    if kept.any() and not kept.all():
        assert norms[~kept].max() <= norms[kept].min()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(list(LAYOUTS)), sparsities, st.integers(0, 2**16))
def test_channel_masks_are_whole_filters_and_the_count_is_exact(op: str, sparsity: float, seed: int) -> None:
    shape, channel, inner = LAYOUTS[op]
    w = _weight(shape, seed)
    mask = prune_mask(w, sparsity, "channel", channel, inner)
    per_filter = np.moveaxis(mask, channel, 0).reshape(shape[channel], -1)
    assert (per_filter.all(axis=1) == per_filter.any(axis=1)).all()
    assert int((~per_filter[:, 0]).sum()) == _rounded(sparsity, shape[channel])


def test_global_channel_with_filters_of_different_sizes_stays_within_the_target() -> None:
    weights = [(_weight(s, k), c, i) for k, (s, c, i) in enumerate(LAYOUTS.values())]
    total = sum(w.size for w, _, _ in weights)
    for sparsity in (0.1, 0.3, 0.5, 0.7, 0.9):
        masks = global_masks(weights, sparsity, "channel")
        pruned = sum(int((~m).sum()) for m in masks)
        biggest = max(w.size // w.shape[c] for w, c, _ in weights)
        assert _rounded(sparsity, total) - biggest < pruned <= _rounded(sparsity, total)
        for (w, c, _), m in zip(weights, masks, strict=True):
            filters = np.moveaxis(m, c, 0).reshape(w.shape[c], -1)
            assert (filters.all(axis=1) == filters.any(axis=1)).all()


def test_zero_sparsity_keeps_everything_and_zeros_go_first() -> None:
    w = _weight((8, 16), 0)
    assert prune_mask(w, 0.0, "unstructured", 0, 1).all()
    w[:, :4] = 0
    assert not prune_mask(w, 0.25, "unstructured", 0, 1)[:, :4].any()
    assert global_masks([], 0.5, "unstructured") == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: prune_mask(w, 0.5, "random", 0, 1), "unknown pruning pattern 'random'"),
        (lambda w: prune_mask(w, 0.5, "4:2", 0, 1), "N:M needs 0 < N < M"),
        (lambda w: prune_mask(w, 0.5, "0:4", 0, 1), "N:M needs 0 < N < M"),
        (lambda w: prune_mask(w, 0.5, "block:0x4", 0, 1), "block sides must be at least 1"),
        (lambda w: prune_mask(w, 0.5, "block:4", 0, 1), "unknown pruning pattern"),
        (lambda w: prune_mask(w, 1.0, "unstructured", 0, 1), r"sparsity must be in \[0, 1\)"),
        (lambda w: prune_mask(w, -0.1, "unstructured", 0, 1), r"sparsity must be in \[0, 1\)"),
        (lambda w: prune_mask(w, float("nan"), "unstructured", 0, 1), r"sparsity must be in \[0, 1\)"),
        (lambda w: prune_mask(w, True, "unstructured", 0, 1), "sparsity must be a number"),
        (lambda w: prune_mask(w, 0.75, "2:4", 0, 1), "pattern 2:4 prunes 0.5 of the weights"),
        (lambda w: prune_mask(w, 0.5, "2:4", 0, 0), "channel and input axis are both 0"),
        (lambda w: prune_mask(w, 0.5, "2:4", 0, 2), "input axis 2 is out of range"),
        (lambda w: prune_mask(w[0], 0.5, "channel", 0, 0), "rank 2 or more"),
        (lambda w: prune_mask(w.astype(np.int8), 0.5, "channel", 0, 1), "needs a float weight"),
        (lambda w: prune_mask(np.where(w > 1, np.nan, w), 0.5, "channel", 0, 1), "NaN or infinity"),
        (lambda w: prune_mask(w, 0.5, "3:6", 0, 1), r"does not tile weight shape \(6, 20\)"),
        (lambda w: prune_mask(w, 0.5, "block:4x4", 0, 1), r"does not tile weight shape \(6, 20\)"),
        (lambda w: global_masks([(w, 0, 1)] * 2, 0.5, "channel", "l1"), "unknown normalization 'l1'"),
    ],
)
def test_bad_requests_are_refused(call, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        call(_weight((6, 20), 0))


def test_depthwise_three_by_three_is_refused_for_n_of_m_naming_the_shape() -> None:
    w = _weight((1, 3, 3, 32), 0)
    with pytest.raises(EngineError, match=r"\(1, 3, 3, 32\).*input dimension 3 \(axis 2\)"):
        prune_mask(w, 0.5, "2:4", 3, input_axis("DEPTHWISE_CONV_2D", 4))
    assert parse_pattern("2:4").kind == "n:m"
