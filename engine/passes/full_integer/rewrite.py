"""Full-integer rewrite: integer tensors, weights (sparse where smaller), biases and constants for each planned op,
QUANTIZE and DEQUANTIZE only at the seams between integer and float parts, op versions and options from the ops
table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineError
from engine.format.ir import TENSOR_TYPES, Buffer, Model, Operator, QuantizationParams, Subgraph, Table, Tensor
from engine.format.sparse import encode_sparse, sparse_bytes, sparse_cannot_save, sparse_int8_saves
from engine.graph.ops import (
    BIAS_TYPES,
    DENSIFY_INTEGER_READERS,
    I8,
    RULES,
    OpRule,
    dequantize_version,
    quantize_version,
)
from engine.graph.weights import channel_axis_of
from engine.passes.full_integer.params import Params, activation_params, to_quantization
from engine.passes.full_integer.plan import multiplies_weight, scheme_of
from engine.passes.full_integer.report import IntegerReport
from engine.quant.activations import ActivationScheme
from engine.quant.metrics import quantize_array
from engine.quant.rounding import LayerInputs
from engine.quant.uniform import QuantizedWeight, quantize_weight
from engine.recipe import Recipe, TensorOptions
from engine.registry import ACTIVATION_SCHEMES
from engine.report import TensorReport

_FLOAT32 = TENSOR_TYPES["FLOAT32"]


_INT32_MAX = 2**31 - 1
# PRELU's alpha is int8 per tensor whatever the model's activations (measured): the int8 scheme's codes.
_INT8 = ACTIVATION_SCHEMES.get("int8")


# The requantization scales XNNPACK's int8 convolutions and fully connected ops take: [2^-32, 256).
_XNNPACK_REQUANTIZATION = (2.0**-32, 256.0)


@dataclass
class Bias:
    """A quantized bias, kept for bias correction: its op, tensor and per-channel scales."""

    op: Operator
    tensor: Tensor
    scales: np.ndarray


class _Rewriter:
    """Retypes one subgraph's tensors and constants and inserts the conversions at the integer/float seams."""

    def __init__(
        self,
        model: Model,
        recipe: Recipe,
        options: TensorOptions,
        report: IntegerReport,
        layer_inputs: dict[int, LayerInputs],
    ) -> None:
        self.model, self.sg, self.recipe, self.report = model, model.main, recipe, report
        self.layer_inputs = layer_inputs
        self.mode, self.scheme, self.io = options.quantize or "", scheme_of(options), options.io
        self.kernels = self.scheme.kernels
        self.correct_biases = options.bias_correction
        self.type = TENSOR_TYPES[self.scheme.tensor_type]
        self.constants: dict[tuple, Tensor] = {}
        self.entries: list[TensorReport] = []
        self.biases: list[Bias] = []

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
        quantization = None if params is None else to_quantization(params)
        return Tensor(name, like.shape, type_, quantization=quantization, shape_signature=like.shape_signature)

    def constant(self, t: Tensor, params: Params, scheme: ActivationScheme | None = None) -> Tensor:
        """``t``'s values quantized per tensor with ``params`` (one copy per tensor and parameters), in the
        codes of the model's activation scheme or the one given."""
        scheme = scheme or self.scheme
        key = (id(t), params, scheme.tensor_type)
        if key not in self.constants:
            q = Tensor(f"{t.name}/{scheme.kernels}", quantization=to_quantization(params))
            q.data = quantize_array(np.asarray(t.data), params.scale, params.zero_point, scheme.dtype)
            self.constants[key] = q
        return self.constants[key]

    def own_params(self, values: np.ndarray, scheme: ActivationScheme | None = None) -> Params:
        data = np.asarray(values, np.float64)
        lo, hi = float(data.min(initial=0.0)), float(data.max(initial=0.0))
        return activation_params(lo, hi, scheme or self.scheme)

    def weight(self, op: Operator, rule: OpRule, t: Tensor, floor: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """The weight int8 symmetric (per channel on the op's channel axis, or per tensor), and its scales, none
        below ``floor`` (per channel, or one value)."""
        axis = channel_axis_of(rule.channel_axis(op.builtin_options), t) if rule.integer_weights == "channel" else None
        key = (id(t), axis)
        if key not in self.constants:
            values = np.asarray(t.data, np.float32)
            resolved = self.recipe.resolve(op.name, t.name or "")
            method, layer = resolved.scale_method, self.layer_inputs.get(id(t))
            sparse = op.name in DENSIFY_INTEGER_READERS and resolved.sparse_format == "tflite"
            quantized = quantize_weight(
                values,
                8,
                "tensor" if axis is None else "channel",
                axis,
                method,
                floor=floor if axis is not None else floor.max(initial=0.0),
                positive=True,
                rounding=resolved.rounding if layer is not None else "nearest",
                inputs=layer,
                keep_zeros=sparse and layer is not None and sparse_int8_saves(values),
            )
            scales = quantized.scales
            q = Tensor(f"{t.name}/int8")
            q.data = np.ascontiguousarray(quantized.codes)
            q.quantization = QuantizationParams(
                scale=scales, zero_point=np.zeros(scales.size, np.int64), quantized_dimension=axis or 0
            )
            entry = _weight_entry(t, q, quantized, self.mode, method)
            entry.rounding = resolved.rounding if layer is not None else None
            if sparse:
                q = self._sparse(q, op, entry)
            self.constants[key] = q
            self.entries.append(entry)
        q = self.constants[key]
        assert q.quantization is not None and q.quantization.scale is not None
        return q, q.quantization.scale

    def _sparse(self, q: Tensor, op: Operator, entry: TensorReport) -> Tensor:
        """``q`` stored in TFLite's sparse format behind DENSIFY when that is smaller (pruned or sparse weights):
        LiteRT's integer CONV_2D and FULLY_CONNECTED read the densified int8 weight bit for bit like the dense one
        (builtin and XNNPACK, measured).  Returns the tensor the op reads."""
        codes = np.asarray(q.data)
        if sparse_cannot_save(codes):
            return q
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

    def bias(self, op: Operator, t: Tensor, x: Tensor, weight_scales: np.ndarray) -> Tensor:
        """The bias in BIAS_TYPES[family] with scale input_scale * weight_scale[c], zero point 0."""
        assert x.quantization is not None and x.quantization.scale is not None
        input_scale = float(x.quantization.scale[0])
        values = np.asarray(t.data, np.float64).reshape(-1)
        scales = input_scale * weight_scales.astype(np.float64)
        if scales.size == 1 and values.size > 1:
            scales = np.full(values.size, scales[0])
        type_name = BIAS_TYPES[self.kernels]
        limit = _INT32_MAX if type_name == "INT32" else 2**63 - 1
        codes = np.clip(np.rint(values / scales), -limit, limit)
        q = Tensor(f"{t.name}/{type_name.lower()}")
        q.data = codes.astype(np.int32 if type_name == "INT32" else np.int64).reshape(t.shape)
        q.quantization = QuantizationParams(
            scale=scales.astype(np.float32), zero_point=np.zeros(scales.size, np.int64), quantized_dimension=0
        )
        if self.correct_biases:
            self.biases.append(Bias(op, q, scales))
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
    layer_inputs: dict[int, LayerInputs] | None = None,
) -> tuple[list[TensorReport], list[Bias]]:
    """Turn the planned ops integer: activations retyped, constants quantized, conversions at the seams.
    ``layer_inputs``: what the layers of weights with data-aware rounding read (by ``id`` of the weight)."""
    sg = model.main
    rw = _Rewriter(model, recipe, options, report, layer_inputs or {})
    io = rw.io
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
            q = rw.new(f"{t.name}/{rw.kernels}", t, p)
            prod.outputs = [q if o is t else o for o in prod.outputs]
            rw.insert("DEQUANTIZE", q, t, sg.operators.index(prod) + 1)
            int_view[key] = q
        elif from_int or (t in sg.inputs and io != "float"):
            t.type, t.quantization = rw.type, to_quantization(p)
            int_view[key] = t
            if t in sg.inputs and io == "uint8":
                t.type, t.quantization = TENSOR_TYPES["UINT8"], to_quantization(Params(p.scale, p.zero_point + 128))
                q = rw.new(f"{t.name}/int8", t, p)
                rw.insert("QUANTIZE", t, q, _first(sg, int_readers + float_readers))
                int_view[key] = q
            if float_readers:
                f = rw.new(f"{t.name}/dequantized", t, None, "FLOAT32")
                rw.insert("DEQUANTIZE", int_view[key], f, _first(sg, float_readers))
                for op in float_readers:
                    op.inputs = [f if u is t else u for u in op.inputs]
        elif int_readers:
            q = rw.new(f"{t.name}/{rw.kernels}", t, p)
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
            view = rw.new(f"{t.name}/{rw.kernels}", t, params[id(t)])
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
    if multiplies_weight(rule):
        w = op.inputs[rule.weight_input]
        assert w is not None
        if w.is_constant:
            floor = _scale_floor(rule, op, x, out_params, rw.kernels)
            op.inputs[rule.weight_input], weight_scales = rw.weight(op, rule, w, floor)
        else:  # an activation (``integer_computed_weight``), integer by now
            assert w.quantization is not None and w.quantization.scale is not None
            weight_scales = np.asarray(w.quantization.scale, np.float64)
        _check_requantization(op, w, x, weight_scales, out_params, rw.kernels)
    for i, t in enumerate(op.inputs):
        if t is None or t.type != _FLOAT32 or not t.is_constant:
            continue
        if i == rule.bias_input and weight_scales is not None and x is not None:
            op.inputs[i] = rw.bias(op, t, x, weight_scales)
        elif rule.scales == "same":
            op.inputs[i] = rw.constant(t, out_params)
        elif i == rule.weight_input:  # PRELU's alpha
            op.inputs[i] = rw.constant(t, rw.own_params(np.asarray(t.data), _INT8), _INT8)
        else:
            op.inputs[i] = rw.constant(t, rw.own_params(np.asarray(t.data)))
    version = rule.integer_version(rw.kernels)
    assert version is not None
    op.opcode = rw.model.opcode(op.name, version)
    changes = rule.options_for(rw.kernels)
    if changes and op.builtin_options is not None:
        op.builtin_options = Table(op.builtin_options.type, {**op.builtin_options.fields, **changes})


def _check_requantization(
    op: Operator, weight: Tensor, x: Tensor | None, weight_scales: np.ndarray, out: Params, family: str
) -> None:
    """Refuse, naming the op, an int8 weighted op whose requantization scale (input scale x weight scale / output
    scale) is too large for XNNPACK (``_scale_floor`` prevents too small ones): the model would fail to load in the
    default interpreter ("failed to create XNNPACK runtime"), while the builtin kernels run it.  Hostile biases do
    this (a bias near 1e38 raises the weight scale so it fits int32, against an output range a fused RELU_N1_TO_1
    keeps at [-1, 1])."""
    if family != I8 or x is None or x.quantization is None or x.quantization.scale is None:
        return
    ratio = float(x.quantization.scale[0]) * float(np.max(weight_scales, initial=0.0)) / out.scale
    if ratio >= _XNNPACK_REQUANTIZATION[1]:
        raise EngineError(
            f"{op.name} with weight {weight.name!r}: input x weight scale over output "
            f"scale reaches {ratio:.3g}, beyond the {_XNNPACK_REQUANTIZATION[1]:g} XNNPACK (the default interpreter) "
            f"requantizes: its bias or weights are far too large for its output range"
        )


def _scale_floor(rule: OpRule, op: Operator, x: Tensor | None, out: Params, family: str) -> np.ndarray:
    """The smallest weight scale per channel whose bias still fits its integer type (a channel of near-zero
    weights gets a near-zero scale, and bias / (input_scale * weight_scale) would overflow int32, clipping it)
    and, in int8, whose requantization scale XNNPACK takes (a smaller one only rounds to zero what is below the
    output's 2^-32nd step anyway)."""
    if x is None or x.quantization is None or x.quantization.scale is None:
        return np.zeros(1)
    in_scale = float(x.quantization.scale[0])
    floor = np.full(1, _XNNPACK_REQUANTIZATION[0] * out.scale / in_scale if family == I8 else 0.0)
    bias = op.optional_input(rule.bias_input)
    if bias is None:
        return floor
    limit = _INT32_MAX if BIAS_TYPES[family] == "INT32" else 2**62
    return np.maximum(floor, np.abs(np.asarray(bias.data, np.float64).reshape(-1)) / (in_scale * limit))


def _weight_entry(t: Tensor, q: Tensor, quantized: QuantizedWeight, mode: str, method: str) -> TensorReport:
    scales = quantized.scales
    return TensorReport(
        name=t.name or "",
        subgraph=0,
        shape=tuple(t.shape or ()),
        ops=[],
        action="compressed",
        mode=mode,
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
