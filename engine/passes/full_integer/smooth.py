"""Activation equalization for full-integer modes (``--equalize`` with ``--quantize int8|int16x8``): SmoothQuant
(Xiao et al. 2023, "Accurate and Efficient Post-Training Quantization for Large Language Models") on the graph.

An activation quantized with one scale per tensor spends its levels on its largest channel: a residual stream
whose channels span 0.06 to 192 (the tests' digits attention classifier) leaves most channels a level or two.
Where every op writing a tensor's channels is an affine op (FULLY_CONNECTED, CONV_2D: the weight's rows and the
bias) and every op reading them is one too (the weight's input axis), dividing channel c of the activation by s_c
and multiplying what the readers take from it by s_c computes the same function, and the activation's channels
come closer together.  The channels are followed through the ops that are positively homogeneous in them (the
ops table's ``homogeneous``: RELU, PRELU, pooling, RESIZE_BILINEAR, ADD when all its inputs are scaled alike,
BATCH_MATMUL's right-hand side), PAD (zeros; on the channel axis at an offset), depthwise convolutions (their bias
divided too), CONCATENATION (``concatenates``) and reshapes (``reshapes``): element j of a last axis stays
channel j mod P, P dividing every last axis, weight axis and offset on the way.  Every tensor reached this way is
one group sharing one s; a group reaching anything else (a graph input or output, SOFTMAX, RELU6, HARD_SWISH, a
weight read by other ops too) is left as it is.

Per channel, s_c = a_c^alpha / w_c^(1 - alpha) (alpha the paper's migration strength): a_c the largest |value|
of the channel over the group's tensors on the calibration samples, w_c the largest |weight| the readers apply to
it.  The producers' weights have one scale per row in the integer kernels, so dividing a row changes nothing in
its quantization; the readers' rows take the larger columns, which alpha trades against the activation's gain.
Per group, the strengths ``ALPHAS`` and no scaling are compared by the readers' predicted output noise
(``_noise``: uniform rounding noise of each activation's one step and of each reading row's weight step, through
the channel statistics), and the least is taken, so a group whose channels are already even stays as it is (on
MediaPipe's conv nets a fixed 0.5 lost up to 7 dB; chosen so, none lost).  The scales are powers of two (rounded
in the log domain, centred on the median), so the rescaled float model computes what the original did bit for
bit (the calibration that follows sees the rescaled model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from engine.format.ir import Buffer, Model, Operator, Subgraph, Tensor
from engine.graph.ops import RULES, rule
from engine.graph.weights import Weight, channel_axis_of, find_weights
from engine.passes.channels import keeps_channels
from engine.passes.equalize import (
    exact_steps,
    homogeneous_activation,
    largest_magnitudes,
    own_weight,
    store_weight,
    write_constant,
)
from engine.quant.activations import ActivationScheme
from engine.quant.observers import Observer
from engine.recipe import Recipe
from engine.runtime.calibrate import CalibrationData, LiteRTExecutor, calibrate

# Migration strengths tried (the paper's default is 0.5); no scaling is always a candidate.
ALPHAS = (0.25, 0.5, 0.75, 1.0)
_AFFINE = frozenset({"FULLY_CONNECTED", "CONV_2D"})


@dataclass(eq=False)
class _Group:
    """Tensors whose channels scale together, and the constants that take the scaling."""

    members: dict[int, Tensor] = field(default_factory=dict)
    producers: dict[int, Weight] = field(default_factory=dict)  # rows divided
    readers: dict[int, tuple[Weight, int, Tensor]] = field(default_factory=dict)  # axis multiplied, tensor read
    biases: dict[int, tuple[Operator, int]] = field(default_factory=dict)  # (op, input): the producers' and
    # the depthwise convolutions' on the way, divided
    offsets: list[int] = field(default_factory=list)  # where a PAD puts its input's channels


@dataclass
class Smoothed:
    """One group the pass rescaled: the producing weights, how many tensors and reading weights it spans, the
    channels moved (of ``period``), and the spread of the group's channel ranges (largest / median) before and
    after, on the calibration samples."""

    producers: list[str]
    tensors: int
    readers: int
    period: int
    channels: int
    spread: tuple[float, float]


class ChannelStatistics(Observer):
    """Per channel (last axis): the extremes and the sum of squares seen, besides the base class's extremes."""

    spec = "channel-statistics"

    def __init__(self) -> None:
        super().__init__()
        self.high: np.ndarray | None = None
        self.low: np.ndarray | None = None
        self.squares: np.ndarray | None = None
        self.vectors = 0

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, np.float32)
        if not x.size:
            return
        rows = x.reshape(-1, x.shape[-1])
        high, low = rows.max(axis=0), rows.min(axis=0)
        # The base class's extremes from the channels' (one pass over the values instead of three).
        self._min, self._max = self._extremes(float(low.min()), float(high.max()))
        self._count += x.size
        squares = np.square(rows, dtype=np.float64).sum(axis=0)
        if self.high is None or self.low is None or self.squares is None:
            self.high, self.low, self.squares = high, low, squares
        else:
            self.high, self.low = np.maximum(self.high, high), np.minimum(self.low, low)
            self.squares = self.squares + squares
        self.vectors += rows.shape[0]


def smooth_activations(
    model: Model,
    recipe: Recipe,
    data: CalibrationData,
    scheme: ActivationScheme,
    executor: type[LiteRTExecutor] = LiteRTExecutor,
    strength: float | None = None,
    stored: dict[int, np.dtype] | None = None,
) -> list[Smoothed]:
    """Rescale every group of the main subgraph the graph allows where that lowers the predicted noise (module
    doc), from the channel statistics of one calibration run over ``data``; the model is edited in place and
    computes what it did.  ``strength``: one migration strength for every group instead of the choice.
    ``stored``: by ``id`` of a weight's tensor, the floating type it is stored in behind decoders the pipeline
    folded, for weights that will stay float: their rescaled values stay exact in it, so they go back there
    (``restore_decoders``) rather than as float32."""
    sg = model.main
    weights = {id(w.value): w for w in find_weights(model) if w.subgraph is sg}
    dtypes = {key: (stored or {}).get(key, w.source.dtype) for key, w in weights.items()}
    groups = _groups(sg, weights, recipe)
    if not groups:
        return []
    observers: dict[int, tuple[Tensor, Observer]] = {
        key: (t, ChannelStatistics()) for g in groups for key, t in g.members.items()
    }
    calibrate(model, data, observers, executor)
    stats = {key: obs for key, (_, obs) in observers.items() if isinstance(obs, ChannelStatistics)}
    values = {id(w.value): w.decode().astype(np.float64) for g in groups for w in _weights_of(g)}
    smoothed = []
    rescaled: dict[int, Weight] = {}
    for group in groups:
        period = _period(group)
        if period < 2 or any(stats[key].vectors == 0 for key in group.members):
            continue
        active = np.max([_fold(np.maximum(stats[k].high, -stats[k].low), period) for k in group.members], axis=0)
        strengths = ALPHAS if strength is None else (strength,)
        exponents = _choose(group, stats, values, dtypes, active, period, scheme, strengths, strength is None)
        if exponents.any():
            _apply(sg, group, exponents, values)
            smoothed.append(_summary(group, active, exponents, period))
            rescaled.update({id(w.value): w for w in _weights_of(group)})
    for key, w in rescaled.items():
        store_weight(w, values[key])
    return smoothed


def _groups(sg: Subgraph, weights: dict[int, Weight], recipe: Recipe) -> list[_Group]:
    """Every group reached from an affine producer's output (each tensor in one group at most)."""
    producers, consumers = sg.producers(), sg.consumers()
    outputs = {id(t) for t in sg.outputs}
    seen: set[int] = set()
    groups = []
    for op in sg.operators:
        if op.name not in _AFFINE or not op.outputs or id(op.outputs[0]) in seen:
            continue
        group = _Group()
        complete = _collect(group, op.outputs[0], _Graph(producers, consumers, outputs, weights, recipe))
        seen.update(group.members)
        if complete and group.readers:
            groups.append(group)
    return groups


class _Graph(NamedTuple):
    producers: dict[int, Operator]
    consumers: dict[int, list[Operator]]
    outputs: set[int]
    weights: dict[int, Weight]
    recipe: Recipe


def _collect(group: _Group, start: Tensor, graph: _Graph) -> bool:
    """Grow ``group`` from ``start`` over every op its tensors meet; False when one cannot take the scaling."""
    producers, consumers, outputs, weights, recipe = graph
    frontier = [start]
    while frontier:
        t = frontier.pop()
        if id(t) in group.members:
            continue
        group.members[id(t)] = t
        if id(t) in outputs or t.is_constant or t.type_name != "FLOAT32" or not t.shape:
            return False
        producer = producers.get(id(t))
        if producer is None:
            return False  # a graph input
        if producer.name in _AFFINE and producer.outputs[0] is t:
            if not _add_producer(group, producer, weights, recipe):
                return False
        elif (joined := _through(group, producer, t)) is not None:
            frontier += joined
        else:
            return False
        for user in consumers.get(id(t), []):
            if user.name in _AFFINE and user.inputs[0] is t and all(x is not t for x in user.inputs[1:]):
                if not _add_reader(group, user, t, weights, recipe):
                    return False
            elif (joined := _through(group, user, t)) is not None:
                frontier += joined
            else:
                return False
    return True


def _add_producer(group: _Group, op: Operator, weights: dict, recipe: Recipe) -> bool:
    op_rule = rule(op.name)
    weight = own_weight(op, op_rule, weights, recipe)
    if weight is None or not homogeneous_activation(op) or not _add_bias(group, op, op_rule.bias_input):
        return False
    group.producers[id(op)] = weight
    return True


def _add_bias(group: _Group, op: Operator, index: int | None) -> bool:
    """Record ``op``'s bias (none, or a plain float32 constant: a shared one is copied when rescaled)."""
    bias = op.optional_input(index)
    if bias is None:
        return True
    q = bias.quantization
    plain = bias.is_constant and bias.sparsity is None and bias.type_name == "FLOAT32"
    if not plain or (q is not None and q.scale is not None):
        return False
    group.biases[id(op)] = (op, index)
    return True


def _add_reader(group: _Group, op: Operator, t: Tensor, weights: dict, recipe: Recipe) -> bool:
    op_rule = rule(op.name)
    weight = own_weight(op, op_rule, weights, recipe)
    axis = channel_axis_of(op_rule.input_axis(op.builtin_options), weight.value) if weight is not None else None
    if weight is None or axis is None:
        return False
    group.readers[id(op)] = (weight, axis, t)
    return True


def _through(group: _Group, op: Operator, t: Tensor) -> list[Tensor] | None:
    """The tensors that join the group when ``op`` reads or writes ``t`` and keeps its channels apart (scaled
    alike), or None when it cannot."""
    op_rule = RULES.get(op.name)
    if op_rule is None or not homogeneous_activation(op) or len(op.outputs) != 1:
        return None
    if op_rule.reshapes:
        return [op.inputs[0], op.outputs[0]] if op.inputs[0] is t or op.outputs[0] is t else None
    if op_rule.concatenates:
        return [*op.inputs, op.outputs[0]]
    if op_rule.channel_paddings_input is not None and op_rule.homogeneous:  # zeros, on the channel axis too
        paddings = op.optional_input(op_rule.channel_paddings_input)
        if paddings is None or paddings.data is None or op.inputs[0] is None:
            return None
        group.offsets.append(int(np.asarray(paddings.data)[-1][0]))  # input channel c lands at offset + c
        return [op.inputs[0], op.outputs[0]]
    if op_rule.channel_flow not in ("pass", "merge") or not (op_rule.homogeneous or op_rule.bias_input is not None):
        return None
    inputs = [op.inputs[i] if i < len(op.inputs) else None for i in op_rule.channel_inputs]
    if op.outputs[0] is not t and all(x is not t for x in inputs):
        return None  # ``t`` is another input (BATCH_MATMUL's left-hand side, a shape)
    if any(x is None or keeps_channels(op, x) is not None for x in inputs):
        return None  # options that mix channels (a depth multiplier, an adjoint right-hand side)
    if any(x is None or x.shape != op.outputs[0].shape for x in inputs) and op_rule.channel_flow == "merge":
        return None
    # Per-channel factors (a depthwise filter, PRELU's alphas) stay; a bias is divided with its channel.
    if op_rule.bias_input in op_rule.channel_constants and not _add_bias(group, op, op_rule.bias_input):
        return None
    return [*inputs, op.outputs[0]]


def _weights_of(group: _Group) -> list[Weight]:
    return [*group.producers.values()] + [w for w, _, _ in group.readers.values()]


def _period(group: _Group) -> int:
    """The largest P with channel j of every last axis in the group (and of every weight axis taking the
    scaling) being channel j mod P."""
    sizes = [t.shape[-1] for t in group.members.values()]
    sizes += [w.shape[w.channel_axis or 0] for w in group.producers.values()]
    sizes += [w.shape[axis] for w, axis, _ in group.readers.values()]
    sizes += [int(np.asarray(op.inputs[i].data).size) for op, i in group.biases.values()]
    sizes += group.offsets
    return math.gcd(*sizes)


def _fold(per_channel: np.ndarray, period: int, reduce=np.max) -> np.ndarray:
    """Per channel mod ``period``: the max (or ``reduce``) over the positions holding it."""
    return reduce(np.asarray(per_channel, np.float64).reshape(-1, period), axis=0)


def _choose(
    group: _Group,
    stats: dict[int, ChannelStatistics],
    values: dict,
    dtypes: dict[int, np.dtype],
    active: np.ndarray,
    period: int,
    scheme: ActivationScheme,
    strengths: tuple[float, ...],
    keep_unscaled: bool,
) -> np.ndarray:
    """The exponents, among those of ``strengths`` (and no scaling, with ``keep_unscaled``), with the least
    predicted noise; ``active``: each channel's largest |value| over the group's tensors."""
    reading = np.max(
        [_fold(largest_magnitudes(values[id(w.value)], a), period) for w, a, _ in group.readers.values()], axis=0
    )
    readers = [_reader_terms(values[id(w.value)], w.channel_axis or 0, a, period) for w, a, _ in group.readers.values()]
    candidates = [np.zeros(period, np.int64)] if keep_unscaled else []
    candidates += [_exact(group, _wanted(active, reading, alpha), values, dtypes, period) for alpha in strengths]
    noise = [_noise(group, stats, readers, e, period, scheme.bits, scheme.symmetric) for e in candidates]
    return candidates[int(np.argmin(noise))]  # ties: the first, no scaling


def _wanted(active: np.ndarray, reading: np.ndarray, alpha: float) -> np.ndarray:
    """log2 s_c = alpha log2 a_c - (1 - alpha) log2 w_c, rounded and centred (0 where a range is 0)."""
    usable = (active > 0) & (reading > 0)
    log_s = np.zeros(active.size)
    log_s[usable] = alpha * np.log2(active[usable]) - (1 - alpha) * np.log2(reading[usable])
    centre = np.median(log_s[usable]) if usable.any() else 0.0
    return np.where(usable, np.rint(log_s - centre), 0.0)


def _reader_terms(values: np.ndarray, rows: int, axis: int, period: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A reading weight by (output row, channel mod ``period``): the sum of squares and the largest magnitude,
    and how many weights of a row multiply each channel."""
    moved = np.moveaxis(values, (rows, axis), (0, 1))
    grouped = moved.reshape(moved.shape[0], moved.shape[1] // period, period, -1)
    squares = np.square(grouped).sum(axis=(1, 3))
    largest = np.abs(grouped).max(axis=(1, 3), initial=0.0)
    return squares, largest, grouped.shape[1] * grouped.shape[3]


def _noise(
    group: _Group,
    stats: dict[int, ChannelStatistics],
    readers: list[tuple[np.ndarray, np.ndarray, float]],
    exponents: np.ndarray,
    period: int,
    bits: int,
    symmetric: bool,
) -> float:
    """The readers' predicted output noise power with channel c divided by s_c = 2**exponents[c] (uniform rounding
    noise, step^2 / 12): each activation's one step over all its channels, times how much the readers amplify
    each channel (a tensor no reader takes directly counts with their mean), plus each reading weight's one step
    per row times the mean square of the scaled input it multiplies."""
    s2 = np.exp2(2 * exponents.astype(np.float64))
    gains = [float((squares * s2).sum()) for squares, _, _ in readers]
    read_by: dict[int, float] = {}
    for gain, (_, _, x) in zip(gains, group.readers.values(), strict=True):
        read_by[id(x)] = read_by.get(id(x), 0.0) + gain
    scaled = np.sqrt(s2)
    total = 0.0
    for key in group.members:
        high, low = _fold(stats[key].high, period) / scaled, _fold(stats[key].low, period, np.min) / scaled
        span = max(high.max(), -low.min(), 0.0) * 2 if symmetric else max(high.max(), 0.0) - min(low.min(), 0.0)
        step = span / (2**bits - 1)
        total += step**2 / 12 * read_by.get(key, float(np.mean(gains)))
    for (_, largest, count), (_, _, x) in zip(readers, group.readers.values(), strict=True):
        st = stats[id(x)]
        mean_square = _fold(st.squares / st.vectors, period, np.mean)
        steps = (largest * scaled).max(axis=1) / 127
        total += float((steps**2 / 12).sum() * (count * mean_square / s2).sum())
    return total


def _exact(group: _Group, wanted: np.ndarray, values: dict, dtypes: dict[int, np.dtype], period: int) -> np.ndarray:
    """``wanted`` clipped so that every divided and multiplied value stays exact in its type (``dtypes``; the
    biases float32)."""
    low, high = np.full(period, -np.inf), np.full(period, np.inf)
    float32 = np.dtype(np.float32)
    divided = [(values[id(w.value)], w.channel_axis or 0, dtypes[id(w.value)]) for w in group.producers.values()]
    divided += [
        (np.asarray(op.inputs[i].data, np.float64).reshape(-1, 1), 0, float32) for op, i in group.biases.values()
    ]
    for array, axis, dtype in divided:  # multiplied by 2**-e: -e within their exact steps
        lo, hi = exact_steps(array, axis, dtype)
        low, high = np.maximum(low, -_fold(hi, period, np.min)), np.minimum(high, -_fold(lo, period))
    for w, axis, _ in group.readers.values():
        lo, hi = exact_steps(values[id(w.value)], axis, dtypes[id(w.value)])
        low, high = np.maximum(low, _fold(lo, period)), np.minimum(high, _fold(hi, period, np.min))
    return np.clip(wanted, low, high).astype(np.int64)


def _scaled(array: np.ndarray, axis: int, exponents: np.ndarray) -> np.ndarray:
    shape = [1] * array.ndim
    shape[axis] = -1
    factors = np.exp2(np.tile(exponents, array.shape[axis] // exponents.size).astype(np.float64))
    return array * factors.reshape(shape)


def _apply(sg: Subgraph, group: _Group, exponents: np.ndarray, values: dict) -> None:
    for w in group.producers.values():
        values[id(w.value)] = _scaled(values[id(w.value)], w.channel_axis or 0, -exponents)
    consumers = sg.consumers()
    for op, index in group.biases.values():
        bias = op.inputs[index]
        data = np.asarray(bias.data, np.float64).reshape(-1)
        if not data.any():
            continue  # zeros stay zeros
        if len(consumers.get(id(bias), [])) > 1:  # shared: this op gets its own copy
            shared = bias
            bias = Tensor(f"{shared.name}/equalized", shared.shape, shared.type, shape_signature=shared.shape_signature)
            bias.buffer = Buffer.of(np.asarray(shared.data))
            sg.tensors.append(bias)
            op.inputs[index] = bias
        write_constant(bias, _scaled(data, 0, -exponents))
    for w, axis, _ in group.readers.values():
        values[id(w.value)] = _scaled(values[id(w.value)], axis, exponents)


def _summary(group: _Group, active: np.ndarray, exponents: np.ndarray, period: int) -> Smoothed:
    def spread(ranges: np.ndarray) -> float:
        positive = ranges[ranges > 0]
        return float(positive.max() / np.median(positive)) if positive.size else 1.0

    return Smoothed(
        producers=[w.name for w in group.producers.values()],
        tensors=len(group.members),
        readers=len(group.readers),
        period=period,
        channels=int(np.count_nonzero(exponents)),
        spread=(spread(active), spread(active * np.exp2(-exponents.astype(np.float64)))),
    )
