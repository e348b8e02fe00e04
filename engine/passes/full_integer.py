"""Full-integer quantization (``--quantize int8`` / ``--quantize int16x8``) from a float .tflite and calibration data.

LiteRT's integer quantization specification, applied from the op table (engine/ops.py): activations int8
asymmetric per tensor (or int16 symmetric, zero point 0, for 16x8); the weights of multiply-accumulate ops int8
symmetric per output channel (zero point 0, levels +-127); their bias int32 (int64 for 16x8) with scale
input_scale * weight_scale[c]; other constants per tensor; fixed output parameters where the kernel requires
them (SOFTMAX, LOGISTIC, TANH); one shared (scale, zero point) for the inputs and output of ops that copy codes
(RESHAPE, MAX_POOL_2D, CONCATENATION, PAD, ...); fused activations kept, their bounds clipping the output range.

The pass runs in four steps, each a function: ``plan_ops`` (which ops get an integer kernel, and why the others
stay float), ``observe`` (calibration: a range per activation), ``assign_params`` (ranges -> parameters, shared
where the kernels need it), and ``rewrite`` (retype tensors, quantize constants, insert QUANTIZE/DEQUANTIZE only
where integer and float parts of the graph meet, set op versions).  ``correct_biases`` optionally follows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import kernels
from engine.calibrate import CalibrationData, CalibrationSource, LiteRTExecutor, calibrate, load_calibration
from engine.errors import EngineError
from engine.ir import TENSOR_TYPES, Buffer, Model, Operator, QuantizationParams, Subgraph, Table, Tensor, all_tensors
from engine.metrics import quantize_array
from engine.observers import Observer, make_observer
from engine.ops import (
    BIAS_TYPES,
    DENSIFY_INTEGER_READERS,
    I8,
    I16,
    RULES,
    OpRule,
    dequantize_version,
    quantize_version,
)
from engine.passes.fold import fold_constant_decoders
from engine.passes.fuse import fuse_activations
from engine.quantization import QuantizedWeight, quantize_weight
from engine.recipe import STATIC_MODES, Recipe, TensorOptions
from engine.report import TensorReport
from engine.schema import enum_name
from engine.sparse import encode_sparse, sparse_bytes
from engine.weights import channel_axis_of, check_weighted_ops
from engine.writer import model_to_bytes

_FLOAT32 = TENSOR_TYPES["FLOAT32"]
# Activation type -> (tensor type, lowest code, highest code, symmetric).
_CODES = {I8: ("INT8", -128, 127, False), I16: ("INT16", -32768, 32767, True)}
_CODE_DTYPES = {I8: np.int8, I16: np.int16}
# What a fused activation lets through: the output range is clipped to it.
_FUSED_BOUNDS = {"RELU": (0.0, math.inf), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}
_INT32_MAX = 2**31 - 1
# Calibrated ranges are widened by this factor: int16 codes are so fine (about 96 dB) that spending 12 dB of
# them on headroom costs nothing measurable, while inputs unlike the calibration samples no longer clip (on the
# MediaPipe models' held-out photo, 4x gains 0-13 dB of output SQNR in 16x8, docs/benchmarks.md).  int8 has no
# such slack.
_HEADROOM = {I8: 1.0, I16: 4.0}
# LiteRT turns scale ratios into fixed-point multipliers and aborts the process (no error to catch) where one is
# out of range: an activation scale beyond this marks a range no integer kernel can rescale (1e36-wide ranges from
# weights near 1e38 did), and int8 ADD/SUB need 2 * max(input scales) < 2^20 * output scale.
_MAX_ACTIVATION_SCALE = 1e30
# The requantization scales XNNPACK's int8 convolutions and fully connected ops take: [2^-32, 256).
_XNNPACK_REQUANTIZATION = (2.0**-32, 256.0)
_ADD_SCALE_RATIO = 2.0**19


@dataclass
class IntegerReport:
    """What full-integer quantization did to the graph, for the run's report."""

    activations: str
    io: str
    observer: str
    samples: int
    integer_ops: dict[str, int] = field(default_factory=dict)
    float_ops: list[dict[str, str]] = field(default_factory=list)
    folded_decoders: int = 0
    fused_activations: int = 0
    quantize_ops: int = 0
    dequantize_ops: int = 0
    bias_correction: dict[str, Any] | None = None

    def format_text(self) -> str:
        total = sum(self.integer_ops.values())
        lines = [
            f"full-integer {self.activations} (I/O {self.io}), calibrated on {self.samples} samples "
            f"({self.observer}): {total} ops integer, {len(self.float_ops)} float",
            "  integer: " + ", ".join(f"{n} {op}" for op, n in sorted(self.integer_ops.items())),
        ]
        reasons = Counter((f["op"], f["reason"]) for f in self.float_ops)
        lines.extend(f"  float: {n} x {op} ({reason})" for (op, reason), n in sorted(reasons.items()))
        lines.append(
            f"  boundaries: {self.quantize_ops} QUANTIZE, {self.dequantize_ops} DEQUANTIZE; "
            f"{self.folded_decoders} constant decoders folded, {self.fused_activations} activations fused"
        )
        if self.bias_correction:
            bc = self.bias_correction
            lines.append(f"  bias correction: {bc['biases']} biases, mean |shift| {bc['mean_abs_shift']:.3g}")
        slow = [op for op, n in self.integer_ops.items() if n and not RULES[op].xnnpack_integer]
        if self.activations == I16:
            lines.append(
                "  latency: XNNPACK (the default interpreter's delegate) has no 16x8 kernels, so LiteRT's builtin "
                "int16 kernels run the model: 15-42x the float model's latency on MediaPipe's models (benchmarks/"
                "latency.py); 16x8 is for accelerators and accuracy studies, not CPU speed"
            )
        elif slow:
            lines.append(
                f"  latency: XNNPACK takes no int8 {', '.join(sorted(slow))}, so the graph splits around each one "
                "and they run in the slower builtin kernels (with --io int8 on MediaPipe's PRELU models: 2.8-5.9x "
                "the float model's latency, benchmarks/latency.py); a float interface keeps them float on a CPU"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Params:
    scale: float
    zero_point: int


def quantize_model(
    model: Model,
    recipe: Recipe,
    calibration: CalibrationSource | None,
    executor: type[LiteRTExecutor] = LiteRTExecutor,
) -> tuple[Model, list[TensorReport], IntegerReport]:
    """Quantize ``model`` (in place) to full integer as the recipe's global options say."""
    options = TensorOptions(**recipe.options)
    if options.quantize not in STATIC_MODES:
        raise EngineError(f"quantize_model needs a full-integer mode ({', '.join(STATIC_MODES)})")
    activations = STATIC_MODES[options.quantize]
    if calibration is None:
        raise EngineError(
            f"--quantize {options.quantize} needs calibration data: pass --calibration DATA (.npz keyed by input "
            f"name, or one array for a single-input model; the leading axis is the sample)"
        )
    if activations == I16 and options.io != "float":
        raise EngineError(f"--io {options.io} is for int8 models; int16x8 models keep a float interface")
    model, folded = fold_constant_decoders(model)
    model, fused = fuse_activations(model)
    data = load_calibration(calibration, model)
    sg = model.main
    integer, float_ops = plan_ops(model, recipe, options)
    if options.strict and float_ops:
        listed = "; ".join(f"{f['op']} {f['output']!r}: {f['reason']}" for f in float_ops[:10])
        raise EngineError(f"--strict: {len(float_ops)} op(s) would stay float: {listed}")
    check_quantizable(model, integer)
    observers = observe(sg, integer, recipe, options.io != "float")
    calibrate(model, data, observers, executor)
    params, requantize = assign_params(sg, integer, observers, activations)
    check_multipliers(integer, params)
    report = IntegerReport(
        activations,
        options.io,
        _observer_label(recipe, options),
        data.count,
        folded_decoders=folded,
        fused_activations=fused,
    )
    report.float_ops = float_ops
    tensors = {key: t for key, (t, _) in observers.items()}
    entries, biases = rewrite(model, recipe, integer, tensors, params, requantize, options, report)
    if options.bias_correction:
        report.bias_correction = correct_biases(model, biases, data, executor)
    sg.remove_unused_tensors()
    return model, entries, report


def _observer_label(recipe: Recipe, options: TensorOptions) -> str:
    spec = options.observer
    overrides = sum("observer" in o for o in (*recipe.ops.values(), *recipe.tensors.values()))
    return f"{spec} observer" + (f", {overrides} recipe override(s)" if overrides else "")


# ------------------------------------------------------------------------------------------------ planning


def is_activation(t: Tensor | None) -> bool:
    """A float tensor computed at run time (as opposed to a constant, or an integer index/shape tensor)."""
    return t is not None and t.type == _FLOAT32 and not t.is_constant


def _multiplies_weight(rule: OpRule) -> bool:
    """Ops that multiply-accumulate their weight (it has a reduction axis): it is quantized symmetrically."""
    return rule.weight_input is not None and rule.weight_input_axis is not None


def _float_reason(op: Operator, rule: OpRule | None, activations: str, recipe: Recipe, cpu: bool) -> str | None:
    """Why ``op`` cannot run an integer kernel (None: it can); ``cpu``: a float-interface model, not strict."""
    if rule is None or rule.integer_version(activations) is None:
        return f"no {activations} kernel in LiteRT"
    if activations == I8 and not rule.xnnpack_integer and cpu:
        return "faster float on CPU: XNNPACK has no int8 kernel for it (--io int8|uint8 or --strict: integer)"
    name = next((t.name for t in op.outputs if t is not None), None) or ""
    if recipe.excludes(name) or recipe.resolve(op.name, name).quantize is None:
        return "left float by the recipe"
    if not op.outputs or any(t is None or t.type != _FLOAT32 for t in op.outputs):
        return "an output is not float32"
    for i, t in enumerate(op.inputs):
        if t is None or t.type == _FLOAT32:
            continue
        if t.type_name not in ("INT32", "INT64") or i in (rule.weight_input, rule.bias_input):
            return f"input {i} is {t.type_name}"
    if _multiplies_weight(rule):
        weight = op.optional_input(rule.weight_input)
        if weight is None or not weight.is_constant:
            return "its weight is computed, not a constant"
        bias = op.optional_input(rule.bias_input)
        if bias is not None and not bias.is_constant:
            return "its bias is computed, not a constant"
    if not any(is_activation(t) for t in op.inputs):
        return "no computed float input"
    return None


def plan_ops(model: Model, recipe: Recipe, options: TensorOptions) -> tuple[list[Operator], list[dict[str, str]]]:
    """The main subgraph's ops that get an integer kernel, and every op left float with the reason, for the
    recipe's global ``options`` (parsed once by the caller)."""
    activations = STATIC_MODES[options.quantize or ""]
    cpu = options.io == "float" and not options.strict
    integer, left = [], []
    for index, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            if op.name in ("QUANTIZE", "DEQUANTIZE") and index == 0:
                reason = "conversion op of the input model"
            elif index > 0:
                reason = f"in subgraph {index} (control flow bodies stay float)"
            else:
                reason = _float_reason(op, RULES.get(op.name), activations, recipe, cpu)
            if reason is None:
                integer.append(op)
            else:
                out = next((t.name for t in op.outputs if t is not None), None) or ""
                left.append({"op": op.name, "output": out, "reason": reason})
    return integer, left


def check_quantizable(model: Model, integer: list[Operator]) -> None:
    """Before the model runs in LiteRT: refuse, naming the op or tensor, what the interpreter could crash on
    (``check_weighted_ops``) and constants of integer ops the quantization kernels refuse (NaN, infinity,
    beyond the range whose dequantized values stay finite), rather than fail after calibration."""
    check_weighted_ops(model)
    for op in integer:
        for t in op.inputs:
            if t is not None and t.type == _FLOAT32 and t.is_constant:
                try:
                    kernels.absmax_scales(np.asarray(t.data, np.float32).reshape(1, -1), 8)
                except EngineError as exc:
                    raise EngineError(f"{op.name} constant {t.name!r}: {exc}") from None


def observe(
    sg: Subgraph, integer: list[Operator], recipe: Recipe, integer_io: bool
) -> dict[int, tuple[Tensor, Observer]]:
    """An observer for every activation an integer op reads or writes (and the graph's I/O for an integer
    interface), of the kind the recipe resolves for the tensor and the op that writes it."""
    producers = sg.producers()
    consumers = sg.consumers()
    watched: dict[int, Tensor] = {}
    for op in integer:
        for t in (*op.inputs, *op.outputs):
            if is_activation(t):
                watched[id(t)] = t
    if integer_io:
        watched.update({id(t): t for t in (*sg.inputs, *sg.outputs) if is_activation(t)})
    observers = {}
    for key, t in watched.items():
        writer = producers.get(key) or next(iter(consumers.get(key, [])), None)
        spec = recipe.resolve(writer.name if writer else "", t.name or "").observer
        observers[key] = (t, make_observer(spec))
    return observers


# ------------------------------------------------------------------------------------------------ parameters


def activation_params(lo: float, hi: float, activations: str) -> Params:
    """Scale and zero point covering [lo, hi] (widened to hold 0, which must be exact): int8 asymmetric over
    255 steps, int16 symmetric with zero point 0."""
    _, qmin, qmax, symmetric = _CODES[activations]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        peak = max(-lo, hi)
        return Params(peak / qmax if peak > 0 else 1.0, 0)
    if hi - lo <= 0:
        return Params(1.0, 0)
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return Params(scale, zero_point)


class _Groups:
    """Union-find over tensors that must share one (scale, zero point); a group may carry fixed parameters."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.fixed: dict[int, Params] = {}

    def find(self, key: int) -> int:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: int, b: int) -> bool:
        """Join two groups; False (and nothing joined) when both have different fixed parameters."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        fa, fb = self.fixed.get(ra), self.fixed.get(rb)
        if fa is not None and fb is not None and fa != fb:
            return False
        self.parent[rb] = ra
        if fa is None and fb is not None:
            self.fixed[ra] = fb
        return True

    def fix(self, key: int, params: Params) -> bool:
        root = self.find(key)
        if root in self.fixed and self.fixed[root] != params:
            return False
        self.fixed[root] = params
        return True


def assign_params(
    sg: Subgraph, integer: list[Operator], observers: dict[int, tuple[Tensor, Observer]], activations: str
) -> tuple[dict[int, Params], set[tuple[int, int]]]:
    """Parameters of every observed tensor, and the (op, input) pairs that need a requantizing QUANTIZE because
    two fixed requirements meet (e.g. a SOFTMAX output concatenated with a LOGISTIC output)."""
    bits, symmetric = (16, True) if activations == I16 else (8, False)
    groups = _Groups()
    requantize: set[tuple[int, int]] = set()
    for key in observers:
        groups.find(key)
    for op in integer:
        rule = RULES[op.name]
        out = op.outputs[0]
        assert out is not None
        fixed = rule.fixed_params(activations)
        if fixed is not None:
            groups.fix(id(out), Params(*fixed))
        if rule.scales != "same":
            continue
        for t in op.outputs[1:]:
            if t is not None:
                groups.union(id(out), id(t))
        for i, t in enumerate(op.inputs):
            if is_activation(t) and not groups.union(id(out), id(t)):
                requantize.add((id(op), i))
    bounds = _fused_bounds(integer)
    ranges: dict[int, tuple[float, float]] = {}
    for key, (_, obs) in observers.items():
        lo, hi = obs.range(bits, symmetric)
        lo, hi = lo * _HEADROOM[activations], hi * _HEADROOM[activations]
        floor, ceiling = bounds.get(key, (-math.inf, math.inf))
        lo, hi = max(lo, floor), min(hi, ceiling)
        root = groups.find(key)
        old = ranges.get(root, (math.inf, -math.inf))
        ranges[root] = (min(old[0], lo), max(old[1], hi))
    params = {}
    for key in observers:
        root = groups.find(key)
        params[key] = groups.fixed.get(root) or activation_params(*ranges[root], activations)
    return params, requantize


def check_multipliers(integer: list[Operator], params: dict[int, Params]) -> None:
    """Refuse, naming the op, parameters whose rescaling LiteRT cannot express (it would abort when it loads)."""
    for op in integer:
        scales = {t.name: params[id(t)].scale for t in (*op.inputs, *op.outputs) if t is not None and id(t) in params}
        for name, scale in scales.items():
            if not 0 < scale <= _MAX_ACTIVATION_SCALE:
                raise EngineError(f"{op.name} tensor {name!r}: calibrated range too wide for integer kernels")
        out = op.outputs[0]
        if op.name in ("ADD", "SUB") and out is not None and id(out) in params:
            ins = [params[id(t)].scale for t in op.inputs if t is not None and id(t) in params]
            if ins and max(ins) > _ADD_SCALE_RATIO * params[id(out)].scale:
                raise EngineError(
                    f"{op.name} {out.name!r}: input ranges over 2^19 times its output's, which the int8 kernel "
                    f"cannot rescale"
                )


def _fused_bounds(integer: list[Operator]) -> dict[int, tuple[float, float]]:
    """The value range a fused activation lets through, for each integer op output that has one."""
    bounds = {}
    for op in integer:
        options = op.builtin_options.fields if op.builtin_options is not None else {}
        fused = options.get("fused_activation_function")
        if fused:
            name = enum_name("ActivationFunctionType", int(fused))
            if name in _FUSED_BOUNDS and op.outputs[0] is not None:
                bounds[id(op.outputs[0])] = _FUSED_BOUNDS[name]
    return bounds


# ------------------------------------------------------------------------------------------------- rewrite


def _quantization(params: Params) -> QuantizationParams:
    return QuantizationParams(
        scale=np.array([params.scale], np.float32), zero_point=np.array([params.zero_point], np.int64)
    )


@dataclass
class _Bias:
    """A quantized bias, kept for bias correction: its op, tensor, per-channel scales, the op's (integer) input,
    and the weight's rounding error (dequantized int8 minus float, in the weight's layout)."""

    op: Operator
    tensor: Tensor
    scales: np.ndarray
    input: Tensor
    weight_error: np.ndarray


class _Rewriter:
    """Retypes one subgraph's tensors and constants and inserts the conversions at the integer/float seams."""

    def __init__(self, model: Model, recipe: Recipe, options: TensorOptions, report: IntegerReport) -> None:
        self.model, self.sg, self.recipe, self.report = model, model.main, recipe, report
        self.activations, self.io = STATIC_MODES[options.quantize or ""], options.io
        self.correct_biases = options.bias_correction
        self.type = TENSOR_TYPES[_CODES[self.activations][0]]
        self.constants: dict[tuple, Tensor] = {}
        self.entries: list[TensorReport] = []
        self.biases: list[_Bias] = []
        self.weight_errors: dict[int, np.ndarray] = {}

    def insert(self, name: str, source: Tensor, target: Tensor, before: int) -> None:
        if name == "QUANTIZE":
            version = quantize_version(target.type_name)
            self.report.quantize_ops += 1
        else:
            version = dequantize_version(source.type_name, False)
            self.report.dequantize_ops += 1
        self.sg.insert_operator(before, Operator(self.model.opcode(name, version), [source], [target]))

    def new(self, name: str, like: Tensor, params: Params | None, type_name: str | None = None) -> Tensor:
        type_ = self.type if type_name is None else TENSOR_TYPES[type_name]
        quantization = None if params is None else _quantization(params)
        return Tensor(name, like.shape, type_, quantization=quantization, shape_signature=like.shape_signature)

    def constant(self, t: Tensor, params: Params, activations: str | None = None) -> Tensor:
        """``t``'s values quantized per tensor with ``params`` (one copy per tensor and parameters), in the
        activation type or the one given."""
        activations = activations or self.activations
        key = (id(t), params, activations)
        if key not in self.constants:
            q = Tensor(f"{t.name}/{activations}", quantization=_quantization(params))
            q.data = quantize_array(np.asarray(t.data), params.scale, params.zero_point, _CODE_DTYPES[activations])
            self.constants[key] = q
        return self.constants[key]

    def own_params(self, values: np.ndarray, activations: str | None = None) -> Params:
        data = np.asarray(values, np.float64)
        lo, hi = float(data.min(initial=0.0)), float(data.max(initial=0.0))
        return activation_params(lo, hi, activations or self.activations)

    def weight(self, op: Operator, rule: OpRule, t: Tensor, floor: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """The weight int8 symmetric (per channel on the op's channel axis, or per tensor), and its scales, none
        below ``floor`` (per channel, or one value)."""
        axis = channel_axis_of(rule.channel_axis(op.builtin_options), t) if rule.integer_weights == "channel" else None
        key = (id(t), axis)
        if key not in self.constants:
            values = np.asarray(t.data, np.float32)
            method = self.recipe.resolve(op.name, t.name or "").scale_method
            quantized = quantize_weight(
                values,
                8,
                "tensor" if axis is None else "channel",
                axis,
                method,
                floor=floor if axis is not None else floor.max(initial=0.0),
                positive=True,
            )
            scales = quantized.scales
            q = Tensor(f"{t.name}/int8")
            q.data = np.ascontiguousarray(quantized.codes)
            q.quantization = QuantizationParams(
                scale=scales, zero_point=np.zeros(scales.size, np.int64), quantized_dimension=axis or 0
            )
            entry = _weight_entry(t, q, quantized, self.activations, method)
            if (
                op.name in DENSIFY_INTEGER_READERS
                and self.recipe.resolve(op.name, t.name or "").sparse_format == "tflite"
            ):
                q = self._sparse(q, op, entry)
            self.constants[key] = q
            self.entries.append(entry)
            if self.correct_biases:  # only then: a float64 copy of every weight
                self.weight_errors[id(q)] = quantized.dequantized() - values
        q = self.constants[key]
        assert q.quantization is not None and q.quantization.scale is not None
        return q, q.quantization.scale

    def _sparse(self, q: Tensor, op: Operator, entry: TensorReport) -> Tensor:
        """``q`` stored in TFLite's sparse format behind DENSIFY when that is smaller (pruned or sparse weights):
        LiteRT's integer CONV_2D and FULLY_CONNECTED read the densified int8 weight bit for bit like the dense one
        (builtin and XNNPACK, measured).  Returns the tensor the op reads."""
        codes = np.asarray(q.data)
        packed, sparsity = encode_sparse(codes)
        size = sparse_bytes(packed, sparsity)
        if size >= codes.nbytes:
            return q
        # DENSIFY copies codes: only its output needs the per-channel parameters (12 bytes a channel).
        stored = Tensor(f"{q.name}_sparse", q.shape, q.type, sparsity=sparsity)
        stored.buffer = Buffer.of(packed)
        dense = Tensor(f"{q.name}/dense", q.shape, q.type, quantization=q.quantization)
        self.sg.insert_operator(self.sg.operators.index(op), Operator(self.model.opcode("DENSIFY"), [stored], [dense]))
        entry.bytes_after += size - codes.nbytes
        entry.sparsity = 1 - packed.size / codes.size
        return dense

    def bias(self, op: Operator, t: Tensor, x: Tensor, weight: Tensor, weight_scales: np.ndarray) -> Tensor:
        """The bias in BIAS_TYPES[activations] with scale input_scale * weight_scale[c], zero point 0."""
        assert x.quantization is not None and x.quantization.scale is not None
        input_scale = float(x.quantization.scale[0])
        values = np.asarray(t.data, np.float64).reshape(-1)
        scales = input_scale * weight_scales.astype(np.float64)
        if scales.size == 1 and values.size > 1:
            scales = np.full(values.size, scales[0])
        type_name = BIAS_TYPES[self.activations]
        limit = _INT32_MAX if type_name == "INT32" else 2**63 - 1
        codes = np.clip(np.rint(values / scales), -limit, limit)
        q = Tensor(f"{t.name}/{type_name.lower()}")
        q.data = codes.astype(np.int32 if type_name == "INT32" else np.int64).reshape(t.shape)
        q.quantization = QuantizationParams(
            scale=scales.astype(np.float32), zero_point=np.zeros(scales.size, np.int64), quantized_dimension=0
        )
        if self.correct_biases:
            self.biases.append(_Bias(op, q, scales, x, self.weight_errors[id(weight)]))
        return q


def rewrite(
    model: Model,
    recipe: Recipe,
    integer: list[Operator],
    tensors: dict[int, Tensor],
    params: dict[int, Params],
    requantize: set[tuple[int, int]],
    options: TensorOptions,
    report: IntegerReport,
) -> tuple[list[TensorReport], list[_Bias]]:
    """Turn the planned ops integer: activations retyped, constants quantized, conversions at the seams."""
    sg = model.main
    rw = _Rewriter(model, recipe, options, report)
    activations, io = rw.activations, rw.io
    is_integer = {id(op) for op in integer}
    producers, consumers = sg.producers(), sg.consumers()
    int_view: dict[int, Tensor] = {}
    outputs = {id(t) for t in sg.outputs}
    for key in params:
        t = tensors[key]
        p = params[key]
        prod = producers.get(key)
        readers = consumers.get(key, [])
        int_readers = [op for op in readers if id(op) in is_integer]
        float_readers = [op for op in readers if id(op) not in is_integer]
        from_int = prod is not None and id(prod) in is_integer
        if from_int and key in outputs and io == "float":
            q = rw.new(f"{t.name}/{activations}", t, p)
            prod.outputs = [q if o is t else o for o in prod.outputs]
            rw.insert("DEQUANTIZE", q, t, sg.operators.index(prod) + 1)
            int_view[key] = q
        elif from_int or (t in sg.inputs and io != "float"):
            t.type, t.quantization = rw.type, _quantization(p)
            int_view[key] = t
            if t in sg.inputs and io == "uint8":
                t.type, t.quantization = TENSOR_TYPES["UINT8"], _quantization(Params(p.scale, p.zero_point + 128))
                q = rw.new(f"{t.name}/int8", t, p)
                rw.insert("QUANTIZE", t, q, _first(sg, int_readers + float_readers))
                int_view[key] = q
            if float_readers:
                f = rw.new(f"{t.name}/dequantized", t, None, "FLOAT32")
                rw.insert("DEQUANTIZE", int_view[key], f, _first(sg, float_readers))
                for op in float_readers:
                    op.inputs = [f if u is t else u for u in op.inputs]
        elif int_readers:
            q = rw.new(f"{t.name}/{activations}", t, p)
            rw.insert("QUANTIZE", t, q, _first(sg, int_readers))
            int_view[key] = q
        for op in int_readers:
            op.inputs = [int_view[key] if u is t else u for u in op.inputs]
    _integer_outputs(rw, params, int_view)
    originals = {id(view): key for key, view in int_view.items()}  # integer tensor -> the observed tensor's id
    for op in integer:
        _quantize_op(rw, op, params, originals, requantize)
    report.integer_ops = dict(Counter(op.name for op in integer))
    return rw.entries, rw.biases


def _first(sg: Subgraph, ops: list[Operator]) -> int:
    return min((sg.operators.index(op) for op in ops), default=len(sg.operators))


def _integer_outputs(rw: _Rewriter, params: dict[int, Params], int_view: dict[int, Tensor]) -> None:
    """With an integer interface, every graph output is int8 (or uint8, requantized last) under its own name."""
    if rw.io == "float":
        return
    sg = rw.sg
    new_outputs = []
    for t in sg.outputs:
        view = int_view.get(id(t))
        if view is None and id(t) in params:  # written by a float op: quantized at the end
            view = rw.new(f"{t.name}/{rw.activations}", t, params[id(t)])
            rw.insert("QUANTIZE", t, view, len(sg.operators))
            view.name, t.name = t.name, f"{t.name}/float"
        if view is not None and rw.io == "uint8":
            assert view.quantization is not None and view.quantization.scale is not None
            p = Params(float(view.quantization.scale[0]), int(view.quantization.zero_point[0]) + 128)
            u = rw.new(view.name or "", view, p, "UINT8")
            view.name = f"{view.name}/int8"
            rw.insert("QUANTIZE", view, u, len(sg.operators))
            view = u
        new_outputs.append(view if view is not None else t)
    sg.outputs = new_outputs


def _quantize_op(
    rw: _Rewriter,
    op: Operator,
    params: dict[int, Params],
    originals: dict[int, int],
    requantize: set[tuple[int, int]],
) -> None:
    """Give one integer op its integer inputs (activations, weight, bias, constants), version and options;
    ``originals`` maps each integer tensor's id to the observed tensor's (the key of ``params``)."""
    rule = RULES[op.name]
    out_key = originals.get(id(op.outputs[0]), id(op.outputs[0]))
    out_params = params[out_key]
    x = None  # the first integer activation input: a bias's scale is its scale times the weight's
    for i, t in enumerate(op.inputs):
        if t is not None and id(t) in originals:
            x = x or t
            if (id(op), i) in requantize:
                r = rw.new(f"{t.name}/requantized", t, out_params)
                rw.insert("QUANTIZE", t, r, rw.sg.operators.index(op))
                op.inputs[i] = r
    weight_scales = None
    if _multiplies_weight(rule):
        w = op.inputs[rule.weight_input]
        assert w is not None
        floor = _scale_floor(rule, op, x, out_params, rw.activations)
        op.inputs[rule.weight_input], weight_scales = rw.weight(op, rule, w, floor)
        _check_requantization(op, w, x, weight_scales, out_params, rw.activations)
    for i, t in enumerate(op.inputs):
        if t is None or t.type != _FLOAT32 or not t.is_constant:
            continue
        if i == rule.bias_input and weight_scales is not None and x is not None:
            op.inputs[i] = rw.bias(op, t, x, op.inputs[rule.weight_input], weight_scales)
        elif rule.scales == "same":
            op.inputs[i] = rw.constant(t, out_params)
        elif i == rule.weight_input:  # PRELU's alpha: int8 per tensor whatever the activations (measured)
            op.inputs[i] = rw.constant(t, rw.own_params(np.asarray(t.data), I8), I8)
        else:
            op.inputs[i] = rw.constant(t, rw.own_params(np.asarray(t.data)))
    version = rule.integer_version(rw.activations)
    assert version is not None
    op.opcode = rw.model.opcode(op.name, version)
    changes = rule.options_for(rw.activations)
    if changes and op.builtin_options is not None:
        op.builtin_options = Table(op.builtin_options.type, {**op.builtin_options.fields, **changes})


def _check_requantization(
    op: Operator, weight: Tensor, x: Tensor | None, weight_scales: np.ndarray, out: Params, activations: str
) -> None:
    """Refuse, naming the op, an int8 weighted op whose requantization scale (input scale x weight scale / output
    scale) is too large for XNNPACK (``_scale_floor`` prevents too small ones): the model would fail to load in the
    default interpreter ("failed to create XNNPACK runtime"), while the builtin kernels run it.  Hostile biases do
    this (a bias near 1e38 raises the weight scale so it fits int32, against an output range a fused RELU_N1_TO_1
    keeps at [-1, 1])."""
    if activations != I8 or x is None or x.quantization is None or x.quantization.scale is None:
        return
    ratio = float(x.quantization.scale[0]) * float(np.max(weight_scales, initial=0.0)) / out.scale
    if ratio >= _XNNPACK_REQUANTIZATION[1]:
        raise EngineError(
            f"{op.name} with weight {weight.name!r}: input x weight scale over output "
            f"scale reaches {ratio:.3g}, beyond the {_XNNPACK_REQUANTIZATION[1]:g} XNNPACK (the default interpreter) "
            f"requantizes: its bias or weights are far too large for its output range"
        )


def _scale_floor(rule: OpRule, op: Operator, x: Tensor | None, out: Params, activations: str) -> np.ndarray:
    """The smallest weight scale per channel whose bias still fits its integer type (a channel of near-zero
    weights gets a near-zero scale, and bias / (input_scale * weight_scale) would overflow int32, clipping it)
    and, in int8, whose requantization scale XNNPACK takes (a smaller one only rounds to zero what is below the
    output's 2^-32nd step anyway)."""
    if x is None or x.quantization is None or x.quantization.scale is None:
        return np.zeros(1)
    in_scale = float(x.quantization.scale[0])
    floor = np.full(1, _XNNPACK_REQUANTIZATION[0] * out.scale / in_scale if activations == I8 else 0.0)
    bias = op.optional_input(rule.bias_input)
    if bias is None:
        return floor
    limit = _INT32_MAX if BIAS_TYPES[activations] == "INT32" else 2**62
    return np.maximum(floor, np.abs(np.asarray(bias.data, np.float64).reshape(-1)) / (in_scale * limit))


def _weight_entry(t: Tensor, q: Tensor, quantized: QuantizedWeight, activations: str, method: str) -> TensorReport:
    scales = quantized.scales
    return TensorReport(
        name=t.name or "",
        subgraph=0,
        shape=tuple(t.shape or ()),
        ops=[],
        action="compressed",
        mode="int8" if activations == I8 else "int16x8",
        bits=8,
        granularity="channel" if scales.size > 1 else "tensor",
        scale=method,
        form="integer",
        dtype_before="FLOAT32",
        dtype_after="INT8",
        bytes_before=int(np.asarray(t.data).nbytes),
        bytes_after=int(np.asarray(q.data).nbytes) + 12 * scales.size,
        weight_sqnr_db=quantized.sqnr_db,
    )


# ------------------------------------------------------------------------------------------ bias correction


def correct_biases(model: Model, biases: list[_Bias], data: CalibrationData, executor: type[LiteRTExecutor]) -> dict:
    """Remove the mean output shift that rounding each weight causes: for a linear op it is the weight error
    applied to the mean of the op's input, E[(W_q - W) x] = (W_q - W) E[x], with E[x] per input channel
    measured in the quantized model on the calibration samples.  Subtracting it from the bias makes each
    quantized layer's output mean match the float layer's on the same inputs (borders of padded convolutions
    aside), one layer's correction not counted again in the next."""
    sg = model.main
    index = {id(t): i for i, t in enumerate(all_tensors(sg))}
    runner = executor(bytes(model_to_bytes(model)))
    inputs = [index[id(t)] for t in sg.inputs]
    means = [np.zeros(b.input.shape[-1]) for b in biases]
    for sample in range(data.count):
        runner.run({i: _as_input(v, t) for i, v, t in zip(inputs, data.sample(sample), sg.inputs, strict=True)})
        for k, b in enumerate(biases):
            q = b.input.quantization
            codes = runner.tensor(index[id(b.input)]).astype(np.float64)
            means[k] += ((codes - float(q.zero_point[0])) * float(q.scale[0])).reshape(-1, means[k].size).mean(axis=0)
    shifts = []
    for b, total in zip(biases, means, strict=True):
        shift = _mean_shift(b.op, b.weight_error, total / data.count)
        codes = np.asarray(b.tensor.data).astype(np.float64).reshape(-1) - np.rint(shift / b.scales)
        info = np.iinfo(b.tensor.dtype)
        b.tensor.data = np.clip(codes, info.min, info.max).astype(b.tensor.dtype).reshape(b.tensor.shape)
        shifts.append(float(np.abs(shift).mean()))
    return {"biases": len(biases), "mean_abs_shift": float(np.mean(shifts)) if shifts else 0.0}


def _mean_shift(op: Operator, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per output channel, the weight error applied to a constant input equal to ``mean`` (per input channel):
    each output sums its filter's taps over the input channels (a depthwise filter over its own channel)."""
    if op.name == "DEPTHWISE_CONV_2D":
        channels = error.shape[-1]
        return error.reshape(-1, channels).sum(axis=0) * np.repeat(mean, channels // mean.size)
    if op.name == "TRANSPOSE_CONV":  # each output pixel sums a varying subset of taps: no constant shift
        return np.zeros(error.shape[0])
    return error.reshape(error.shape[0], -1, mean.size).sum(axis=1) @ mean


def _as_input(value: np.ndarray, t: Tensor) -> np.ndarray:
    """A float sample as the (possibly integer) graph input ``t`` takes it."""
    q = t.quantization
    if t.type == _FLOAT32 or q is None or q.scale is None:
        return value
    return quantize_array(value, float(q.scale[0]), int(q.zero_point[0]), t.dtype)
