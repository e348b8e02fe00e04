"""Per-operator facts the passes need, kept as one table of data so a new op or a new column is one edit.

Each builtin op maps to an ``OpRule``: its builtin options table, and which input (if any) holds the weight a
compressor would quantize or prune, along which axis that weight's output channels lie, and where the bias is.
Negative axes count from the end (BATCH_MATMUL's right-hand side has any rank).  ``hybrid`` lists, per weight
bit width stored, the granularities for which LiteRT's builtin kernel reads the quantized weight directly with
float activations ("dynamic range" / hybrid kernels) and computes the right result (loading is not enough:
DEPTHWISE_CONV_2D loads one scale per tensor and then reads one per channel); anything else gets a DEQUANTIZE
in front of the op.

The kernel facts (channel axes, hybrid forms, versions) were measured with ai-edge-litert 2.3.0 and are checked
against it by tests/graph/test_op_layouts.py and tests/graph/test_runtime_forms.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import EngineError
from engine.format.ir import Table


@dataclass(frozen=True)
class OpRule:
    """What the engine knows about one builtin operator.

    Options can move the channel axis: ``axis_option`` names an option holding it (GATHER's rows lie along its
    ``axis``); ``adjoint_option`` names a boolean option that, when set, means the weight is stored with its
    last two axes swapped (BATCH_MATMUL's ``adj_y``).  ``channel_axis`` applies both.

    ``packed_rows_whole_bytes``: the packed (int4/int2) hybrid kernel starts row r at byte
    ``r * row_size * bits // 8``, so it reads the weight right only when each slice along axis 0 fills whole
    bytes (an even number of int4 codes, a multiple of four int2 codes).

    ``activation_apart``: hybrid forms whose LiteRT 2.3 builtin kernel computes the product right but skips the
    op's fused activation (FULLY_CONNECTED with blockwise int4 weights, ``BlockwiseQuantization``: a RELU output
    keeps its negative values), while XNNPACK applies it; the weight pass writes the activation as an op of its
    own after such an op (``passes.fuse.unfuse_activation``), which both runtimes compute right.

    ``xnnpack_hybrid``: the hybrid forms XNNPACK takes over; it leaves the others to the builtin kernel, which
    splits the graph around the op (DEPTHWISE_CONV_2D with int8 weights read directly made hand_landmark_full 1.6x
    slower than float).  Where XNNPACK decodes the DEQUANTIZE alternative once at load time
    (``XNNPACK_FOLDED_DEQUANTIZE``) and runs the float op, that is the faster form in the default interpreter.

    ``xnnpack_computed_weight``: XNNPACK runs the op on a weight computed at run time too (BATCH_MATMUL), so it
    takes it after a DEQUANTIZE it does not decode at load time (INT4/INT2); the other weighted ops it leaves to
    the builtin kernels then.

    ``bias_required``: the kernels need the bias input (LiteRT 2.3: CONV_2D refuses to prepare without one,
    DEPTHWISE_CONV_2D with two inputs crashes both runtimes); the other weighted ops' biases are optional.

    ``max_version`` is the highest operator version LiteRT registers: a model declaring a higher one fails to
    load, while every version from 1 up runs the same kernels (hybrid, per-channel and int4 weights need no
    particular version).

    Channel removal (``--prune-pattern channel``) follows a pruned filter's output channel, the last axis of
    the activations, through the ops that read it.  ``channel_flow`` says what an op does with that axis of
    its ``channel_inputs``: ``"contract"`` sums over it (the weight's input axis loses the channel; such an op
    also starts a removal, its output channels being the weight's channel axis), ``"pass"`` computes each
    channel on its own (its output keeps the channel and the removal goes on), ``"merge"`` combines inputs
    channel by channel (every input must lose the same channels).  ``channel_constants`` are inputs holding one
    value per channel on their last axis, removed with it; ``channel_options`` are option values the op needs
    to keep channels apart (a depthwise multiplier of 1); ``channel_paddings_input`` holds [rank, 2] paddings
    that must leave the channel axis unpadded.  An op with no ``channel_flow`` stops a removal.

    Full-integer quantization (``--quantize int8|int16x8``, LiteRT's integer quantization specification):
    ``integer`` lists the integer kernel families (``INTEGER_KERNELS``: "int8"; "int16", the 16x8 kernels)
    LiteRT has a kernel for, each with the op version a converter declares for it.
    ``scales`` says where the output's (scale, zero_point) comes from: "own" (its calibrated range), "same"
    (the kernel does not rescale: the output and every float activation input share one), "fixed" (the kernel
    requires ``fixed_output``).  ``integer_weights`` is the weight's granularity (symmetric int8, zero point 0)
    in the integer kernel; the bias becomes ``BIAS_TYPES[family]`` with scale input_scale * weight_scale.
    ``integer_options`` are (family, option, value) the integer kernel needs.  ``xnnpack_integer=False``:
    XNNPACK (LiteRT's CPU delegate) does not take the op's int8 form, so an int8 model splits into many
    partitions around it and runs slower than the float model; with a float interface (a CPU model) such an op
    stays float between a DEQUANTIZE and a QUANTIZE, which XNNPACK runs in one partition.
    ``integer_computed_weight``: the integer kernels also take the weight input computed at run time, an
    activation with its own calibrated (scale, zero point) (BATCH_MATMUL of two activations: attention's scores
    and values).  XNNPACK takes that int8 product only with a right-hand side of zero point 0, which a calibrated
    asymmetric range rarely has (and forcing one cost the digits attention classifier 1.7 points), so in a CPU
    model it stays float between conversions; integer-interface and ``--strict`` models get it integer, on the
    builtin kernel.

    Cross-layer equalization (``--equalize``, engine/passes/equalize.py) rescales channels through the ops that
    keep them apart (``channel_flow`` "pass") and are ``homogeneous``: positively homogeneous channel by channel,
    op(s * x) = s * op(x) for every s > 0 (RELU, PRELU whatever its alphas, PAD with zeros, pooling; BATCH_MATMUL
    in its right-hand side, whose last axis it keeps; ADD, a "merge", when all its inputs are scaled alike), with a
    fused activation in ``HOMOGENEOUS_ACTIVATIONS``.  RELU6, RELU_N1_TO_1, HARD_SWISH, LOGISTIC and TANH clip or
    bend at fixed values, so scaling through them would change what the model computes.  ``reshapes``: the op
    copies its input's elements in order into another shape (RESHAPE, SQUEEZE), so element j of the output's last
    axis holds the input's channel j mod C for every C dividing both last axes; ``concatenates``: the output holds
    every input's elements unchanged, on the last axis at offsets that are sums of whole inputs' channels (the same
    mod C when C divides each).  Activation equalization (engine/passes/full_integer/smooth.py) follows channels
    through both.
    """

    options: str | None = None
    weight_input: int | None = None
    weight_channel_axis: int | None = None
    weight_input_axis: int | None = None
    bias_input: int | None = None
    bias_required: bool = False
    hybrid: tuple[tuple[int, frozenset[str]], ...] = ()
    max_version: int = 1
    axis_option: str | None = None
    adjoint_option: str | None = None
    packed_rows_whole_bytes: bool = False
    activation_apart: tuple[tuple[int, frozenset[str]], ...] = ()
    xnnpack_hybrid: tuple[tuple[int, frozenset[str]], ...] = ()
    xnnpack_computed_weight: bool = False
    channel_flow: str | None = None
    channel_inputs: tuple[int, ...] = (0,)
    channel_constants: tuple[int, ...] = ()
    channel_options: tuple[tuple[str, int], ...] = ()
    channel_paddings_input: int | None = None
    integer: tuple[tuple[str, int], ...] = ()
    scales: str = "own"
    fixed_output: tuple[tuple[str, float, int], ...] = ()
    integer_weights: str = "channel"
    integer_options: tuple[tuple[str, str, object], ...] = ()
    xnnpack_integer: bool = True
    integer_computed_weight: bool = False
    homogeneous: bool = False
    reshapes: bool = False
    concatenates: bool = False

    def integer_version(self, family: str) -> int | None:
        """The op version a full-integer model declares for the kernel ``family`` ("int8"/"int16"); None: no
        kernel."""
        return dict(self.integer).get(family)

    def fixed_params(self, family: str) -> tuple[float, int] | None:
        """The (scale, zero_point) the integer kernel requires of the output, if it fixes one."""
        return next(((s, z) for a, s, z in self.fixed_output if a == family), None)

    def options_for(self, family: str) -> dict[str, object]:
        """Option values the integer kernel needs (int16 ADD/SUB must not assume power-of-two scales)."""
        return {name: value for a, name, value in self.integer_options if a == family}

    def hybrid_granularities(self, bits: int) -> frozenset[str]:
        """Granularities ("tensor", "channel", "block") of ``bits``-bit weights this op's kernel reads directly."""
        return dict(self.hybrid).get(bits, frozenset())

    def keeps_activation_apart(self, bits: int, granularity: str) -> bool:
        """Whether this hybrid form needs its fused activation as an op of its own (see ``activation_apart``)."""
        return granularity in dict(self.activation_apart).get(bits, frozenset())

    def xnnpack_runs_hybrid(self, bits: int, granularity: str, weight_shape: Sequence[int]) -> bool:
        """Whether XNNPACK (the default interpreter's delegate) takes this hybrid form over: a packed (int4/int2)
        weight only when each of its rows fills whole bytes (measured on FULLY_CONNECTED; the builtin kernel runs
        the others, right)."""
        if granularity not in dict(self.xnnpack_hybrid).get(bits, frozenset()):
            return False
        return bits >= 8 or math.prod(weight_shape[1:]) * bits % 8 == 0

    def runs_hybrid(self, bits: int, granularity: str, weight_shape: Sequence[int]) -> bool:
        """Whether LiteRT computes right when the op reads this quantized weight directly (the ``activation_apart``
        forms with their activation as an op of its own)."""
        if granularity not in self.hybrid_granularities(bits) and not self.keeps_activation_apart(bits, granularity):
            return False
        return not (bits < 8 and self.packed_rows_whole_bytes and math.prod(weight_shape[1:]) * bits % 8)

    def channel_axis(self, options: Table | None) -> int | None:
        """The weight's output-channel axis for an operator with these builtin options (None: no weight)."""
        fields = options.fields if options is not None else {}
        if self.axis_option is not None and fields.get(self.axis_option) is not None:
            return int(fields[self.axis_option])
        return self._adjoint(self.weight_channel_axis, fields)

    def input_axis(self, options: Table | None) -> int | None:
        """The weight's input (reduction) axis, which pruning patterns run along (None: the op has none)."""
        return self._adjoint(self.weight_input_axis, options.fields if options is not None else {})

    def _adjoint(self, axis: int | None, fields: dict) -> int | None:
        if self.adjoint_option is not None and fields.get(self.adjoint_option) and axis in (-1, -2):
            return -3 - axis  # the last two axes swap places: -1 <-> -2
        return axis


_BOTH = frozenset({"tensor", "channel"})
_CHANNEL = frozenset({"channel"})
# LiteRT's integer kernel families, by the activations they compute in: int8 and int16 (the 16x8 kernels, int8
# weights).  An activation scheme (engine.quant.activations) names the family that runs it; the columns below
# (integer, fixed_output, integer_options) are keyed by family, so a new scheme on existing kernels is one
# registry entry, not an edit of every row.
I8, I16 = "int8", "int16"
# Each family's activation tensor type, and whether its kernels assume zero point 0 (int16 ones do).
INTEGER_KERNELS = {I8: ("INT8", False), I16: ("INT16", True)}
# The bias of an integer weighted op, by family: int32 for int8, int64 for 16x8 (zero point 0).
BIAS_TYPES = {I8: "INT32", I16: "INT64"}
# Ops whose kernels (float and integer) apply a fused_activation_function option: a RELU/RELU6/RELU_N1_TO_1
# after one of them folds into it (engine/passes/fuse.py).
# The fused_activation_function values that commute with positive per-channel scaling (see ``homogeneous``).
HOMOGENEOUS_ACTIVATIONS = frozenset({"NONE", "RELU"})
FUSES_ACTIVATION = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "AVERAGE_POOL_2D", "MAX_POOL_2D"}
)

# fmt: off
RULES: dict[str, OpRule] = {
    # Weighted ops. Layouts: CONV_2D OHWI, DEPTHWISE_CONV_2D 1HWO, FULLY_CONNECTED [out, in],
    # TRANSPOSE_CONV (inputs: output_shape, weights OHWI, input, bias), CONV_3D DHWIO,
    # BATCH_MATMUL right-hand side [..., in, out] ([..., out, in] with adj_y),
    # EMBEDDING_LOOKUP (inputs: ids, table [rows, ...]) and GATHER (inputs: params [rows, ...], indices): the
    # channels are the rows, as the hybrid lookup scales them; PRELU alpha broadcasts to the input, channels last.
    # Input (reduction) axes, along which N:M and block pruning run: the im2col order's last axis; a depthwise
    # filter only sums over its H x W taps, so its input axis is W (a kernel row).
    # Hybrid kernels: DEPTHWISE_CONV_2D reads one scale per output channel even when given one per tensor (wrong
    # results); GATHER, PRELU and CONV_3D have none (GATHER returns the codes, PRELU garbage, CONV_3D refuses).
    # Integer versions are tensorflow/lite/tools/versioning/op_version.cc's for the forms the engine writes (bias
    # present, no fused activation on TRANSPOSE_CONV, rank <= 4).  16x8 CONV_2D, DEPTHWISE_CONV_2D and
    # FULLY_CONNECTED get 1 there: its int16 test wants int16 weights, so int8 weights fall through (8/11 only
    # with quantized_bias_type set).  Integer kernels measured (tests/graph/test_integer_kernels.py): per-channel int8
    # weights run right in CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV (int8 and 16x8).  Bias:
    # int8 refuses int64 (FULLY_CONNECTED reads it wrong); 16x8 CONV_2D and TRANSPOSE_CONV misread int32 unless
    # quantized_bias_type says INT32, DEPTHWISE_CONV_2D refuses it, FULLY_CONNECTED reads both.  CONV_3D refuses
    # int8/int16 input; EMBEDDING_LOOKUP refuses a non-float output.
    "CONV_2D": OpRule(
        "Conv2DOptions", weight_input=1, weight_channel_axis=0, weight_input_axis=3, bias_input=2, bias_required=True,
        hybrid=((8, _BOTH), (4, _BOTH)), xnnpack_hybrid=((8, _BOTH),), max_version=8, channel_flow="contract",
        integer=((I8, 3), (I16, 1)),
    ),
    "DEPTHWISE_CONV_2D": OpRule(
        "DepthwiseConv2DOptions", weight_input=1, weight_channel_axis=3, weight_input_axis=2, bias_input=2,
        bias_required=True,
        hybrid=((8, _CHANNEL),), max_version=7, channel_flow="pass", channel_constants=(1, 2),
        channel_options=(("depth_multiplier", 1),), integer=((I8, 3), (I16, 1)),  # 2 with dilation
    ),
    "FULLY_CONNECTED": OpRule(
        "FullyConnectedOptions", weight_input=1, weight_channel_axis=0, weight_input_axis=1, bias_input=2,
        hybrid=((8, _BOTH), (4, _BOTH), (2, _BOTH)), max_version=14, activation_apart=((4, frozenset({"block"})),),
        xnnpack_hybrid=((8, _BOTH), (4, _BOTH | {"block"}), (2, _CHANNEL)),
        channel_flow="contract", integer=((I8, 4), (I16, 1)),  # keep_num_dims: 5; two inputs (no -1 bias): 6
    ),
    "TRANSPOSE_CONV": OpRule(
        "TransposeConvOptions", weight_input=1, weight_channel_axis=0, weight_input_axis=3, bias_input=3,
        hybrid=((8, _BOTH),), xnnpack_hybrid=((8, _BOTH),), max_version=5,
        integer=((I8, 3), (I16, 3)),  # 3: has a bias (2 without)
    ),
    "CONV_3D": OpRule("Conv3DOptions", weight_input=1, weight_channel_axis=4, weight_input_axis=3, bias_input=2),
    # BATCH_MATMUL reads one scale for the whole right-hand side: per-channel codes give all-zero outputs.
    "BATCH_MATMUL": OpRule(
        "BatchMatMulOptions", weight_input=1, weight_channel_axis=-1, weight_input_axis=-2,
        hybrid=((8, _BOTH),), xnnpack_hybrid=((8, _BOTH),), xnnpack_computed_weight=True, max_version=4,
        adjoint_option="adj_y", channel_flow="pass", channel_inputs=(1,), channel_options=(("adj_y", False),),
        homogeneous=True, integer=((I8, 2), (I16, 3)),
        integer_weights="tensor", integer_computed_weight=True,
    ),
    "EMBEDDING_LOOKUP": OpRule(
        weight_input=1, weight_channel_axis=0, hybrid=((8, _BOTH), (4, _BOTH), (2, _BOTH)), max_version=5,
        packed_rows_whole_bytes=True,
    ),
    # GATHER copies codes, and its output takes the params' type whatever the model says: the params are
    # quantized like the output (one scale; int16 params for 16x8), other output parameters read wrong.
    "GATHER": OpRule(
        "GatherOptions", weight_input=0, weight_channel_axis=0, max_version=8, axis_option="axis",
        integer=((I8, 2), (I16, 4)), scales="same", integer_weights="tensor",
    ),
    # PRELU reads one alpha scale (per-channel alpha: wrong); alpha is int8 (any zero point) for int8 and 16x8
    # alike (an int16 alpha reads wrong).
    # PRELU: XNNPACK takes float PRELU only (alpha of any form); its int8 builtin kernel is right with a per-tensor
    # alpha (a per-channel one computes wrong) but slow: iris_landmark int8 ran 6.4 ms in 38 partitions against
    # 0.75 ms with its 53 PRELUs as float islands (1 thread).
    "PRELU": OpRule(
        weight_input=1, weight_channel_axis=-1, channel_flow="pass", channel_constants=(1,), homogeneous=True,
        integer=((I8, 1), (I16, 1)), integer_weights="tensor", xnnpack_integer=False,
    ),
    # Arithmetic.  int16 ADD/SUB: with pot_scale_int16 (default true) and power-of-two scales the kernel takes a
    # shift-only path that refuses unequal input shifts; false always rescales, and gives op_version.cc's 3/5.
    "ADD": OpRule(
        "AddOptions", max_version=6, channel_flow="merge", channel_inputs=(0, 1), integer=((I8, 2), (I16, 3)),
        integer_options=((I16, "pot_scale_int16", False),), homogeneous=True,
    ),
    "SUB": OpRule(
        "SubOptions", max_version=5, integer=((I8, 2), (I16, 5)), integer_options=((I16, "pot_scale_int16", False),),
    ),
    "MUL": OpRule("MulOptions", max_version=8, integer=((I8, 2), (I16, 4))),  # int8: 3 if s1 * s2 / s_out >= 1
    "DIV": OpRule("DivOptions", max_version=2, integer=((I8, 1), (I16, 1))),  # rescales; op_version.cc: 1
    # MAXIMUM/MINIMUM, pooling and the data movement ops below compare or copy codes: other input/output
    # parameters are not refused, the result is silently wrong.
    "MAXIMUM": OpRule("MaximumMinimumOptions", max_version=4, integer=((I8, 2), (I16, 4)), scales="same"),
    "MINIMUM": OpRule("MaximumMinimumOptions", max_version=4, integer=((I8, 2), (I16, 4)), scales="same"),
    # Pooling and reductions.
    "AVERAGE_POOL_2D": OpRule(
        "Pool2DOptions", max_version=3, channel_flow="pass", integer=((I8, 2), (I16, 3)), scales="same",
        homogeneous=True,
    ),
    "MAX_POOL_2D": OpRule(
        "Pool2DOptions", max_version=3, channel_flow="pass", integer=((I8, 2), (I16, 3)), scales="same",
        homogeneous=True,
    ),
    "MEAN": OpRule("ReducerOptions", max_version=3, integer=((I8, 2), (I16, 3))),
    # Activations.  Fixed output parameters, refused otherwise at prepare: SOFTMAX int8 (1/256, -128), int16
    # (1/32768, 0); LOGISTIC the same (int8's zero point is not checked but assumed: 0 reads wrong); int16 TANH a
    # 2^-15 scale, zero point 0.  int8 TANH's lookup table rescales to any output: (1/128, 0), the spec's, spans
    # [-1, 1].  HARD_SWISH and RELU_N1_TO_1 refuse int16 when invoked.
    "SOFTMAX": OpRule(
        "SoftmaxOptions", max_version=4, integer=((I8, 2), (I16, 3)), scales="fixed",
        fixed_output=((I8, 1 / 256, -128), (I16, 1 / 32768, 0)),
    ),
    "RELU": OpRule(max_version=3, channel_flow="pass", integer=((I8, 2), (I16, 3)), homogeneous=True),
    "RELU6": OpRule(max_version=3, channel_flow="pass", integer=((I8, 2), (I16, 3))),
    "RELU_N1_TO_1": OpRule(integer=((I8, 1),)),
    "LOGISTIC": OpRule(
        max_version=3, channel_flow="pass", integer=((I8, 2), (I16, 3)), scales="fixed",
        fixed_output=((I8, 1 / 256, -128), (I16, 1 / 32768, 0)),
    ),
    "TANH": OpRule(
        max_version=3, channel_flow="pass", integer=((I8, 2), (I16, 3)), scales="fixed",
        fixed_output=((I8, 1 / 128, 0), (I16, 1 / 32768, 0)),
    ),
    "HARD_SWISH": OpRule("HardSwishOptions", channel_flow="pass", integer=((I8, 1),)),
    "LEAKY_RELU": OpRule("LeakyReluOptions", max_version=2, integer=((I8, 1), (I16, 2))),
    # Type conversion.  QUANTIZE requantizes int8 -> int8 and int16 -> int16 and converts uint8, int8 and int16
    # into each other (but int16 -> uint8: refused); its versions are also float -> int8 (1) and float -> int16
    # (2).  DEQUANTIZE reads int8, uint8 and int16 (zero point 0) into float; an integer output runs and is
    # garbage.  DENSIFY refuses a computed input.
    "DEQUANTIZE": OpRule("DequantizeOptions", max_version=9),
    "QUANTIZE": OpRule("QuantizeOptions", max_version=6, integer=((I8, 1), (I16, 2))),
    "DENSIFY": OpRule("DensifyOptions"),
    # Data movement: the integer kernels copy codes, so input and output share their parameters (CONCATENATION
    # int8 refuses others at prepare, int16 reads them wrong).  Versions: op_version.cc has no int16 case for
    # STRIDED_SLICE (1; 4 for rank > 4); int8 RESIZE_BILINEAR with half_pixel_centers is 3.
    "RESHAPE": OpRule("ReshapeOptions", integer=((I8, 1), (I16, 1)), scales="same", reshapes=True),
    "CONCATENATION": OpRule(
        "ConcatenationOptions", max_version=7, integer=((I8, 2), (I16, 3)), scales="same", concatenates=True
    ),
    "PAD": OpRule(
        "PadOptions", max_version=6, channel_flow="pass", channel_paddings_input=1, integer=((I8, 2), (I16, 3)),
        scales="same", homogeneous=True,
    ),
    "RESIZE_BILINEAR": OpRule(  # each output value a convex combination of one channel's input values
        "ResizeBilinearOptions", max_version=4, integer=((I8, 2), (I16, 4)), scales="same", channel_flow="pass",
        homogeneous=True,
    ),
    "STRIDED_SLICE": OpRule("StridedSliceOptions", max_version=8, integer=((I8, 2), (I16, 1)), scales="same"),
    "TRANSPOSE": OpRule("TransposeOptions", max_version=9, integer=((I8, 2), (I16, 5)), scales="same"),
    "SQUEEZE": OpRule("SqueezeOptions", max_version=2, integer=((I8, 1), (I16, 1)), scales="same", reshapes=True),
    "SLICE": OpRule("SliceOptions", max_version=8, integer=((I8, 2), (I16, 4)), scales="same"),
    "DEPTH_TO_SPACE": OpRule("DepthToSpaceOptions", max_version=2, integer=((I8, 2),), scales="same"),  # no int16
    "SPLIT": OpRule("SplitOptions", max_version=5, integer=((I8, 2), (I16, 4)), scales="same"),
}
# fmt: on

# What DEQUANTIZE turns into float32, by stored bit width (16: FLOAT16, no quantization parameters; 8, 4, 2:
# INT8 and packed INT4/INT2, symmetric) and granularity (per-channel along any quantized_dimension).  Every form runs
# in both the builtin kernel and with XNNPACK, so any weight the hybrid kernels cannot read can take this route.
DEQUANTIZE_INPUTS: dict[int, frozenset[str]] = {16: frozenset({"tensor"}), 8: _BOTH, 4: _BOTH, 2: _BOTH}

# The stored types whose constant DEQUANTIZE XNNPACK decodes once, when the model loads, so the op after it runs
# as a float op at float speed: FLOAT16 and INT8 (per tensor or channel).  INT4/INT2 DEQUANTIZE runs in the builtin
# kernel, and XNNPACK then leaves the op reading its output to the builtin kernels too (unless it takes a computed
# weight: ``xnnpack_computed_weight``).
XNNPACK_FOLDED_DEQUANTIZE = frozenset({"FLOAT16", "INT8"})

# What DENSIFY turns back into a dense tensor (the layouts of engine.format.sparse), by stored type: the block shapes
# (rows, columns) of a 2-D [out, in] weight, None meaning unblocked CSR (any rank: 2-D and 4-D OHWI measured).
# INT8 keeps its quantization parameters (per channel too) for the DEQUANTIZE after it.  Every form comes out
# bit-exact, with Uint8, Uint16 or Int32 index vectors, in the builtin kernel and with XNNPACK (when its readers
# are as below); the kernel walks the metadata generically, so every block measured works.  Every other type
# (UINT8, INT16, INT32, INT64, FLOAT64, BOOL, ...) is refused when the model runs ("Type N not supported").
DENSIFY_BLOCKS: frozenset[tuple[int, int] | None] = frozenset(
    {None, (1, 4), (4, 1), (1, 8), (8, 1), (1, 16), (16, 1), (2, 2), (2, 4), (4, 4)}
)
DENSIFY_INPUTS: dict[str, frozenset[tuple[int, int] | None]] = dict.fromkeys(
    ("FLOAT32", "FLOAT16", "INT8"), DENSIFY_BLOCKS
)

# XNNPACK (the default delegate) takes DENSIFY (and the DEQUANTIZE after it) into its own graph; the dense weight
# is then right for these readers (measured exact, after DEQUANTIZE for FLOAT16/INT8), but wrong where the dense
# form is right: a FLOAT32 DENSIFY output that is a graph output fails to run ("failed to setup XNNPACK runtime")
# or, beside a delegated reader, comes out garbage, and EMBEDDING_LOOKUP reads garbage through DENSIFY +
# DEQUANTIZE of FLOAT16/INT8.  (DEQUANTIZE of a FLOAT16/INT8 constant as a graph output fails under XNNPACK
# dense or sparse.)  The builtin kernels are exact for every reader.
DENSIFY_XNNPACK_READERS = frozenset({"FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL", "ADD"})
# Integer ops reading an int8 weight through DENSIFY right in both the builtin kernels and XNNPACK (measured):
# CONV_2D.  XNNPACK claims an int8 FULLY_CONNECTED reading a DENSIFY output and then fails to prepare it, so the
# model does not load with the default interpreter (hand_landmark_full); its weights stay dense.
DENSIFY_INTEGER_READERS = frozenset({"CONV_2D"})

# XNNPACK (the default delegate) takes a float CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED only when its bias
# type goes with its filter type as XNNPACK sees them: a FLOAT16 constant behind DEQUANTIZE counts as
# FLOAT16 (XNNPACK drops that DEQUANTIZE and reads the half-precision data itself), anything else behind DEQUANTIZE
# as FLOAT32, and a filter the op reads quantized (hybrid) wants a FLOAT32 bias.  Other pairs leave the op to the
# builtin kernel, which splits the graph (a FLOAT32 filter with a FLOAT16 bias made MediaPipe's models 2-3x slower),
# fails to prepare (hybrid filters), or reads garbage where the filter comes through DENSIFY -> DEQUANTIZE (XNNPACK
# claims the DENSIFY and leaves its output unwritten).  So the weight passes give every op whose filter they
# re-encode a FLOAT32 bias (engine.passes.common.float32_biases); checked by tests/graph/test_xnnpack_bias.py.  XNNPACK
# takes TRANSPOSE_CONV with any of these pairs (tests/graph/test_runtime_forms.py).
XNNPACK_BIAS_TYPES: dict[str, frozenset[str]] = {
    "FLOAT32": frozenset({"FLOAT32"}),
    "FLOAT16": frozenset({"FLOAT16", "FLOAT32"}),
    "INT8": frozenset({"FLOAT32"}),
}

# The DEQUANTIZE version a converter declares for each input (per-channel int8 has its own).  LiteRT runs any
# version from 1 to its max_version the same way; the version tells other runtimes which features are used.
_DEQUANTIZE_VERSIONS = {"INT8": 2, "FLOAT16": 3, "INT16": 3, "INT4": 6}
_DEQUANTIZE_PER_CHANNEL_INT8_VERSION = 5


# The QUANTIZE version a converter declares, by output type (float -> int8/uint8/int16, or a requantization).
_QUANTIZE_VERSIONS = {"UINT8": 1, "INT8": 1, "INT16": 2}


def quantize_version(output_type: str) -> int:
    """The QUANTIZE version a model must declare for this output type."""
    return _QUANTIZE_VERSIONS.get(output_type, 1)


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
        raise EngineError(f"operator {op_name} is not in engine.graph.ops.RULES") from None
