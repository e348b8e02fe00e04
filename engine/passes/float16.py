"""``float16``: store float32 weights as float16 behind DEQUANTIZE (half the bytes, float compute)."""

from __future__ import annotations

import numpy as np

from engine.format.ir import Model, Tensor
from engine.passes.common import entry, install, select
from engine.quant.metrics import weight_sqnr_db
from engine.recipe import Recipe
from engine.report import TensorReport


def float16_weights(model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
    """Cast every selected FLOAT32 weight to FLOAT16; weights already float16 are listed and left."""
    if "float16" not in recipe.given("quantize"):
        return model, []
    chosen, reports = select(model, recipe, lambda options: options.quantize == "float16")
    for weight, options in chosen:
        if weight.stored_type == "FLOAT16":
            reports.append(entry(weight, options, "already FLOAT16"))
            continue
        values = weight.source.data
        assert values is not None
        with np.errstate(over="ignore"):
            half = values.astype(np.float16)
        overflow = half.size and not (np.isfinite(half.min()) and np.isfinite(half.max()))  # no temporaries
        if overflow and np.any(np.isinf(half) & np.isfinite(values)):
            reports.append(entry(weight, options, "values beyond FLOAT16's ±65504 would become infinite"))
            continue
        report = entry(weight, options)
        stored = Tensor(f"{weight.name}_float16", weight.source.shape, sparsity=weight.source.sparsity)
        stored.data = half
        stored.shape, stored.sparsity = weight.source.shape, weight.source.sparsity
        install(model, weight, stored, direct=[])
        report.form, report.dtype_after, report.bytes_after = "dequantize", "FLOAT16", half.nbytes
        report.weight_sqnr_db = weight_sqnr_db(values, half)
        reports.append(report)
    return model, reports
