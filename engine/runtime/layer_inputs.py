"""What each weighted layer reads on calibration samples, for data-aware rounding (engine.quant.rounding).

The samples stream through the model in LiteRT (``engine.runtime.calibrate.runner_for``: XNNPACK with the
layers' inputs made graph outputs), one at a time; per layer only the inputs' second moment H = sum x x^T
(float64 [K, K], K the weight row's length) is kept, so memory is 8 K^2 bytes per layer (one matrix per output
channel for depthwise filters, whose K is the kernel's area) whatever the number of calibration samples.
Each layer contributes ``VECTORS_PER_K`` x K input vectors in all (a convolution's input patches, im2col),
spread evenly over the samples and drawn at random with a fixed seed: enough for H, at a cost that grows as K^3
per layer rather than with the feature maps.
"""

from __future__ import annotations

import numpy as np

from engine.format.ir import Model, Operator
from engine.format.schema import enum_name
from engine.graph.weights import Weight
from engine.progress import track
from engine.quant.patches import conv_patches, sample_rows
from engine.quant.rounding import LayerInputs
from engine.runtime.calibrate import CalibrationData, LiteRTExecutor, runner_for

# Input vectors per layer, in all, per element of a weight row (GPTQ's own setting reads about 20 K), and at
# least this many per sample.
VECTORS_PER_K = 32
MIN_VECTORS_PER_SAMPLE = 64
_SUPPORTED = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def unsupported_reason(weight: Weight) -> str | None:
    """Why the layer inputs of ``weight`` cannot be modelled here (None: they can)."""
    kinds = {op.name for op, _ in weight.uses}
    if len(kinds) != 1 or weight.uses != weight.weighted_uses():
        return f"read by {', '.join(sorted(kinds))} (not one kind of weighted op)"
    kind = next(iter(kinds))
    if kind not in _SUPPORTED:
        return f"no layer-input model for {kind}"
    if weight.subgraph_index != 0:
        return "in a control-flow subgraph"
    if kind == "BATCH_MATMUL" and (len(weight.shape) != 2 or weight.uses[0][1] != 1):
        return "BATCH_MATMUL weight that is not a 2-D right-hand side"
    for op, _ in weight.uses:
        x = op.inputs[0]
        if x is None or x.is_constant or x.type_name != "FLOAT32":
            return f"{op.name} input is not a float activation"
    return None


def collect_layer_inputs(
    model: Model, weights: list[Weight], data: CalibrationData, executor: type[LiteRTExecutor] = LiteRTExecutor
) -> dict[int, LayerInputs]:
    """``LayerInputs`` for each weight (keyed by ``id(weight.value)``; every one must pass ``unsupported_reason``),
    from running every calibration sample through ``model`` as it is now."""
    activations = [op.inputs[0] for weight in weights for op, _ in weight.uses]
    runner, index = runner_for(model, [t for t in activations if t is not None], executor)
    inputs = [index[id(t)] for t in model.main.inputs]
    rng = np.random.default_rng(0)
    moments: dict[int, list] = {id(w.value): [None, 0] for w in weights}
    limits = {id(w.value): _per_sample(w, data.count) for w in weights}
    for sample in track(range(data.count), "reading layer inputs"):
        runner.run(dict(zip(inputs, data.sample(sample), strict=True)))
        for weight in weights:
            state = moments[id(weight.value)]
            for op, _ in weight.uses:
                x = np.asarray(runner.tensor(index[id(op.inputs[0])]), np.float64)
                vectors = _vectors(op, weight, x, limits[id(weight.value)], rng)
                grouped = vectors.transpose(1, 0, 2)  # [G, P, K]: a matrix product per group (BLAS)
                product = np.matmul(grouped.transpose(0, 2, 1), grouped)
                state[0] = product if state[0] is None else state[0] + product
                state[1] += vectors.shape[0]
    result = {}
    for weight in weights:
        hessian, count = moments[id(weight.value)]
        if weight.op_name == "DEPTHWISE_CONV_2D":  # per input channel so far: output channel c reads c // multiplier
            hessian = np.repeat(hessian, weight.shape[-1] // hessian.shape[0], axis=0)
        assert weight.channel_axis is not None
        result[id(weight.value)] = LayerInputs(weight.channel_axis % len(weight.shape), hessian, count)
    return result


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
    if op.name == "CONV_2D":
        _, kh, kw, _ = weight.shape
        patches = _some_patches(conv_patches(x, (kh, kw), stride, dilation, same), limit, rng)
        return patches.reshape(-1, 1, kh * kw * x.shape[-1])
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
