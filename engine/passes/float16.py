"""``float16``: store float32 weights as float16 behind DEQUANTIZE (half the bytes, float compute).

A sparse weight (behind DENSIFY) stays sparse, in the layout of engine.format.sparse whose index vectors cost
the fewest bytes when that is smaller than its own: MediaPipe's sparse 1x1 filters index their input channels in
two bytes where their outputs take one.  That re-encoding is lossless, so weights the file already stores as
sparse float16 get it too (the accuracy search's float16 rung then costs less than leaving them as they are).
"""

from __future__ import annotations

import numpy as np

from engine.format.ir import Model, SparsityParams, Tensor
from engine.format.sparse import constant_bytes, encode_sparse, fewest_index_bytes, kept_count, sparse_bytes
from engine.graph.weights import Weight, densify
from engine.passes.common import entry, install, select
from engine.quant.metrics import weight_sqnr_db
from engine.recipe import Recipe
from engine.report import TensorReport


def float16_weights(model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
    """Cast every selected FLOAT32 weight to FLOAT16; weights already float16 are listed and left, unless a
    sparse one takes fewer bytes in another layout."""
    if "float16" not in recipe.given("quantize"):
        return model, []
    chosen, reports = select(model, recipe, lambda options: options.quantize == "float16")
    for weight, options in chosen:
        values = weight.source.data
        assert values is not None
        if weight.stored_type == "FLOAT16":
            relaid = _smaller_layout(weight, values)
            if relaid is None:
                reports.append(entry(weight, options, "already FLOAT16"))
                continue
            report = entry(weight, options)
            report.reason = "already FLOAT16: its sparse layout re-encoded in fewer bytes (same values)"
            half = values
        else:
            with np.errstate(over="ignore"):
                half = values.astype(np.float16)
            overflow = half.size and not (np.isfinite(half.min()) and np.isfinite(half.max()))  # no temporaries
            if overflow and np.any(np.isinf(half) & np.isfinite(values)):
                reports.append(entry(weight, options, "values beyond FLOAT16's ±65504 would become infinite"))
                continue
            report = entry(weight, options)
            relaid = _smaller_layout(weight, half)
        stored = Tensor(f"{weight.name}_float16", weight.source.shape)
        stored.data, stored.sparsity = relaid if relaid is not None else (half, weight.source.sparsity)
        stored.shape = weight.source.shape
        install(model, weight, stored, direct=[])
        report.form, report.dtype_after = "dequantize", "FLOAT16"
        report.bytes_after = constant_bytes(stored)
        report.weight_sqnr_db = weight_sqnr_db(values, half)
        reports.append(report)
    return model, reports


def _smaller_layout(weight: Weight, half: np.ndarray) -> tuple[np.ndarray, SparsityParams] | None:
    """The stored values and layout of a sparse weight (``half``: its stored float16 values) in the cheapest
    layout, when that takes fewer bytes than the source's own; None for a dense weight or no gain."""
    source = weight.source
    if source.sparsity is None:
        return None
    own = sparse_bytes(half, source.sparsity)
    kept = kept_count(half)
    if kept * half.itemsize + fewest_index_bytes(weight.shape, kept) >= own:
        return None  # known without encoding (most of a sparse model's weights already are in their best layout)
    return encode_sparse(densify(half, weight.shape, source))
