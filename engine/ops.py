"""Per-operator facts the passes need, kept as one table of data so a new op or a new column is one edit.

Each builtin op maps to an ``OpRule``: its builtin options table, and which input (if any) holds the weight a
compressor would quantize or prune, along which axis that weight's output channels lie, and where the bias is.
Negative axes count from the end (BATCH_MATMUL's right-hand side has any rank).  ``hybrid`` lists, per weight
bit width stored, the granularities for which LiteRT's builtin kernel reads the quantized weight directly with
float activations ("dynamic range" / hybrid kernels); anything else gets a DEQUANTIZE in front of the op.

The channel axes were measured with ai-edge-litert 2.3.0 and are checked against it by tests/test_op_layouts.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngineError
from engine.ir import Table


@dataclass(frozen=True)
class OpRule:
    """What the engine knows about one builtin operator.

    Options can move the channel axis: ``axis_option`` names an option holding it (GATHER's rows lie along its
    ``axis``); ``adjoint_option`` names a boolean option that, when set, means the weight is stored with its
    last two axes swapped (BATCH_MATMUL's ``adj_y``).  ``channel_axis`` applies both.
    """

    options: str | None = None
    weight_input: int | None = None
    weight_channel_axis: int | None = None
    bias_input: int | None = None
    hybrid: tuple[tuple[int, frozenset[str]], ...] = ()
    axis_option: str | None = None
    adjoint_option: str | None = None

    def hybrid_granularities(self, bits: int) -> frozenset[str]:
        """Granularities ("tensor", "channel", "block") of ``bits``-bit weights this op's kernel reads directly."""
        return dict(self.hybrid).get(bits, frozenset())

    def channel_axis(self, options: Table | None) -> int | None:
        """The weight's output-channel axis for an operator with these builtin options (None: no weight)."""
        fields = options.fields if options is not None else {}
        if self.axis_option is not None and fields.get(self.axis_option) is not None:
            return int(fields[self.axis_option])
        axis = self.weight_channel_axis
        if self.adjoint_option is not None and fields.get(self.adjoint_option) and axis in (-1, -2):
            return -3 - axis  # the last two axes swap places: -1 <-> -2
        return axis


_ELEMENTWISE = OpRule()

RULES: dict[str, OpRule] = {
    # Weighted ops. Layouts: CONV_2D OHWI, DEPTHWISE_CONV_2D 1HWO, FULLY_CONNECTED [out, in],
    # TRANSPOSE_CONV (inputs: output_shape, weights OHWI, input, bias), CONV_3D DHWIO,
    # BATCH_MATMUL right-hand side [..., in, out] ([..., out, in] with adj_y),
    # EMBEDDING_LOOKUP (inputs: ids, table [rows, ...]) and GATHER (inputs: params [rows, ...], indices): the
    # channels are the rows, as the hybrid lookup scales them; PRELU alpha broadcasts to the input, channels last.
    "CONV_2D": OpRule("Conv2DOptions", weight_input=1, weight_channel_axis=0, bias_input=2),
    "DEPTHWISE_CONV_2D": OpRule("DepthwiseConv2DOptions", weight_input=1, weight_channel_axis=3, bias_input=2),
    "FULLY_CONNECTED": OpRule("FullyConnectedOptions", weight_input=1, weight_channel_axis=0, bias_input=2),
    "TRANSPOSE_CONV": OpRule("TransposeConvOptions", weight_input=1, weight_channel_axis=0, bias_input=3),
    "CONV_3D": OpRule("Conv3DOptions", weight_input=1, weight_channel_axis=4, bias_input=2),
    "BATCH_MATMUL": OpRule("BatchMatMulOptions", weight_input=1, weight_channel_axis=-1, adjoint_option="adj_y"),
    "EMBEDDING_LOOKUP": OpRule(weight_input=1, weight_channel_axis=0),
    "GATHER": OpRule("GatherOptions", weight_input=0, weight_channel_axis=0, axis_option="axis"),
    "PRELU": OpRule(weight_input=1, weight_channel_axis=-1),
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
    "SLICE": OpRule("SliceOptions"),
    "SPLIT": OpRule("SplitOptions"),
}


def rule(op_name: str) -> OpRule:
    """The rule for ``op_name``; an op the table does not know is an error rather than a silent default."""
    try:
        return RULES[op_name]
    except KeyError:
        raise EngineError(f"operator {op_name} is not in engine.ops.RULES") from None
