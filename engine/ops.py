"""Per-operator facts the passes need, kept as one table of data so a new op or a new column is one edit.

Each builtin op maps to an ``OpRule``: its builtin options table, and which input (if any) holds the weight a
compressor would quantize or prune, along which axis that weight's output channels lie, and where the bias is.
Negative axes count from the end (BATCH_MATMUL's right-hand side has any rank).  ``hybrid`` lists, per weight
bit width stored, the granularities for which LiteRT's builtin kernel reads the quantized weight directly with
float activations ("dynamic range" / hybrid kernels); anything else gets a DEQUANTIZE in front of the op.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngineError


@dataclass(frozen=True)
class OpRule:
    """What the engine knows about one builtin operator."""

    options: str | None = None
    weight_input: int | None = None
    weight_channel_axis: int | None = None
    bias_input: int | None = None
    hybrid: tuple[tuple[int, frozenset[str]], ...] = ()

    def hybrid_granularities(self, bits: int) -> frozenset[str]:
        """Granularities ("tensor", "channel", "block") of ``bits``-bit weights this op's kernel reads directly."""
        return dict(self.hybrid).get(bits, frozenset())


_ELEMENTWISE = OpRule()

RULES: dict[str, OpRule] = {
    # Weighted ops. Layouts: CONV_2D OHWI, DEPTHWISE_CONV_2D 1HWO, FULLY_CONNECTED [out, in],
    # TRANSPOSE_CONV (inputs: output_shape, weights OHWI, input, bias), CONV_3D DHWIO,
    # BATCH_MATMUL right-hand side [..., in, out], EMBEDDING_LOOKUP (inputs: ids, table [rows, dim]).
    "CONV_2D": OpRule("Conv2DOptions", weight_input=1, weight_channel_axis=0, bias_input=2),
    "DEPTHWISE_CONV_2D": OpRule("DepthwiseConv2DOptions", weight_input=1, weight_channel_axis=3, bias_input=2),
    "FULLY_CONNECTED": OpRule("FullyConnectedOptions", weight_input=1, weight_channel_axis=0, bias_input=2),
    "TRANSPOSE_CONV": OpRule("TransposeConvOptions", weight_input=1, weight_channel_axis=0, bias_input=3),
    "CONV_3D": OpRule("Conv3DOptions", weight_input=1, weight_channel_axis=4, bias_input=2),
    "BATCH_MATMUL": OpRule("BatchMatMulOptions", weight_input=1, weight_channel_axis=-1),
    "EMBEDDING_LOOKUP": OpRule(weight_input=1, weight_channel_axis=0),
    # Arithmetic.
    "ADD": OpRule("AddOptions"),
    "SUB": OpRule("SubOptions"),
    "MUL": OpRule("MulOptions"),
    "DIV": OpRule("DivOptions"),
    "MAXIMUM": OpRule("MaximumMinimumOptions"),
    "MINIMUM": OpRule("MaximumMinimumOptions"),
    # Pooling and reductions.
    "AVERAGE_POOL_2D": OpRule("Pool2DOptions"),
    "MAX_POOL_2D": OpRule("Pool2DOptions"),
    "MEAN": OpRule("ReducerOptions"),
    # Activations.
    "SOFTMAX": OpRule("SoftmaxOptions"),
    "RELU": _ELEMENTWISE,
    "RELU6": _ELEMENTWISE,
    "RELU_N1_TO_1": _ELEMENTWISE,
    "LOGISTIC": _ELEMENTWISE,
    "TANH": _ELEMENTWISE,
    "HARD_SWISH": OpRule("HardSwishOptions"),
    "PRELU": _ELEMENTWISE,
    "LEAKY_RELU": OpRule("LeakyReluOptions"),
    # Type conversion.
    "DEQUANTIZE": OpRule("DequantizeOptions"),
    "QUANTIZE": OpRule("QuantizeOptions"),
    "DENSIFY": OpRule("DensifyOptions"),
    # Data movement.
    "RESHAPE": OpRule("ReshapeOptions"),
    "CONCATENATION": OpRule("ConcatenationOptions"),
    "PAD": OpRule("PadOptions"),
    "RESIZE_BILINEAR": OpRule("ResizeBilinearOptions"),
    "STRIDED_SLICE": OpRule("StridedSliceOptions"),
    "TRANSPOSE": OpRule("TransposeOptions"),
    "SQUEEZE": OpRule("SqueezeOptions"),
    "GATHER": OpRule("GatherOptions"),
    "SLICE": OpRule("SliceOptions"),
    "SPLIT": OpRule("SplitOptions"),
}


# Constant inputs LiteRT's DEQUANTIZE kernel decodes: weight bit width -> granularities.
DEQUANTIZE_INPUTS: dict[int, frozenset[str]] = {
    8: frozenset({"tensor", "channel"}),
    4: frozenset({"tensor", "channel"}),
}

# DEQUANTIZE's operator version by input type (per-channel int8 has its own), as the runtime's op resolver
# registers them: a model declaring a version the runtime does not register fails to load.
_DEQUANTIZE_VERSIONS = {"INT8": 2, "FLOAT16": 3, "INT16": 3, "INT4": 6}
_DEQUANTIZE_PER_CHANNEL_INT8_VERSION = 5


def dequantize_version(input_type: str, per_channel: bool) -> int:
    """The DEQUANTIZE version a model must declare for this input."""
    if input_type == "INT8" and per_channel:
        return _DEQUANTIZE_PER_CHANNEL_INT8_VERSION
    return _DEQUANTIZE_VERSIONS.get(input_type, 1)


def rule(op_name: str) -> OpRule:
    """The rule for ``op_name``; an op the table does not know is an error rather than a silent default."""
    try:
        return RULES[op_name]
    except KeyError:
        raise EngineError(f"operator {op_name} is not in engine.ops.RULES") from None
