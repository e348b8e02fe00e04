"""Fold constant decoders: DEQUANTIZE and DENSIFY ops whose input is a constant become a float32 constant.

Full-integer quantization needs every weight as a plain float array it can requantize, and a float16 weight
behind DEQUANTIZE or a sparse one behind DENSIFY (MediaPipe stores all its weights so) would otherwise look like
a computed tensor.  The folded model computes exactly what the original did (both decoders are exact).
"""

from __future__ import annotations

from engine.format.ir import Model
from engine.passes.common import drop_unused, fold_decoder


def fold_constant_decoders(model: Model) -> tuple[Model, int]:
    """Replace every constant-input DEQUANTIZE/DENSIFY in every subgraph by its float32 result; returns the model
    and how many ops went.  Decoders of forms numpy cannot read (packed INT4/INT2) are left as they are."""
    folded = 0
    for sg in model.subgraphs:
        sources = [source for op in list(sg.operators) if (source := fold_decoder(sg, op)) is not None]
        drop_unused(sg, sources)
        folded += len(sources)
    return model, folded
