"""Fold a RELU, RELU6 or RELU_N1_TO_1 op into the op before it, as that op's fused activation (and back).

The result computes the same values with one op less, and matters most for full-integer quantization: the
producer's output then has the activation's range (no negative half wasting int8 levels), as TensorFlow's own
converter emits it.  ``unfuse_activation`` is the inverse, for a kernel that skips its fused activation.
"""

from __future__ import annotations

from engine.format.ir import Model, Operator, Subgraph, Table, Tensor
from engine.format.schema import ENUMS, enum_name
from engine.graph.ops import FUSES_ACTIVATION

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


def unfuse_activation(model: Model, sg: Subgraph, op: Operator) -> bool:
    """Move ``op``'s fused RELU, RELU6 or RELU_N1_TO_1 into an op of its own right after it, which then writes
    ``op``'s old output; False (nothing changed) when ``op`` has no such activation."""
    options = op.builtin_options
    code = options.fields.get("fused_activation_function", _NONE) if options is not None else _NONE
    name = enum_name("ActivationFunctionType", code)
    if options is None or name not in _ACTIVATIONS:
        return False
    out = op.outputs[0]
    assert out is not None
    before = Tensor(f"{out.name}/before_{name.lower()}", out.shape, out.type, shape_signature=out.shape_signature)
    op.builtin_options = Table(options.type, {**options.fields, "fused_activation_function": _NONE})
    op.outputs[0] = before
    sg.insert_operator(sg.operators.index(op) + 1, Operator(model.opcode(name), [before], [out]))
    return True
