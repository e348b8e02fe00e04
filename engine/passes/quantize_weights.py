"""Integer weights: ``weight-int8``/``weight-int4`` (DEQUANTIZE, float compute) and ``dynamic-int8``/``dynamic-int4``.

Weights are quantized symmetrically (zero point 0, levels in [-qmax, qmax]) per tensor, per output channel or
per block, with scales from the absolute maximum (``minmax``) or from a search for the clipping range with the
least squared error (``mse``).  The levels are stored in the smallest container LiteRT can run for every reader
(INT2/INT4 packed, or INT8): in the dynamic modes the ops with a hybrid kernel for that container and
granularity read the integer weight directly, every other reader gets it through DEQUANTIZE.

With ``rounding`` other than nearest (``--rounding gptq``) the codes are fitted to what each layer reads on the
calibration samples (``engine.runtime.layer_inputs``, read from the model as the earlier passes leave it), so
the pass is a ``QuantizeWeights`` step built with the calibration data and the executor that runs the model.
With ``gradual`` (``--gradual [STAGES]``) it fits and installs the weights in stages, each stage's layers aiming
at the float model's outputs from the inputs the already quantized stages give them (error compensation).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from engine.errors import EngineError
from engine.format.ir import TENSOR_TYPES, Buffer, Model, Operator, QuantizationParams, SparsityParams, Table, Tensor
from engine.format.sparse import encode_sparse, index_bytes, sparse_bytes, sparse_int8_saves
from engine.graph.ops import DEQUANTIZE_INPUTS, RULES, XNNPACK_FOLDED_DEQUANTIZE
from engine.graph.weights import Weight, channel_axis_of
from engine.passes.common import entry, install, select
from engine.passes.fuse import unfuse_activation
from engine.progress import track
from engine.quant import kernels
from engine.quant.rounding import LayerInputs
from engine.quant.uniform import expect_weights, quantize_weight
from engine.recipe import WEIGHT_MODES, Recipe, TensorOptions
from engine.report import TensorReport
from engine.runtime.calibrate import CalibrationSource, LiteRTExecutor, load_calibration
from engine.runtime.layer_inputs import collect_layer_inputs, fed_within, teacher_for, unsupported_reason

INTEGER_MODES = tuple(mode for mode, (_, bits) in WEIGHT_MODES.items() if bits is not None)
_CONTAINERS = {2: "INT2", 4: "INT4", 8: "INT8"}
_PACKERS: dict[int, Callable[[np.ndarray], np.ndarray]] = {2: kernels.pack_int2, 4: kernels.pack_int4}


@dataclass
class _Encoding:
    """A weight's quantized form: what the new constant holds and what the report says about it."""

    buffer: Buffer
    params: QuantizationParams
    stored_bytes: int
    weight_sqnr_db: float
    sparsity: SparsityParams | None  # stored sparse (behind DENSIFY) in this layout


class QuantizeWeights:
    """The pass: ``(Model, Recipe) -> (Model, [TensorReport])``; ``calibration`` and ``executor`` serve the
    data-aware rounding methods (unused otherwise)."""

    def __init__(
        self, calibration: CalibrationSource | None = None, executor: type[LiteRTExecutor] = LiteRTExecutor
    ) -> None:
        self.calibration, self.executor = calibration, executor

    def __call__(self, model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
        """Quantize every weight whose resolved mode is an integer one; one entry per weight.

        With ``gradual`` the weights go in stages (``_stages``), each installed before the next stage's layer
        inputs are read, next to the float model's (the teacher's): a fitted layer then aims at its float outputs
        from the inputs the quantized layers before it give, compensating their error.  A layer fed by another
        of its own stage is fitted to its float weights instead (its inputs change once the stage is installed,
        and a correction for inputs it will not get made low-SQNR models worse: hand_landmark_lite 3.6 -> -3.4
        dB, pose_detection 11.8 -> 2.0 dB held out at 4 stages)."""
        if not recipe.given("quantize") & set(INTEGER_MODES):
            return model, []
        chosen, reports = select(model, recipe, lambda options: options.quantize in INTEGER_MODES)
        expect_weights((o.scale_method, w.elements) for w, o in chosen)
        asked = [(w, o) for w, o in chosen if o.rounding != "nearest"]
        if asked and self.calibration is None:
            raise EngineError(f"--rounding {asked[0][1].rounding} needs calibration data (--calibration DATA)")
        fallbacks = {id(w.value): reason for w, _ in asked if (reason := unsupported_reason(w)) is not None}
        fitted = {id(w.value) for w, _ in asked if id(w.value) not in fallbacks}
        data = load_calibration(self.calibration, model) if asked and self.calibration is not None else None
        stages = _stages(model, chosen, fitted, TensorOptions(**recipe.options).gradual or 1)
        later = [w for stage in stages[1:] for w, _ in stage if id(w.value) in fitted]
        teacher = teacher_for(model, later, self.executor) if later else None  # the float model, before any stage
        encoded: dict[tuple, _Encoding] = {}
        for number, stage in enumerate(stages, 1):
            to_fit = [w for w, _ in stage if id(w.value) in fitted]
            inputs: dict[int, LayerInputs] = {}
            if to_fit and data is not None:
                inputs = collect_layer_inputs(model, to_fit, data, self.executor, teacher if number > 1 else None)
                for key in fed_within(model, [w for w, _ in stage], to_fit):
                    inputs[key] = replace(inputs[key], cross=None)
            entries = _quantize(model, stage, inputs, fallbacks, encoded)
            for report in entries:
                if len(stages) > 1 and report.action == "compressed":
                    report.stage = number
            reports += entries
        return model, reports


def _stages(
    model: Model, chosen: list[tuple[Weight, TensorOptions]], fitted: set[int], count: int
) -> list[list[tuple[Weight, TensorOptions]]]:
    """The weights in at most ``count`` stages in graph order, each with an equal share of the fitted weights
    (one stage: all at once, every layer input read from the model as the earlier passes left it).

    A weight not fitted joins the stage of the last fitted weight before it in the main subgraph (the first
    stage if none is), so that the layers after it see its error; weights of other subgraphs, whose place in
    the run is not known, go first for the same reason."""
    if count == 1 or len(fitted) < 2:
        return [chosen]
    operators = {id(op): i for i, op in enumerate(model.main.operators)}

    def position(weight: Weight) -> int:
        return min(operators[id(op)] for op, _ in weight.uses) if weight.subgraph_index == 0 else -1

    places = sorted(position(w) for w, _ in chosen if id(w.value) in fitted)
    starts = [group[0] for group in np.array_split(np.array(places), min(count, len(places)))[1:]]
    stages: list[list[tuple[Weight, TensorOptions]]] = [[] for _ in range(len(starts) + 1)]
    for weight, options in chosen:
        stages[bisect.bisect_right(starts, position(weight))].append((weight, options))
    return [stage for stage in stages if stage]


def _quantize(
    model: Model,
    chosen: list[tuple[Weight, TensorOptions]],
    inputs: dict[int, LayerInputs],
    fallbacks: dict[int, str],
    encoded: dict[tuple, _Encoding],
) -> list[TensorReport]:
    """Quantize and install ``chosen``; ``encoded`` holds the encodings by shared buffer, across stages."""
    reports = []
    for weight, options in track(chosen, "quantizing weights"):
        granularity = _granularity(weight, options)
        container, direct = _placement(weight, options, granularity)
        key = (weight.subgraph_index, id(weight.source.buffer), weight.shape, weight.channel_axis, options)
        key += (granularity, container)
        if key not in encoded:  # tensors sharing a buffer share its encoding
            try:
                layer = inputs.get(id(weight.value))
                encoded[key] = _encode(weight, options, granularity, container, not direct, layer)
            except EngineError as exc:
                raise EngineError(f"weight {weight.name!r}: {exc}") from None
        encoding = encoded[key]
        dtype = _CONTAINERS[container]
        if encoding.stored_bytes >= weight.stored_bytes:
            reports.append(entry(weight, options, f"{granularity} {dtype} would not be smaller"))
            continue
        report = entry(weight, options)
        stored = Tensor(
            f"{weight.name}_{dtype.lower()}",
            weight.source.shape if encoding.sparsity is not None else weight.shape,
            TENSOR_TYPES[dtype],
            encoding.buffer,
            encoding.params,
            sparsity=encoding.sparsity,
        )
        install(model, weight, stored, direct)
        report.bits, report.granularity, report.scale = options.level_bits, granularity, options.scale_method
        report.form = "dequantize" if not direct else "hybrid" if len(direct) == len(weight.uses) else "mixed"
        report.dtype_after, report.bytes_after = dtype, encoding.stored_bytes
        report.weight_sqnr_db = encoding.weight_sqnr_db
        for op, _ in direct:
            if RULES[op.name].keeps_activation_apart(container, _kind(granularity)):
                unfuse_activation(model, weight.subgraph, op)
        report.slow_form = _slow_form(weight, direct, container, granularity)
        if granularity != options.granularity:
            report.reason = f"{options.granularity} not possible here; used {granularity}"
        if id(weight.value) in inputs:
            report.rounding = options.rounding
        elif id(weight.value) in fallbacks:
            report.reason = f"{options.rounding} not possible ({fallbacks[id(weight.value)]}): nearest rounding"
        reports.append(report)
    return reports


def _granularity(weight: Weight, options: TensorOptions) -> str:
    """The recipe's granularity, or the nearest one this weight allows (no channel axis -> per tensor)."""
    if options.granularity == "tensor" or weight.channel_axis is None or not weight.shape:
        return "tensor"
    block = options.block_size
    if block is not None:
        feasible = weight.shape[-1] % block == 0 and weight.channel_axis == 0 and len(weight.shape) == 2
        return options.granularity if feasible else "channel"
    return "channel"


def _hybrid_uses(
    weight: Weight, options: TensorOptions, container: int, granularity: str
) -> list[tuple[Operator, int]]:
    """The weighted uses whose kernel reads ``container``-bit weights of this granularity directly.

    A hybrid form XNNPACK leaves to the builtin kernel is used only where XNNPACK would not decode the DEQUANTIZE
    alternative at load time either: otherwise the float op after DEQUANTIZE is the fast form in the default
    interpreter (and the more accurate one)."""
    if options.form != "hybrid" or weight.source.sparsity is not None:
        return []
    kind = _kind(granularity)
    folded = _CONTAINERS[container] in XNNPACK_FOLDED_DEQUANTIZE
    uses = []
    for op, i in weight.weighted_uses():
        rule = RULES[op.name]
        axis = channel_axis_of(rule.channel_axis(op.builtin_options), weight.value)
        if (
            (granularity == "tensor" or axis == weight.channel_axis)
            and rule.runs_hybrid(container, kind, weight.shape)
            and (rule.xnnpack_runs_hybrid(container, kind, weight.shape) or not folded)
        ):
            uses.append((op, i))
    return uses


def _placement(weight: Weight, options: TensorOptions, granularity: str) -> tuple[int, list[tuple[Operator, int]]]:
    """The smallest container every reader of the weight can use, and the uses that read it directly."""
    bits = options.level_bits
    assert bits is not None
    for container in sorted(_CONTAINERS):
        if container < bits:
            continue
        direct = _hybrid_uses(weight, options, container, granularity)
        if len(direct) == len(weight.uses) or _kind(granularity) in DEQUANTIZE_INPUTS.get(container, frozenset()):
            if container < 8 and _sparse_int8_bytes(weight) < math.ceil(weight.elements * container / 8):
                return 8, direct  # DENSIFY decodes INT8 only: a sparse INT8 weight can be smaller than dense INT4
            return container, direct
    readers = ", ".join(sorted({op.name for op, _ in weight.uses}))
    hint = " (blockwise weights run only in dynamic-int4, read by FULLY_CONNECTED)" if options.block_size else ""
    raise EngineError(
        f"weight {weight.name!r}: LiteRT cannot run {bits}-bit {granularity} weights for {readers} "
        f"in {options.quantize}: no kernel reads them directly and DEQUANTIZE does not decode them{hint}"
    )


def _slow_form(weight: Weight, direct: list[tuple[Operator, int]], container: int, granularity: str) -> str | None:
    """Why XNNPACK leaves this weight's readers to the builtin kernels (None: it runs them itself).  INT4/INT2
    behind DEQUANTIZE are not decoded at load time, so their readers get a computed filter, which XNNPACK refuses;
    a hybrid form it does not take is used only where that is the alternative (``_hybrid_uses``)."""
    dtype = _CONTAINERS[container]
    direct_ids = {(id(op), i) for op, i in direct}
    decoded = [op for op, i in weight.weighted_uses() if (id(op), i) not in direct_ids]
    if dtype not in XNNPACK_FOLDED_DEQUANTIZE and any(not RULES[op.name].xnnpack_computed_weight for op in decoded):
        return f"{dtype} behind DEQUANTIZE (XNNPACK decodes only FLOAT16 and INT8 when the model loads)"
    kind = _kind(granularity)
    refused = sorted(
        {op.name for op, _ in direct if not RULES[op.name].xnnpack_runs_hybrid(container, kind, weight.shape)}
    )
    if refused:
        return f"{dtype} read directly by {', '.join(refused)} (no XNNPACK kernel for that hybrid form)"
    return None


def _kind(granularity: str) -> str:
    """ "tensor", "channel" or "block" (the op table's words) for a granularity such as "block:32"."""
    return granularity.split(":")[0]


def _encode(
    weight: Weight,
    options: TensorOptions,
    granularity: str,
    container: int,
    sparse_ok: bool,
    layer: LayerInputs | None,
) -> _Encoding:
    """Quantize the weight.  Stored bytes count the scales and zero points too (12 bytes a channel, which can
    outweigh a small depthwise filter).  Blockwise scales are stored as float16 in a tensor of their own, which
    the quantization details refer to, so the codes are computed against the float16-rounded scales."""
    bits = options.level_bits
    assert bits is not None
    block = options.block_size if _kind(granularity) == "block" else None
    stays_sparse = sparse_ok and container == 8 and weight.source.sparsity is not None
    # Decoded again for the check rather than kept: the float copy lives only as long as the quantization.
    keep_zeros = stays_sparse and layer is not None and sparse_int8_saves(weight.decode())
    quantized = quantize_weight(
        weight.decode(),
        bits,
        granularity,
        weight.channel_axis,
        options.scale_method,
        float16_scales=block is not None,
        rounding=options.rounding,
        inputs=layer,
        keep_zeros=keep_zeros,
    )
    scales = quantized.scales
    flat = quantized.codes.reshape(-1)
    if block is not None:
        scale_tensor = Tensor(f"{weight.name}_scales")
        scale_tensor.data = scales.astype(np.float16).reshape(weight.shape[0], -1)
        details = Table("BlockwiseQuantization", {"scales": scale_tensor, "zero_points": None, "block_size": block})
        params = QuantizationParams(details=details)
        params_bytes = scales.size * 2
    else:
        params = QuantizationParams(
            scale=scales.astype(np.float32),
            zero_point=np.zeros(scales.size, np.int64),
            quantized_dimension=weight.channel_axis if granularity == "channel" else 0,
        )
        params_bytes = scales.size * 12
    sparsity = None
    if stays_sparse:
        # The codes in the sparse layout that costs the fewest bytes (engine.format.sparse), which need not be the
        # source's: MediaPipe's 1x1 filters index their input channels in two bytes where one does for outputs.
        values, layout = encode_sparse(quantized.codes.reshape(weight.shape))
        if sparse_bytes(values, layout) < flat.size:
            flat, sparsity = values, layout
    data = _PACKERS[container](flat) if container in _PACKERS else flat
    stored_bytes = data.nbytes + params_bytes + (0 if sparsity is None else index_bytes(sparsity))
    return _Encoding(Buffer.of(data), params, int(stored_bytes), quantized.sqnr_db, sparsity)


def _sparse_int8_bytes(weight: Weight) -> float:
    """Bytes of the weight kept sparse as INT8 (its stored values plus index vectors); inf if it is dense."""
    if weight.source.sparsity is None or weight.source.data is None:
        return math.inf
    return weight.source.data.size + weight.index_bytes
