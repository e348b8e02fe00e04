"""``--equalize``: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"), run before any weight is pruned, clustered or quantized.

Converted models fold batch normalization into their filters, so one weight's channels can span ranges a hundred
times apart (MediaPipe's depthwise filters do), and one scale per tensor then leaves the small channels a few
levels.  Where an affine weighted op (weight, bias and a ``channel_flow`` in the ops table: CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED) feeds others of them only through ops that commute with positive per-channel
scaling (``homogeneous``: RELU, PRELU, PAD, pooling; its own fused activation NONE or RELU), dividing its output
channel c (filter and bias) by s_c and multiplying what its readers take from channel c by s_c computes the same
function.  Pairs sharing a weight (a depthwise filter after one conv and before the next) are balanced in turn
until no scale changes.

Which s_c depends on how the recipe quantizes the two sides.  Both with one scale per tensor, set by the absolute
max (a clipping search such as ``mse``, the 4-bit default, moves with the whole distribution, so such weights are
left alone; equalized at weight-int4 per tensor they lost 1.2-2.8 dB on six of eight MediaPipe models): the paper's
s_c = sqrt(r1_c / r2_c) (r1_c the range of the producer's filter c, r2_c that of the readers' input channel c) gives
both the range sqrt(r1_c * r2_c).  One side per tensor and the other float (a depthwise filter under
``min_elements``) or per channel along the scaled axis (which no scaling changes): that side's channels are raised
towards its largest range, which stays, so its step stays and each channel's error shrinks; the other side takes
the inverse for free.  A reader with one scale per channel of another axis (a per-channel conv reading the scaled
channels) would see its ranges move either way, so such pairs are left alone, as is everything when no weight has
one scale per tensor (the recipe refuses ``equalize`` then, full-integer modes included).

The scales are powers of two (s_c rounded in the log domain), so every rescaled value is exact in its stored type,
float16 included, and float arithmetic scales along: the equalized model computes what the original did bit for
bit, each pair balanced within a factor 2 (no scale makes a value overflow or become subnormal).  Pairs through
RELU6, RELU_N1_TO_1 or HARD_SWISH, which clip at fixed values, are left as they are: the paper's replacement of
RELU6 by RELU would change the float model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.format.ir import Buffer, Model, Operator, Subgraph, Tensor
from engine.format.schema import enum_name
from engine.graph.ops import HOMOGENEOUS_ACTIVATIONS, RULES, OpRule, rule
from engine.graph.weights import Weight, channel_axis_of, find_weights, stored_form, trace_constant
from engine.passes.channels import keeps_channels
from engine.passes.common import entry, select
from engine.recipe import Recipe, TensorOptions
from engine.report import TensorReport

# Sweeps over every pair before giving up on a fixed point (rounded exponents can trade one step back and forth
# between pairs that share a weight); MediaPipe's models settle in a handful.
_MAX_SWEEPS = 64


def _affine(op_rule: OpRule) -> bool:
    """Whether the op computes weight x input + bias, one output channel per weight channel, with its input's
    channels reaching the weight on an axis the table names: its input axis (``channel_flow`` "contract") or, as
    one of its ``channel_constants``, its last (CONV_2D, FULLY_CONNECTED; DEPTHWISE_CONV_2D)."""
    if op_rule.weight_input is None or op_rule.bias_input is None:
        return False
    return op_rule.channel_flow == "contract" or op_rule.weight_input in op_rule.channel_constants


_AFFINE = frozenset(name for name, r in RULES.items() if _affine(r))


@dataclass(eq=False)
class _Pair:
    """A producer whose output channels can be rescaled, and every filter that reads them."""

    op: Operator
    weight: Weight
    bias: Tensor | None  # the stored constant behind its bias
    bias_shared: bool  # other ops read the bias (or the constant behind it) too: the producer gets its own copy
    readers: list[tuple[Weight, int]]  # each reader's filter and the axis holding the producer's channels
    exponents: np.ndarray  # the producer's channel c is divided by 2**exponents[c], the readers' multiplied
    producer_kind: str  # how the producer's quantization sees the scaling (``_grid_kind``)
    reader_kinds: list[str]  # and each reader's


def equalize_weights(model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
    """Balance the channel ranges of every pair of affine ops the graph allows where a filter has one scale per
    tensor (module doc); one report entry per weight rescaled."""
    if not TensorOptions(**recipe.options).equalize:
        return model, []
    weights = {id(w.value): w for w in find_weights(model)}
    grids = _grids(model, recipe)
    pairs = [pair for sg in model.subgraphs for pair in _pairs(sg, weights, recipe, grids) if _balances(pair)]
    return model, _equalize(pairs)


def _equalize(pairs: list[_Pair]) -> list[TensorReport]:
    """Balance the pairs' channels by powers of two (within what is exact), pair by pair, until none moves; write
    the weights and biases back and report them."""
    values = {id(w): w.decode().astype(np.float64) for p in pairs for w in (p.weight, *(r for r, _ in p.readers))}
    biases = {id(p): _bias_values(p) for p in pairs}
    for _ in range(_MAX_SWEEPS):
        moved = False
        for pair in pairs:
            step = _exact(pair, _balance(pair, values), values, biases[id(pair)])
            if step.any():
                moved = True
                pair.exponents += step
                _scale(values, pair.weight, pair.weight.channel_axis or 0, -step)
                biases[id(pair)] = biases[id(pair)] * np.exp2(-step.astype(np.float64))
                for reader, axis in pair.readers:
                    _scale(values, reader, axis, step)
        if not moved:
            break
    changed: dict[int, tuple[Weight, int]] = {}
    for pair in pairs:
        moved_channels = int(np.count_nonzero(pair.exponents))
        if moved_channels == 0:
            continue
        if pair.bias is not None:
            write_constant(_own_bias(pair) if pair.bias_shared else pair.bias, biases[id(pair)])
        for w in (pair.weight, *(r for r, _ in pair.readers)):
            changed[id(w)] = (w, changed.get(id(w), (w, 0))[1] + moved_channels)
    reports = []
    for weight, channels in changed.values():
        store_weight(weight, values[id(weight)])
        report = entry(weight, None)
        report.equalized, report.dtype_after, report.bytes_after = channels, weight.stored_type, weight.stored_bytes
        reports.append(report)
    return reports


def homogeneous_activation(op: Operator) -> bool:
    """Whether ``op``'s fused activation (NONE if it has none) commutes with positive per-channel scaling."""
    fields = op.builtin_options.fields if op.builtin_options is not None else {}
    return enum_name("ActivationFunctionType", fields.get("fused_activation_function", 0)) in HOMOGENEOUS_ACTIVATIONS


def _grids(model: Model, recipe: Recipe) -> dict[int, TensorOptions]:
    """The options of every weight the later passes give integer levels, by ``id`` of the tensor its ops read."""
    chosen, _ = select(model, recipe, lambda options: options.quantize not in (None, "float16"))
    return {id(w.value): options for w, options in chosen}


def _pairs(sg: Subgraph, weights: dict[int, Weight], recipe: Recipe, grids: dict[int, TensorOptions]) -> list[_Pair]:
    """Every producer in ``sg`` whose output channels reach only filters that can take their scales."""
    producers, consumers = sg.producers(), sg.consumers()
    outputs = {id(t) for t in sg.outputs}
    pairs = []
    for op in sg.operators:
        op_rule = rule(op.name) if op.name in _AFFINE else None
        weight = own_weight(op, op_rule, weights, recipe) if op_rule is not None else None
        if weight is None or not homogeneous_activation(op):
            continue
        bias = op.optional_input(op_rule.bias_input)
        traced = trace_constant(bias, producers) if bias is not None else None
        if bias is not None and (traced is None or not _plain_float(traced[0])):
            continue
        source = traced[0] if traced is not None else None
        shared = traced is not None and any(
            len(consumers.get(id(t), [])) != 1 for t in (source, bias, *(d.outputs[0] for d in traced[1]))
        )
        n = weight.shape[weight.channel_axis or 0]
        readers = _readers(op.outputs[0], n, weights, recipe, consumers, outputs)
        if readers:
            kinds = [_grid_kind(grids.get(id(w.value)), a == w.channel_axis) for w, a in readers]
            producer = _grid_kind(grids.get(id(weight.value)), True)
            exponents = np.zeros(n, np.int64)
            pairs.append(_Pair(op, weight, source, shared, readers, exponents, producer, kinds))
    return pairs


def _balances(pair: _Pair) -> bool:
    """Whether balancing the filters lowers their quantization error: some side has one scale per tensor set by
    its range, and no side has scales that the scaling would move otherwise."""
    kinds = [pair.producer_kind, *pair.reader_kinds]
    return "across" not in kinds and "tensor" in kinds


def _grid_kind(options: TensorOptions | None, along_channels: bool) -> str:
    """How a filter's quantization sees a scaling of the axis holding the producer's channels: not at all ("free":
    float, or one scale per channel of that very axis), through its one range ("tensor": one scale per tensor, the
    absolute max), or otherwise ("across": scales per channel of another axis or per block, each spanning several
    of those channels; or a clipping scale search, which the shape of the whole distribution moves)."""
    if options is None or (options.granularity == "channel" and along_channels):
        return "free"
    return "tensor" if options.granularity == "tensor" and options.scale_method == "minmax" else "across"


def own_weight(op: Operator, op_rule: OpRule, weights: dict[int, Weight], recipe: Recipe) -> Weight | None:
    """``op``'s filter when it can be rescaled: float, read by ``op`` alone, its buffer its own, not excluded."""
    value = op.optional_input(op_rule.weight_input)
    weight = weights.get(id(value)) if value is not None else None
    if weight is None or not weight.is_float or len(weight.uses) != 1 or weight.shared_source:
        return None
    if weight.source.external_buffer is not None or recipe.excludes(weight.name):
        return None
    if not np.isfinite(weight.decode()).all():
        return None
    return weight


def _readers(
    t: Tensor,
    n: int,
    weights: dict[int, Weight],
    recipe: Recipe,
    consumers: dict[int, list[Operator]],
    outputs: set[int],
) -> list[tuple[Weight, int]]:
    """The filters (and their axis of ``t``'s channels) of the affine ops reading ``t`` through homogeneous ops;
    none when any reader on the way is something else or a tensor on the way is a graph output."""
    readers: list[tuple[Weight, int]] = []
    frontier, seen = [t], set()
    while frontier:
        x = frontier.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if id(x) in outputs or x.type_name != "FLOAT32" or not x.shape or x.shape[-1] != n:
            return []
        for user in consumers.get(id(x), []):
            if keeps_channels(user, x) is not None:
                return []
            user_rule = rule(user.name)
            if _affine(user_rule):
                weight = own_weight(user, user_rule, weights, recipe)
                contract = user_rule.channel_flow == "contract"
                axis = user_rule.input_axis(user.builtin_options) if contract else -1  # a channel constant's last
                axis = channel_axis_of(axis, weight.value) if weight is not None else None
                if weight is None or axis is None or weight.shape[axis] != n:
                    return []
                readers.append((weight, axis))
            elif _passes(user_rule, user):
                frontier.append(user.outputs[0])
            else:
                return []
    return readers


def _passes(op_rule: OpRule, op: Operator) -> bool:
    """Whether channels go through ``op`` scaled as they came (one input: an ADD scales its other input too)."""
    return op_rule.channel_flow == "pass" and op_rule.homogeneous and homogeneous_activation(op)


def _plain_float(source: Tensor) -> bool:
    """Whether a bias is stored as a dense float constant (float16 behind DEQUANTIZE, say), which it keeps."""
    quantized = source.quantization is not None and source.quantization.scale is not None
    return source.sparsity is None and source.type_name in ("FLOAT32", "FLOAT16") and not quantized


def _bias_values(pair: _Pair) -> np.ndarray:
    if pair.bias is None:
        return np.zeros(pair.exponents.size)
    return np.asarray(pair.bias.data, np.float64).reshape(-1)


def largest_magnitudes(values: np.ndarray, axis: int) -> np.ndarray:
    """Per channel along ``axis``: the largest magnitude (0 for an all-zero channel)."""
    return np.abs(np.moveaxis(values, axis, 0)).reshape(values.shape[axis], -1).max(axis=1, initial=0.0)


def _ranges(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel along ``axis``: the largest magnitude and the smallest nonzero one (inf: all zero)."""
    flat = np.abs(np.moveaxis(values, axis, 0)).reshape(values.shape[axis], -1)
    return flat.max(axis=1, initial=0.0), np.where(flat > 0, flat, np.inf).min(axis=1, initial=np.inf)


def exact_steps(values: np.ndarray, axis: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the lowest and highest k for which every value times 2**k is exact in ``dtype``: no value may
    overflow or fall below the smallest normal number (one already subnormal may only grow)."""
    largest, smallest = _ranges(values, axis)
    info = np.finfo(dtype)
    with np.errstate(divide="ignore"):
        low = np.minimum(0.0, np.ceil(np.log2(info.tiny / smallest)))
        high = np.maximum(0.0, np.floor(np.log2(info.max / largest)))
    return low, high


def _balance(pair: _Pair, values: dict[int, np.ndarray]) -> np.ndarray:
    """The power-of-two exponents that balance the pair's filter ranges now (0 where a range is 0): both sides'
    when both have one scale per tensor, else only the side that has, its channels raised towards its largest
    (which stays), the other side taking the inverse free."""
    axis = pair.weight.channel_axis or 0
    r1 = largest_magnitudes(values[id(pair.weight)], axis)
    readers = zip(pair.readers, pair.reader_kinds, strict=True)
    gridded = [largest_magnitudes(values[id(w)], a) for (w, a), kind in readers if kind == "tensor"]
    with np.errstate(divide="ignore", invalid="ignore"):
        if pair.producer_kind == "tensor" and gridded:
            r2 = np.max(gridded, axis=0)
            wanted = np.where((r1 > 0) & (r2 > 0), np.rint(0.5 * np.log2(r1 / r2)), 0.0)
        elif pair.producer_kind == "tensor":
            wanted = np.where(r1 > 0, -np.floor(np.log2(r1.max() / r1)), 0.0)
        else:
            wanted = np.min([np.where(r > 0, np.floor(np.log2(r.max() / r)), np.inf) for r in gridded], axis=0)
            wanted = np.where(np.isfinite(wanted), wanted, 0.0)
    return wanted


def _exact(pair: _Pair, wanted: np.ndarray, values: dict[int, np.ndarray], bias: np.ndarray) -> np.ndarray:
    """``wanted`` clipped to what every value involved can take exactly."""
    axis = pair.weight.channel_axis or 0
    low, high = np.full(wanted.size, -np.inf), np.full(wanted.size, np.inf)
    bias_type = pair.bias.dtype if pair.bias is not None else np.dtype(np.float32)
    divided = [(values[id(pair.weight)], axis, pair.weight.source.dtype), (bias[:, None], 0, bias_type)]
    for array, a, dtype in divided:  # divided by 2**e: -e within their exact steps
        lo, hi = exact_steps(array, a, dtype)
        low, high = np.maximum(low, -hi), np.minimum(high, -lo)
    for reader, a in pair.readers:
        lo, hi = exact_steps(values[id(reader)], a, reader.source.dtype)
        low, high = np.maximum(low, lo), np.minimum(high, hi)
    return np.clip(wanted, low, high).astype(np.int64)


def _scale(values: dict[int, np.ndarray], weight: Weight, axis: int, exponents: np.ndarray) -> None:
    shape = [1] * values[id(weight)].ndim
    shape[axis] = -1
    values[id(weight)] = values[id(weight)] * np.exp2(exponents.astype(np.float64)).reshape(shape)


def store_weight(weight: Weight, values: np.ndarray) -> None:
    """Write a weight's rescaled dense ``values`` back in its stored encoding (dense or sparse)."""
    write_constant(weight.source, values.reshape(weight.shape))


def _own_bias(pair: _Pair) -> Tensor:
    """Give the producer a copy of its shared bias, stored and decoded as the original; returns the new constant."""
    sg, index = pair.weight.subgraph, rule(pair.op.name).bias_input
    bias = pair.op.optional_input(index)
    assert bias is not None and index is not None
    traced = trace_constant(bias, sg.producers())
    assert traced is not None
    source, chain = traced
    copy = Tensor(f"{source.name}/equalized", source.shape, source.type, shape_signature=source.shape_signature)
    copy.buffer = Buffer.of(np.asarray(source.data))
    sg.tensors.append(copy)
    current, at = copy, sg.operators.index(pair.op)
    for decoder in chain:
        out = decoder.outputs[0]
        value = Tensor(f"{out.name}/equalized", out.shape, out.type, shape_signature=out.shape_signature)
        sg.insert_operator(at, Operator(decoder.opcode, [current], [value], builtin_options=decoder.builtin_options))
        current, at = value, at + 1
    pair.op.inputs[index] = current
    return copy


def write_constant(source: Tensor, values: np.ndarray) -> None:
    """Give ``source`` a buffer of its own holding ``values`` (the dense value it decodes to) in its stored
    encoding (``stored_form``); exact, as the steps were bounded so."""
    array = stored_form(source, values)
    assert array is not None, source.name
    source.buffer = Buffer.of(array)
