"""What each weighted layer reads on calibration samples, for data-aware rounding (engine.quant.rounding).

The samples stream through the model in LiteRT (``engine.runtime.calibrate.runner_for``: XNNPACK with the
layers' inputs made graph outputs), one at a time; per layer only the inputs' second moment H = sum x x^T
(float64 [K, K], K the weight row's length) is kept, so memory is 8 K^2 bytes per layer (one matrix per output
channel for depthwise filters, whose K is the kernel's area) whatever the number of calibration samples.
Each layer contributes ``VECTORS_PER_K`` x K input vectors in all (a convolution's input patches, im2col),
spread evenly over the samples and drawn at random with a fixed seed: enough for H, at a cost that grows as K^3
per layer rather than with the feature maps.  With ``--gradual`` the float model (the teacher) runs beside a
partly quantized one, and the same vectors read from it give the cross moment sum x_float x^T (8 K^2 bytes
more per layer).
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np

from engine.format.ir import Model, Operator, Tensor
from engine.format.schema import enum_name
from engine.graph.weights import Weight
from engine.progress import track
from engine.quant.patches import conv_patches, sample_rows, transposed_conv_patches
from engine.quant.rounding import LayerInputs
from engine.runtime.calibrate import (
    CalibrationData,
    Executor,
    LiteRTExecutor,
    fingerprint,
    runner_for,
    unique_names,
)

# Input vectors per layer, in all, per element of a weight row (GPTQ's own setting reads about 20 K), and at
# least this many per sample.
VECTORS_PER_K = 32
MIN_VECTORS_PER_SAMPLE = 64
_SUPPORTED = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "BATCH_MATMUL")
# Where the activation a weighted op multiplies is among its inputs (TRANSPOSE_CONV: output_shape, weights, input).
_ACTIVATION_INPUT = {"TRANSPOSE_CONV": 2}
# Ops that copy rows of their weight (a lookup table) rather than multiply an input with it.
_LOOKUPS = ("GATHER", "EMBEDDING_LOOKUP")


def unsupported_reason(weight: Weight) -> str | None:
    """Why the layer inputs of ``weight`` cannot be modelled here (None: they can)."""
    kinds = {op.name for op, _ in weight.uses}
    if len(kinds) != 1 or weight.uses != weight.weighted_uses():
        return f"read by {', '.join(sorted(kinds))} (not one kind of weighted op)"
    kind = next(iter(kinds))
    if kind in _LOOKUPS:
        return f"{kind} copies rows of the table, no layer output to fit (data-free)"
    if kind not in _SUPPORTED:
        return f"no layer-input model for {kind}"
    if weight.subgraph_index != 0:
        return "in a control-flow subgraph"
    if kind == "BATCH_MATMUL" and (len(weight.shape) != 2 or weight.uses[0][1] != 1):
        return "BATCH_MATMUL weight that is not a 2-D right-hand side"
    for op, _ in weight.uses:
        x = activation(op)
        if x is None or x.is_constant or x.type_name != "FLOAT32":
            return f"{op.name} input is not a float activation"
        shape = op.inputs[0]
        if kind == "TRANSPOSE_CONV" and (shape is None or not shape.is_constant):
            return "TRANSPOSE_CONV output shape is not a constant"
    return None


def activation(op: Operator) -> Tensor | None:
    """The activation ``op`` multiplies its weight with."""
    return op.inputs[_ACTIVATION_INPUT.get(op.name, 0)]


def collect_layer_inputs(
    model: Model,
    weights: list[Weight],
    data: CalibrationData,
    executor: type[LiteRTExecutor] = LiteRTExecutor,
    teacher: Teacher | None = None,
) -> dict[int, LayerInputs]:
    """``LayerInputs`` for each weight (keyed by ``id(weight.value)``; every one must pass ``unsupported_reason``),
    from running every calibration sample through ``model`` as it is now.  With a ``teacher`` (the float model
    run by ``teacher_for`` before any of these weights' earlier layers were quantized) the same input vectors of
    the float model are read too, for the cross moment that lets the fit aim at the float layer's outputs.

    Where ``data`` remembers (the accuracy search's candidates), each weight's inputs read without a teacher are
    kept by model fingerprint and weight name and reused for the next build from the same model (each weight's
    vectors are drawn from its own seeded stream, so that is what a fresh read gives)."""
    memo = data.remembered if teacher is None else None
    keys: dict[int, tuple[str, ...]] = {}
    if memo is not None:
        digest, names = fingerprint(model), unique_names(model)
        keys = {id(w.value): ("layer inputs", digest, w.value.name) for w in weights if w.value.name in names}
    known = {key: memo[k] for key, k in keys.items() if memo is not None and k in memo}
    result = _read_layer_inputs(model, [w for w in weights if id(w.value) not in known], data, executor, teacher)
    if memo is not None:
        memo.update({keys[key]: value for key, value in result.items() if key in keys})
    return {**known, **result}


def _read_layer_inputs(
    model: Model,
    weights: list[Weight],
    data: CalibrationData,
    executor: type[LiteRTExecutor],
    teacher: Teacher | None,
) -> dict[int, LayerInputs]:
    if not weights:
        return {}
    runner, index = runner_for(model, _activations(weights), executor)
    inputs = [index[id(t)] for t in model.main.inputs]
    # One stream of draws per weight, seeded by its name: the vectors a weight's inputs are sampled from do not
    # depend on which other weights are read in the same run (a remembered read equals a fresh one).
    rngs = {id(w.value): np.random.default_rng(zlib.crc32((w.value.name or "").encode())) for w in weights}
    moments: dict[int, list] = {id(w.value): [None, 0, None] for w in weights}
    limits = {id(w.value): _per_sample(w, data.count) for w in weights}
    for sample in track(range(data.count), "reading layer inputs"):
        values = data.sample(sample)
        runner.run(dict(zip(inputs, values, strict=True)))
        if teacher is not None:
            teacher.run(values)
        for weight in weights:
            state = moments[id(weight.value)]
            rng = rngs[id(weight.value)]
            for op, _ in weight.uses:
                x = np.asarray(runner.tensor(index[id(activation(op))]), np.float64)
                replay = copy.deepcopy(rng)  # to draw the same positions again in the teacher's input
                grouped = _vectors(op, weight, x, limits[id(weight.value)], rng).transpose(1, 0, 2)  # [G, P, K]
                product = np.matmul(grouped.transpose(0, 2, 1), grouped)  # a matrix product per group (BLAS)
                state[0] = product if state[0] is None else state[0] + product
                state[1] += grouped.shape[1]
                if teacher is not None:
                    reference = _vectors(op, weight, teacher.value(activation(op)), limits[id(weight.value)], replay)
                    # Equal vectors (every layer before the first quantized one): the cross moment is H itself,
                    # bit for bit; BLAS computes X^T X (syrk) and X_f^T X (gemm) with different roundings.
                    same = np.array_equal(reference, grouped.transpose(1, 0, 2))
                    cross = product if same else np.matmul(reference.transpose(1, 2, 0), grouped)
                    state[2] = cross if state[2] is None else state[2] + cross
    result = {}
    for weight in weights:
        hessian, count, cross = moments[id(weight.value)]
        if weight.op_name == "DEPTHWISE_CONV_2D":  # per input channel so far: output channel c reads c // multiplier
            hessian = np.repeat(hessian, weight.shape[-1] // hessian.shape[0], axis=0)
            cross = None if cross is None else np.repeat(cross, weight.shape[-1] // cross.shape[0], axis=0)
        assert weight.channel_axis is not None
        result[id(weight.value)] = LayerInputs(weight.channel_axis % len(weight.shape), hessian, count, cross)
    return result


@dataclass
class Teacher:
    """The float model running next to a partly quantized one (``--gradual``): each sample's layer inputs as
    the float model computes them."""

    runner: Executor
    index: dict[int, int]
    inputs: list[int]

    def run(self, values: list[np.ndarray]) -> None:
        """Run one sample (one array per graph input)."""
        self.runner.run(dict(zip(self.inputs, values, strict=True)))

    def value(self, tensor: Tensor | None) -> np.ndarray:
        """A tensor's value in the last run, as float64."""
        return np.asarray(self.runner.tensor(self.index[id(tensor)]), np.float64)


def teacher_for(model: Model, weights: list[Weight], executor: type[LiteRTExecutor] = LiteRTExecutor) -> Teacher:
    """The float model as it is now, able to give the layer inputs of ``weights`` later, once the model has
    changed."""
    runner, index = runner_for(model, _activations(weights), executor)
    return Teacher(runner, index, [index[id(t)] for t in model.main.inputs])


def fed_within(model: Model, group: list[Weight], weights: list[Weight]) -> set[int]:
    """The ``weights`` (by ``id(weight.value)``) whose layer input is computed, through any ops of the main
    subgraph, from the output of an op reading a weight of ``group``."""
    readers = {id(op) for weight in group for op, _ in weight.uses}
    reached: set[int] = set()
    for op in model.main.operators:  # in execution order
        if id(op) in readers or any(t is not None and id(t) in reached for t in op.inputs):
            reached.update(id(t) for t in op.outputs if t is not None)
    return {id(w.value) for w in weights if any(id(activation(op)) in reached for op, _ in w.uses)}


def _activations(weights: list[Weight]) -> list[Tensor]:
    """The activations the layers of ``weights`` multiply: the tensors a runner must be able to read."""
    return [t for weight in weights for op, _ in weight.uses if (t := activation(op)) is not None]


def _per_sample(weight: Weight, samples: int) -> int:
    """How many input vectors to take from each sample for this weight's layer."""
    k = weight.elements // weight.shape[weight.channel_axis or 0]
    return max(MIN_VECTORS_PER_SAMPLE, -(-VECTORS_PER_K * k // max(samples, 1)))


def _vectors(op: Operator, weight: Weight, x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of the vectors the weight rows multiply, [P, G, K]: G = 1 (shared by every row) or one
    group per input channel (depthwise)."""
    if op.name == "FULLY_CONNECTED":
        return sample_rows(x.reshape(-1, 1, weight.shape[-1]), limit, rng)
    if op.name == "BATCH_MATMUL":
        if op.builtin_options is not None and op.builtin_options.fields.get("adj_x"):
            x = np.swapaxes(x, -1, -2)
        return sample_rows(x.reshape(-1, 1, x.shape[-1]), limit, rng)
    options = op.builtin_options.fields if op.builtin_options is not None else {}
    same = enum_name("Padding", int(options.get("padding", 0))) == "SAME"
    stride = (int(options.get("stride_h", 1)), int(options.get("stride_w", 1)))
    dilation = (int(options.get("dilation_h_factor", 1)), int(options.get("dilation_w_factor", 1)))
    if op.name in ("CONV_2D", "TRANSPOSE_CONV"):
        _, kh, kw, _ = weight.shape
        if op.name == "CONV_2D":
            patches = conv_patches(x, (kh, kw), stride, dilation, same)
        else:
            assert op.inputs[0] is not None  # unsupported_reason: a constant output shape
            output_size = (int(op.inputs[0].data[1]), int(op.inputs[0].data[2]))
            patches = transposed_conv_patches(x, (kh, kw), stride, output_size, same)
        return _some_patches(patches, limit, rng).reshape(-1, 1, kh * kw * x.shape[-1])
    _, kh, kw, _ = weight.shape  # DEPTHWISE_CONV_2D: a group per input channel
    patches = _some_patches(conv_patches(x, (kh, kw), stride, dilation, same), limit, rng)
    return patches.reshape(-1, kh * kw, x.shape[-1]).transpose(0, 2, 1)


def _some_patches(patches: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` output positions' patches [P, kh, kw, C], picked before any is copied."""
    n, height, width = patches.shape[:3]
    total = n * height * width
    pick = np.arange(total) if total <= limit else np.sort(rng.choice(total, limit, replace=False))
    image, position = np.divmod(pick, height * width)
    row, column = np.divmod(position, width)
    return patches[image, row, column]
