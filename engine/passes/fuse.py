"""Fold a RELU, RELU6 or RELU_N1_TO_1 op into the op before it, as that op's fused activation.

The result computes the same values with one op less, and matters most for full-integer quantization: the
producer's output then has the activation's range (no negative half wasting int8 levels), as TensorFlow's own
converter emits it.
"""

from __future__ import annotations

from engine.ir import Model, Table
from engine.ops import FUSES_ACTIVATION
from engine.schema import ENUMS

_ACTIVATIONS = ("RELU", "RELU6", "RELU_N1_TO_1")
_NONE = ENUMS["ActivationFunctionType"]["NONE"]


def fuse_activations(model: Model) -> tuple[Model, int]:
    """Fuse every activation op whose input is written by a fusable op with no fused activation yet and read by
    nothing else (nor a graph output); returns the model and how many ops went."""
    fused = 0
    for sg in model.subgraphs:
        producers, consumers = sg.producers(), sg.consumers()
        outputs = {id(t) for t in sg.outputs}
        for op in list(sg.operators):
            x = op.inputs[0] if op.name in _ACTIVATIONS and op.inputs else None
            producer = producers.get(id(x)) if x is not None else None
            if producer is None or producer.name not in FUSES_ACTIVATION or producer.builtin_options is None:
                continue
            options = producer.builtin_options
            if options.fields.get("fused_activation_function", _NONE) != _NONE:
                continue
            if len(consumers.get(id(x), [])) != 1 or id(x) in outputs or len(producer.outputs) != 1:
                continue
            activation = ENUMS["ActivationFunctionType"][op.name]
            producer.builtin_options = Table(options.type, {**options.fields, "fused_activation_function": activation})
            producer.outputs = [op.outputs[0]]
            producers[id(op.outputs[0])] = producer
            sg.remove_operator(op)
            sg.tensors = [t for t in sg.tensors if t is not x]
            fused += 1
    return model, fused
