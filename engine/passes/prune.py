"""``--prune SPARSITY``: magnitude pruning, stored sparse where that makes the file smaller.

The masks come from ``engine.quant.pruning`` (unstructured, N:M, block, channel; one tensor at a time, or one
threshold over every weight pruned in global scope).  The pruned weight keeps its stored float type (float16
stays float16) and, with ``sparse_format`` ``tflite``, is stored in TFLite's sparse format behind DENSIFY
when that takes fewer bytes than dense, blockwise for block patterns DENSIFY decodes.  Passes that run after
(quantization) re-encode it and keep it sparse where that is smaller.  Channel pruning takes whole filters out
of the graph where it allows (``engine.passes.channels``), and zeroes them elsewhere.
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Model, Tensor
from engine.format.sparse import constant_bytes
from engine.graph.weights import Weight
from engine.passes.channels import plan_channels
from engine.passes.common import entry, float_constant, install, select
from engine.quant.metrics import weight_sqnr_db
from engine.quant.pruning import global_masks, prune_mask, sparsity_of
from engine.recipe import Recipe, TensorOptions
from engine.report import TensorReport


def prune_weights(model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
    """Zero the smallest weights of every weight the recipe prunes; one report entry per weight."""
    if not recipe.sets("prune"):
        return model, []
    chosen, reports = select(model, recipe, lambda options: options.prune is not None)
    layouts: list[tuple[Weight, TensorOptions]] = []
    layer_masks: dict[int, np.ndarray] = {}
    for weight, options in chosen:
        mask = _layer_mask(weight, options)
        if isinstance(mask, str):
            reports.append(entry(weight, options, mask))
        else:
            layouts.append((weight, options))
            layer_masks[id(weight)] = mask
    masks = _masks(layouts, layer_masks)
    edits = plan_channels(model, layouts, masks)
    pruned = {id(weight.value) for weight, _ in layouts}
    for weight, options in layouts:
        mask = masks[id(weight)]
        original = weight.decode()
        same_storage = (weight.source.sparsity is not None) == (options.sparse_format == "tflite")
        if same_storage and not np.any(original[~mask]) and id(weight.value) not in edits.weights:
            zero = sparsity_of(original != 0)
            left = entry(weight, options, f"already {zero:.1%} zero: pruning to {options.prune:.0%} changes nothing")
            left.sparsity = sparsity_of(mask)  # what the mask (in global scope, the one threshold) counts
            reports.append(left)
            continue
        values = np.where(mask, original, np.float32(0))  # +0.0: a sparse encoding keeps -0.0 as a value
        report = entry(weight, options)
        stored = _install(model, weight, edits.apply(weight, values).astype(weight.source.dtype, copy=False), options)
        report.sparsity, report.prune_pattern = sparsity_of(mask), options.prune_pattern
        report.channels_removed = edits.removed.get(id(weight.value))
        report.reason = edits.reasons.get(id(weight.value))
        report.weight_sqnr_db = weight_sqnr_db(original, values)
        report.dtype_after = stored.type_name
        report.bytes_after = constant_bytes(stored)
        report.form = "sparse" if stored.sparsity is not None else "dense"
        reports.append(report)
    for key, (weight, _) in edits.weights.items():  # readers of removed channels that are not pruned themselves
        if key not in pruned:
            options = recipe.resolve(weight.op_name, weight.name)
            _install(model, weight, edits.apply(weight, weight.decode()).astype(weight.source.dtype), options)
    return model, reports


def _install(model: Model, weight: Weight, values: np.ndarray, options: TensorOptions) -> Tensor:
    """Store ``values`` as the weight; the float tensor its readers see takes their shape (channels removed)."""
    stored = float_constant(weight, values, options)
    weight.value.shape = tuple(values.shape)
    if weight.value.shape_signature is not None:
        weight.value.shape_signature = tuple(values.shape)
    install(model, weight, stored, direct=[])
    return stored


def _layer_mask(weight: Weight, options: TensorOptions) -> np.ndarray | str:
    """The weight's keep-mask pruned alone, or why it cannot take the pattern: no input axis, or a shape the
    pattern does not tile (a 3x3 depthwise filter and 2:4, say); such weights are left as they are, not the
    whole model."""
    if weight.channel_axis is None or weight.input_axis is None or len(weight.shape) < 2:
        return f"{weight.op_name} weights have no pruning layout"
    try:
        return prune_mask(weight.decode(), options.prune, options.prune_pattern, weight.channel_axis, weight.input_axis)
    except EngineError as exc:
        return str(exc)


def _masks(layouts: list[tuple[Weight, TensorOptions]], layer_masks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Keep-masks by ``id(weight)``: each tensor's own (layer scope), or per (sparsity, pattern) group (global
    scope)."""
    masks: dict[int, np.ndarray] = {}
    groups: dict[tuple[float, str], list[Weight]] = {}
    for weight, options in layouts:
        assert options.prune is not None
        if options.prune_scope == "global":
            groups.setdefault((options.prune, options.prune_pattern), []).append(weight)
        else:
            masks[id(weight)] = layer_masks[id(weight)]
    for (sparsity, pattern), weights in groups.items():
        layout = [(w.decode(), w.channel_axis, w.input_axis) for w in weights]
        for weight, mask in zip(weights, global_masks(layout, sparsity, pattern), strict=True):
            masks[id(weight)] = mask
    return masks
