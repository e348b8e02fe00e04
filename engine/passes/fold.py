"""Fold constant decoders: DEQUANTIZE and DENSIFY ops whose input is a constant become a float32 constant.

Full-integer quantization needs every weight as a plain float array it can requantize, and a float16 weight
behind DEQUANTIZE or a sparse one behind DENSIFY (MediaPipe stores all its weights so) would otherwise look like
a computed tensor.  The folded model computes exactly what the original did (both decoders are exact).
"""

from __future__ import annotations

import numpy as np

from engine.ir import PACKED_BITS, Model, Tensor
from engine.passes.common import drop_unused
from engine.weights import densify

_DECODERS = ("DEQUANTIZE", "DENSIFY")


def fold_constant_decoders(model: Model) -> tuple[Model, int]:
    """Replace every constant-input DEQUANTIZE/DENSIFY in every subgraph by its float32 result; returns the model
    and how many ops went.  Decoders of forms numpy cannot read (packed INT4/INT2) are left as they are."""
    folded = 0
    for sg in model.subgraphs:
        sources = []
        for op in list(sg.operators):
            if op.name not in _DECODERS or not op.inputs or op.inputs[0] is None or not op.inputs[0].is_constant:
                continue
            source, output = op.inputs[0], op.outputs[0]
            if output is None or source.type in PACKED_BITS or source.external_buffer is not None:
                continue
            value = _decoded(source) if op.name == "DEQUANTIZE" else _densified(source, output)
            if value is None:
                continue
            output.data = value.astype(np.float32) if op.name == "DEQUANTIZE" else value
            output.quantization = None if op.name == "DEQUANTIZE" else source.quantization
            sg.remove_operator(op)
            sources.append(source)
            folded += 1
        drop_unused(sg, sources)
    return model, folded


def _decoded(t: Tensor) -> np.ndarray | None:
    """What DEQUANTIZE makes of a dense constant: float16 widened, integers mapped through their scales."""
    if t.sparsity is not None or t.dtype is None:
        return None
    data = np.asarray(t.data)
    if data.dtype.kind == "f":
        return data
    q = t.quantization
    if q is None or q.scale is None or q.scale.size == 0 or q.details is not None:
        return None
    shape = [1] * data.ndim
    if q.scale.size > 1:
        shape[q.quantized_dimension] = -1
    zero = q.zero_point if q.zero_point is not None and q.zero_point.size else np.zeros(1, np.int64)
    return (data.astype(np.float64) - zero.reshape(shape)) * q.scale.astype(np.float64).reshape(shape)


def _densified(source: Tensor, output: Tensor) -> np.ndarray | None:
    if source.sparsity is None or output.shape is None or source.dtype is None:
        return None
    return densify(np.asarray(source.data), tuple(output.shape), source)
