"""Fold constant decoders: DEQUANTIZE and DENSIFY ops whose input is a constant become a float32 constant.

Full-integer quantization needs every weight as a plain float array it can requantize, and a float16 weight
behind DEQUANTIZE or a sparse one behind DENSIFY (MediaPipe stores all its weights so) would otherwise look like
a computed tensor.  The folded model computes exactly what the original did (both decoders are exact).
``restore_decoders`` puts back those whose constants end up read only by float ops, so float islands keep the
input's storage, also when a pass rescaled the constant meanwhile (activation equalization): the new value is
stored in the decoder's input encoding when that holds it exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from engine.format.ir import Buffer, Model, Operator, QuantizationParams, Subgraph, Tensor
from engine.graph.weights import stored_form
from engine.passes.common import drop_unused, fold_decoder


@dataclass
class Folded:
    """A decoder folded away: the op (still holding its stored input and its output tensor), its subgraph, and
    what the output tensor was before it became a constant (``restore_decoders`` puts it back)."""

    op: Operator
    subgraph: Subgraph
    buffer: Buffer | None
    quantization: QuantizationParams | None
    folded: Buffer | None = None
    decoded: QuantizationParams | None = None


def fold_constant_decoders(model: Model) -> tuple[Model, list[Folded]]:
    """Replace every constant-input DEQUANTIZE/DENSIFY in every subgraph by its float32 result; returns the model
    and the decoders that went.  Decoders of forms numpy cannot read (packed INT4/INT2) are left as they are."""
    folded = []
    for sg in model.subgraphs:
        sources = []
        for op in list(sg.operators):
            out = op.outputs[0] if op.outputs else None
            before = Folded(op, sg, out.buffer, out.quantization) if out is not None else None
            if (source := fold_decoder(sg, op)) is not None:
                assert before is not None and out is not None
                before.folded, before.decoded = out.buffer, out.quantization
                folded.append(before)
                sources.append(source)
        drop_unused(sg, sources)
    return model, folded


def restore_decoders(folded: list[Folded]) -> int:
    """Put back the folded decoders whose constant is still in the decoded form, read only by ops left float:
    those keep the input model's storage (float16, sparse) instead of float32.  A constant rescaled since
    (equalization) is written back into the decoder's input when its encoding holds the new value exactly;
    otherwise it stays float32.  Returns how many came back."""
    restored = 0
    readers: dict[int, dict[int, list[Operator]]] = {}  # per subgraph: id(tensor) -> the ops reading it
    sources = Counter(id(f.op.inputs[0]) for f in folded)
    for f in reversed(folded):  # DENSIFY -> DEQUANTIZE chains come back from the reader's end
        out = f.op.outputs[0]
        if out is None or out.buffer is None or out.quantization is not f.decoded:
            continue  # quantized since
        if id(f.subgraph) not in readers:
            readers[id(f.subgraph)] = f.subgraph.consumers()
        by_tensor = readers[id(f.subgraph)]
        if not by_tensor.get(id(out)):
            continue
        if out.buffer is not f.folded and (sources[id(f.op.inputs[0])] > 1 or not _rewrite_source(f.op, out)):
            continue  # rescaled since, and its decoder's input cannot hold the new value
        ops = f.subgraph.operators
        first = min(ops.index(op) for op in by_tensor[id(out)])
        out.buffer, out.quantization = f.buffer, f.quantization
        f.subgraph.insert_operator(first, f.op)
        for t in f.op.inputs:
            if t is not None:
                by_tensor.setdefault(id(t), []).append(f.op)
        restored += 1
    return restored


def _rewrite_source(decoder: Operator, out: Tensor) -> bool:
    """Store ``out``'s changed value in the decoder's input, in that input's encoding; False when it cannot hold
    it exactly.  The input keeps its tensor (a folded DENSIFY upstream then sees its own output changed)."""
    source = decoder.inputs[0]
    array = stored_form(source, np.asarray(out.data))
    if array is None:
        return False
    source.buffer = Buffer.of(array)
    return True
