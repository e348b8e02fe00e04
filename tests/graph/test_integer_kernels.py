"""The full-integer columns of engine.graph.ops.RULES (``integer``, ``scales``, ``fixed_output``, ``integer_weights``,
``integer_options``, ``xnnpack_integer``, and ``BIAS_TYPES``, ``DENSIFY_INTEGER_READERS``) are what LiteRT 2.3
does, in both runtimes (``tests/runtimes.py``): the default interpreter (XNNPACK takes the int8 forms it has
kernels for, and refuses some forms the builtin kernels take or miscompute) and the builtin kernels alone.

Each op runs as a tiny one-op model, made integer here the way the integer quantization spec says: activations
int8 asymmetric per tensor, or int16 symmetric (zero point 0) for 16x8; weights int8 symmetric (zero point 0),
per channel along the table's channel axis or per tensor; the bias int32 (int8) or int64 (16x8) with scale
input_scale * weight_scale (one per weight scale); output parameters from the float op's range, the input's
("same") or the table's fixed ones.  The reference is the same op in float in LiteRT (builtin kernels).  A form is
right when its SQNR against the float output is at least RIGHT_DB (measured: >= 34.9 dB, the claimed forms
>= 39.0 dB in both runtimes), wrong below WRONG_DB (measured: <= 11.4 dB): nothing falls in between, so each form
is "right", "wrong" or the stage where the interpreter refuses it ("load", "prepare", "invoke").  Weights grow
geometrically along their channel axis, so one scale read for many channels is wrong, not merely coarse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from engine.format.builder import GraphBuilder
from engine.format.ir import TENSOR_TYPES, Model, Operator, QuantizationParams, Tensor
from engine.format.sparse import encode_sparse
from engine.format.writer import model_to_bytes
from engine.graph.ops import BIAS_TYPES, DENSIFY_INTEGER_READERS, RULES, dequantize_version, rule
from tests.runtimes import BOTH_RUNTIMES, Refused, delegate_partitions, invoked, run_model

RIGHT_DB = 30.0
WRONG_DB = 15.0
ACTIVATIONS = ("int8", "int16")
FLOAT32 = TENSOR_TYPES["FLOAT32"]
DTYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64}
LIMITS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
Params = tuple[float, int]

# The integer versions of tensorflow/lite/tools/versioning/op_version.cc for the forms written here (and by the
# engine): a bias, no fused activation, rank <= 4, 16x8 bias int64 with quantized_bias_type unset.  LiteRT runs
# every version up to max_version alike, so only this pins them.  16x8 CONV_2D, DEPTHWISE_CONV_2D and
# FULLY_CONNECTED are 1: op_version.cc's int16 test wants int16 weights.
OP_VERSION_CC = {
    "CONV_2D": {"int8": 3, "int16": 1}, "DEPTHWISE_CONV_2D": {"int8": 3, "int16": 1},
    "FULLY_CONNECTED": {"int8": 4, "int16": 1}, "TRANSPOSE_CONV": {"int8": 3, "int16": 3},
    "BATCH_MATMUL": {"int8": 2, "int16": 3}, "GATHER": {"int8": 2, "int16": 4}, "PRELU": {"int8": 1, "int16": 1},
    "ADD": {"int8": 2, "int16": 3}, "SUB": {"int8": 2, "int16": 5}, "MUL": {"int8": 2, "int16": 4},
    "DIV": {"int8": 1, "int16": 1}, "MAXIMUM": {"int8": 2, "int16": 4}, "MINIMUM": {"int8": 2, "int16": 4},
    "AVERAGE_POOL_2D": {"int8": 2, "int16": 3}, "MAX_POOL_2D": {"int8": 2, "int16": 3},
    "MEAN": {"int8": 2, "int16": 3}, "SOFTMAX": {"int8": 2, "int16": 3}, "RELU": {"int8": 2, "int16": 3},
    "RELU6": {"int8": 2, "int16": 3}, "RELU_N1_TO_1": {"int8": 1}, "LOGISTIC": {"int8": 2, "int16": 3},
    "TANH": {"int8": 2, "int16": 3}, "HARD_SWISH": {"int8": 1}, "LEAKY_RELU": {"int8": 1, "int16": 2},
    "QUANTIZE": {"int8": 1, "int16": 2}, "RESHAPE": {"int8": 1, "int16": 1},
    "CONCATENATION": {"int8": 2, "int16": 3}, "PAD": {"int8": 2, "int16": 3},
    "RESIZE_BILINEAR": {"int8": 2, "int16": 4}, "STRIDED_SLICE": {"int8": 2, "int16": 1},
    "TRANSPOSE": {"int8": 2, "int16": 5}, "SQUEEZE": {"int8": 1, "int16": 1}, "SLICE": {"int8": 2, "int16": 4},
    "DEPTH_TO_SPACE": {"int8": 2}, "SPLIT": {"int8": 2, "int16": 4},
}  # fmt: skip

# How the interpreter takes each (op, activations) the table does not claim.
UNCLAIMED = {
    ("CONV_3D", "int8"): "prepare", ("CONV_3D", "int16"): "prepare",  # float input only
    ("EMBEDDING_LOOKUP", "int8"): "prepare", ("EMBEDDING_LOOKUP", "int16"): "prepare",  # float output only
    ("RELU_N1_TO_1", "int16"): "invoke", ("HARD_SWISH", "int16"): "invoke",  # "only float32, uint8, int8"
    ("DEPTH_TO_SPACE", "int16"): "prepare",
    ("DEQUANTIZE", "int8"): "wrong", ("DEQUANTIZE", "int16"): "wrong",  # an integer output runs, garbage
    ("DENSIFY", "int8"): "prepare", ("DENSIFY", "int16"): "prepare",  # constant input only
}  # fmt: skip
# "same" ops that refuse other output (or input) parameters at prepare, per runtime; every other one computes
# garbage.  XNNPACK takes these int8 ops only with the output parameters of their input, and fails to prepare them
# otherwise (the builtin kernels copy the codes).
XNNPACK_SAME_OUTPUT = ("MAX_POOL_2D", "PAD", "RESIZE_BILINEAR", "TRANSPOSE", "SLICE", "DEPTH_TO_SPACE", "SPLIT")
SAME_REFUSED = {
    "builtin": {("CONCATENATION", "int8")},
    "default": {("CONCATENATION", "int8"), *((name, "int8") for name in XNNPACK_SAME_OUTPUT)},
}


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Case:
    """A one-op float model: graph inputs (name, shape, float or int32 ids) and the op built on them."""

    inputs: tuple[tuple[str, tuple[int, ...], type], ...]
    build: Callable[..., Tensor | list[Tensor]]
    low: float = -1.0
    high: float = 1.0
    identity: bool = False  # a type conversion: the float op cannot run, the reference is the input


def _graded(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Random values whose magnitude grows from 0.05 to 4 along ``axis``."""
    grade = np.geomspace(0.05, 4.0, shape[axis]).astype(np.float32)
    others = [i for i in range(len(shape)) if i != axis % len(shape)]
    return rng.uniform(-1, 1, shape).astype(np.float32) * np.expand_dims(grade, others)


def _uniform(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(np.float32)


F, I32 = np.float32, np.int32
X = (("x", (2, 16), F),)
AB = (("a", (2, 8), F), ("c", (2, 8), F))
IMAGE = (("x", (1, 4, 4, 3), F),)
IDS = (("ids", (4,), I32),)


def _binary(name: str) -> Case:
    return Case(AB, lambda b, r, a, c: b.op(name, [a, c], [(2, 8)], {"fused_activation_function": "NONE"})[0])


def _plain(name: str) -> Callable:
    return lambda b, r, x: b.op(name, [x], [x.shape])[0]


CASES: dict[str, Case] = {
    "CONV_2D": Case(
        (("x", (1, 5, 5, 3), F),), lambda b, r, x: b.conv2d(x, _graded(r, (4, 3, 3, 3), 0), _uniform(r, 4))
    ),
    "DEPTHWISE_CONV_2D": Case(
        (("x", (1, 5, 5, 4), F),), lambda b, r, x: b.depthwise_conv2d(x, _graded(r, (1, 3, 3, 4), 3), _uniform(r, 4))
    ),
    "FULLY_CONNECTED": Case(
        (("x", (3, 8), F),), lambda b, r, x: b.fully_connected(x, _graded(r, (6, 8), 0), _uniform(r, 6))
    ),
    "TRANSPOSE_CONV": Case(
        (("x", (1, 3, 3, 2), F),),
        lambda b, r, x: b.transpose_conv(x, _graded(r, (4, 3, 3, 2), 0), _uniform(r, 4), stride=2),
    ),
    "CONV_3D": Case(
        (("x", (1, 3, 4, 4, 2), F),), lambda b, r, x: b.conv3d(x, _graded(r, (2, 2, 2, 2, 3), 4), _uniform(r, 3))
    ),
    "BATCH_MATMUL": Case((("x", (2, 3, 4), F),), lambda b, r, x: b.batch_matmul(x, _graded(r, (4, 5), 1))),
    "EMBEDDING_LOOKUP": Case(IDS, lambda b, r, ids: b.embedding_lookup(ids, _graded(r, (6, 4), 0))),
    "GATHER": Case(IDS, lambda b, r, ids: b.gather(_graded(r, (6, 4), 0), ids)),
    "PRELU": Case(IMAGE, lambda b, r, x: b.prelu(x, np.array([0.05, 0.4, 2.0], F)), -2, 2),
    "ADD": _binary("ADD"),
    "SUB": _binary("SUB"),
    "MUL": _binary("MUL"),
    "DIV": Case(AB, _binary("DIV").build, 0.5, 2),
    "MAXIMUM": Case(AB, lambda b, r, a, c: b.op("MAXIMUM", [a, c], [(2, 8)])[0]),
    "MINIMUM": Case(AB, lambda b, r, a, c: b.op("MINIMUM", [a, c], [(2, 8)])[0]),
    "AVERAGE_POOL_2D": Case(IMAGE, lambda b, r, x: b.average_pool2d(x, 2)),
    "MAX_POOL_2D": Case(IMAGE, lambda b, r, x: b.max_pool2d(x, 2)),
    "MEAN": Case(
        IMAGE, lambda b, r, x: b.op("MEAN", [x, np.array([1, 2], I32)], [(1, 1, 1, 3)], {"keep_dims": True})[0]
    ),
    "SOFTMAX": Case(X, lambda b, r, x: b.softmax(x), -4, 4),
    "RELU": Case(X, lambda b, r, x: b.relu(x), -4, 4),
    "RELU6": Case(X, lambda b, r, x: b.relu6(x), -2, 8),
    "RELU_N1_TO_1": Case(X, _plain("RELU_N1_TO_1"), -2, 2),
    "LOGISTIC": Case(X, lambda b, r, x: b.logistic(x), -6, 6),
    "TANH": Case(X, lambda b, r, x: b.tanh(x), -3, 3),
    "HARD_SWISH": Case(X, lambda b, r, x: b.hard_swish(x), -4, 4),
    "LEAKY_RELU": Case(X, lambda b, r, x: b.leaky_relu(x, 0.2), -4, 4),
    "QUANTIZE": Case(X, _plain("QUANTIZE"), identity=True),
    "DEQUANTIZE": Case(X, _plain("DEQUANTIZE"), identity=True),
    "DENSIFY": Case(X, _plain("DENSIFY"), identity=True),
    "RESHAPE": Case(X, lambda b, r, x: b.reshape(x, (4, 8))),
    "CONCATENATION": Case((("a", (2, 3), F), ("c", (2, 5), F)), lambda b, r, a, c: b.concatenation([a, c], 1)),
    "PAD": Case(
        (("x", (1, 3, 3, 2), F),),
        lambda b, r, x: b.op("PAD", [x, np.array([[0, 0], [1, 1], [1, 1], [0, 0]], I32)], [(1, 5, 5, 2)])[0],
        0.2,  # all positive, so the zero padding is inside the range but not its end
    ),
    "RESIZE_BILINEAR": Case(
        (("x", (1, 3, 3, 2), F),),
        lambda b, r, x: b.op("RESIZE_BILINEAR", [x, np.array([5, 5], I32)], [(1, 5, 5, 2)])[0],
    ),
    "STRIDED_SLICE": Case(
        (("x", (4, 6), F),),
        lambda b, r, x: b.op("STRIDED_SLICE", [x, *(np.array(v, I32) for v in ([1, 0], [3, 6], [1, 2]))], [(2, 3)])[0],
    ),
    "TRANSPOSE": Case(
        (("x", (2, 3, 4), F),), lambda b, r, x: b.op("TRANSPOSE", [x, np.array([2, 0, 1], I32)], [(4, 2, 3)])[0]
    ),
    "SQUEEZE": Case(
        (("x", (1, 3, 1, 4), F),), lambda b, r, x: b.op("SQUEEZE", [x], [(3, 4)], {"squeeze_dims": [0, 2]})[0]
    ),
    "SLICE": Case(
        (("x", (4, 6), F),),
        lambda b, r, x: b.op("SLICE", [x, np.array([1, 2], I32), np.array([2, 3], I32)], [(2, 3)])[0],
    ),
    "DEPTH_TO_SPACE": Case(
        (("x", (1, 2, 2, 8), F),), lambda b, r, x: b.op("DEPTH_TO_SPACE", [x], [(1, 4, 4, 2)], {"block_size": 2})[0]
    ),
    "SPLIT": Case(
        (("x", (2, 6), F),),
        lambda b, r, x: b.op("SPLIT", [np.array(1, I32), x], [(2, 3), (2, 3)], {"num_splits": 2}, dtype=F),
    ),
}


def _make(case: Case) -> tuple[Model, list[np.ndarray]]:
    """The float model and its feeds (uniform in [low, high]; ids a permutation of four of the six rows)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    tensors = [b.input(name, shape, dtype) for name, shape, dtype in case.inputs]
    feeds = [
        np.array([3, 0, 5, 1], I32) if dtype is I32 else rng.uniform(case.low, case.high, shape).astype(F)
        for _, shape, dtype in case.inputs
    ]
    outputs = case.build(b, rng, *tensors)
    for i, t in enumerate(outputs if isinstance(outputs, list) else [outputs]):
        b.output(t, f"y{i}")
    return b.build(), feeds


# ------------------------------------------------------------------------------------------------ running


def _invoke(model: Model, feeds: Sequence[np.ndarray], runtime: str) -> list[np.ndarray]:
    """The outputs of ``model`` on ``feeds`` (in input order); ``Refused`` names the stage that failed."""
    named = {t.name: x for t, x in zip(model.main.inputs, feeds, strict=True)}
    return list(run_model(model_to_bytes(model), named, runtime).values())


def _sqnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    noise = float(np.sum((ref - cand) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref**2)) / noise)


def _params(activations: str, values: np.ndarray) -> Params:
    """Spec parameters covering ``values`` and 0: int8 asymmetric, int16 symmetric."""
    lo, hi = min(float(np.min(values)), 0.0), max(float(np.max(values)), 0.0)
    if activations == "int16":
        return max(-lo, hi) / 32767, 0
    qmin, qmax = LIMITS[activations]
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(np.clip(round(qmin - lo / scale), qmin, qmax))


def _stretched(activations: str, values: np.ndarray) -> Params:
    """Parameters for twice the range of ``values``: a different scale (and zero point), nothing clipped."""
    lo, hi = min(float(np.min(values)), 0.0), max(float(np.max(values)), 0.0)
    return _params(activations, np.array([2 * lo, 2 * hi]))


def _quantization(scale: np.ndarray | float, zero_point: np.ndarray | int, axis: int = 0) -> QuantizationParams:
    scale = np.asarray(scale, np.float32).reshape(-1)
    zero_point = np.broadcast_to(np.asarray(zero_point, np.int64), scale.shape).copy()
    return QuantizationParams(scale, zero_point, quantized_dimension=axis)


def _quantize(x: np.ndarray, params: Params, activations: str) -> np.ndarray:
    qmin, qmax = LIMITS[activations]
    return np.clip(np.rint(x / params[0]) + params[1], qmin, qmax).astype(DTYPES[activations])


def _symmetric(w: np.ndarray, axis: int | None, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes of ``w`` in [-qmax, qmax] and their scales (one, or one per slice along ``axis``)."""
    others = None if axis is None else tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.abs(w).max(axis=others, keepdims=True), 1e-12) / qmax
    return np.clip(np.rint(w / scale), -qmax, qmax), scale


@dataclass
class Integer:
    """The one-op model made integer, with the parameters of its float inputs and its outputs."""

    model: Model
    inputs: list[Params]
    outputs: list[Params]


def integerize(
    model: Model,
    activations: str,
    feeds: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    *,
    inputs: Sequence[Params] | None = None,
    outputs: Sequence[Params] | None = None,
    granularity: str | None = None,
    weight_type: str = "int8",
    bias_type: str | None = None,
    bias_scale_per_channel: bool = False,
    options: dict | None = None,
    version: int | None = None,
) -> Integer:
    """Turn the one-op float ``model`` integer in place, as the table says unless told otherwise."""
    graph = model.main
    (op,) = graph.operators
    r = rule(op.name)
    code = TENSOR_TYPES[activations.upper()]
    floats = [(t, x) for t, x in zip(graph.inputs, feeds, strict=True) if t.type == FLOAT32]
    if inputs is None:  # "same": one set of parameters for every float input
        values = [x for _, x in floats]
        if r.scales == "same" and values:
            values = [np.concatenate([x.ravel() for x in values])] * len(values)
        inputs = [_params(activations, x) for x in values]
    for (t, _), p in zip(floats, inputs, strict=True):
        t.type, t.quantization = code, _quantization(*p)
    weight = op.inputs[r.weight_input] if r.weight_input is not None else None
    weight = weight if weight is not None and weight.type == FLOAT32 and weight.is_constant else None
    shared = None
    if weight is not None:
        w = weight.data.astype(np.float64)
        axis = r.channel_axis(op.builtin_options) % w.ndim if (granularity or r.integer_weights) == "channel" else None
        if r.scales == "same":  # GATHER copies its params' codes: they are quantized like the output
            if axis is None:
                shared = _params(activations, w)
                codes, scale, zero = _quantize(w, shared, activations), shared[0], shared[1]
            else:
                codes, scale = _symmetric(w, axis, LIMITS[activations][1])
                zero, shared = 0, (float(scale.ravel()[0]), 0)
            weight.data = codes.astype(DTYPES[activations])
        else:
            codes, scale = _symmetric(w, axis, LIMITS[weight_type][1])
            zero = 0
            weight.data = codes.astype(DTYPES[weight_type])
        weight.quantization = _quantization(scale, zero, axis or 0)
        weight_scale = np.asarray(scale, np.float64).reshape(-1)
    if outputs is None:
        if r.scales == "same":
            outputs = [inputs[0] if inputs else shared] * len(graph.outputs)
        elif r.scales == "fixed":
            outputs = [r.fixed_params(activations)]
        else:
            outputs = [_params(activations, y) for y in reference]
    for t, p in zip(graph.outputs, outputs, strict=True):
        t.type, t.quantization = code, _quantization(*p)
    bias = op.inputs[r.bias_input] if r.bias_input is not None else None
    if bias is not None:
        scale = inputs[0][0] * (np.broadcast_to(weight_scale, bias.shape) if bias_scale_per_channel else weight_scale)
        codes = np.rint(bias.data / np.broadcast_to(scale, bias.shape))
        bias.data = codes.astype(DTYPES[(bias_type or BIAS_TYPES[activations]).lower()])
        bias.quantization = _quantization(scale, 0)
    op.opcode.version = version if version is not None else r.integer_version(activations) or 1
    changes = r.options_for(activations) if options is None else options
    if changes:
        op.builtin_options.fields.update(changes)
    return Integer(model, list(inputs), list(outputs))


def _reference(case: Case) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The feeds and the float op's outputs (the input itself for a type conversion)."""
    model, feeds = _make(case)
    return feeds, ([feeds[0]] if case.identity else _invoke(model, feeds, "builtin"))


def _through_densify(model: Model) -> None:
    """The one op's constant weight stored sparse (TFLite's format, quantization kept) behind a DENSIFY."""
    op = model.main.operators[0]
    weight = op.inputs[rule(op.name).weight_input]
    values, sparsity = encode_sparse(weight.data)
    stored = Tensor(f"{weight.name}/sparse", weight.shape, weight.type, quantization=weight.quantization)
    stored.data, stored.shape, stored.sparsity = values, weight.shape, sparsity
    weight.buffer = None
    model.main.insert_operator(0, Operator(model.opcode("DENSIFY"), [model.main.add_tensor(stored)], [weight]))


def _integer(
    op_name: str, activations: str, *, through_densify: bool = False, **changes: object
) -> tuple[Integer, list[np.ndarray], list[np.ndarray]]:
    """The op made integer (``changes``: departures from the table; its weight read through DENSIFY if asked), its
    feeds quantized, and the float op's outputs."""
    case = CASES[op_name]
    feeds, reference = _reference(case)
    model, _ = _make(case)
    integer = integerize(model, activations, feeds, reference, **changes)
    if through_densify:
        _through_densify(model)
    floats = iter(integer.inputs)
    quantized = [x if t.type == TENSOR_TYPES["INT32"] else _quantize(x, next(floats), activations)
                 for t, x in zip(model.main.inputs, feeds, strict=True)]  # fmt: skip
    return integer, quantized, reference


def measure(op_name: str, activations: str, runtime: str, **changes: object) -> float:
    """The SQNR (dB) of the op made integer (``changes``: departures from the table), run in ``runtime``, against
    the float op (builtin kernels); raises Refused when the interpreter does not take it."""
    integer, quantized, reference = _integer(op_name, activations, **changes)
    got = _invoke(integer.model, quantized, runtime)
    return min(
        _sqnr(ref, (out.astype(np.float64) - zero) * scale)
        for ref, out, (scale, zero) in zip(reference, got, integer.outputs, strict=True)
    )


def outcome(op_name: str, activations: str, runtime: str, **changes: object) -> str:
    """The form's fate in ``runtime``: "right", "wrong" or the stage that refuses it ("between": neither, never
    measured)."""
    try:
        db = measure(op_name, activations, runtime, **changes)
    except Refused as exc:
        return exc.stage
    return "right" if db >= RIGHT_DB else "wrong" if db < WRONG_DB else f"between ({db:.1f} dB)"


# ------------------------------------------------------------------------------------------------ tests

CLAIMED = [(name, a) for name, r in RULES.items() for a in ACTIVATIONS if r.integer_version(a) is not None]
UNCLAIMED_FORMS = [(name, a) for name, r in RULES.items() for a in ACTIVATIONS if r.integer_version(a) is None]
# Claimed forms measured >= 39.0 dB (int8) and >= 42.8 dB (16x8, its int8 weights the limit).
CLAIMED_FLOOR_DB = {"int8": 35.0, "int16": 40.0}
WEIGHTED = [(n, a) for n, a in CLAIMED if RULES[n].weight_input is not None]
BIASED = [(n, a) for n, a in CLAIMED if RULES[n].bias_input is not None]


def _ids(forms: Sequence[tuple]) -> list[str]:
    return ["-".join(str(v) for v in form) for form in forms]


def test_every_op_has_a_case() -> None:
    assert set(CASES) == set(RULES)


def test_versions_are_the_converters() -> None:
    assert {name: dict(r.integer) for name, r in RULES.items() if r.integer} == OP_VERSION_CC
    assert all(v <= RULES[name].max_version for name, versions in OP_VERSION_CC.items() for v in versions.values())


@pytest.mark.parametrize(("name", "activations"), CLAIMED, ids=_ids(CLAIMED))
@BOTH_RUNTIMES
def test_claimed_kernel_is_right(name: str, activations: str, runtime: str) -> None:
    """The form the table claims (its version, weights, bias, output parameters, options) loads and is right."""
    assert measure(name, activations, runtime) >= CLAIMED_FLOOR_DB[activations]


@pytest.mark.parametrize(("name", "activations"), UNCLAIMED_FORMS, ids=_ids(UNCLAIMED_FORMS))
@BOTH_RUNTIMES
def test_unclaimed_kernel_is_refused_or_wrong(name: str, activations: str, runtime: str) -> None:
    assert set(UNCLAIMED_FORMS) == set(UNCLAIMED)
    assert outcome(name, activations, runtime) == UNCLAIMED[(name, activations)]


# Measured: the claimed int8 forms XNNPACK leaves to the builtin kernels in the default runtime, so a graph of them
# splits into partitions around each.  ``xnnpack_integer`` marks PRELU alone (the engine keeps it float in CPU
# models); the others it makes integer.
XNNPACK_LEAVES_INT8 = {
    "AVERAGE_POOL_2D", "DIV", "GATHER", "HARD_SWISH", "MAXIMUM", "MINIMUM", "PRELU", "RELU", "RELU6", "RELU_N1_TO_1",
    "SOFTMAX", "SQUEEZE", "STRIDED_SLICE",
}  # fmt: skip
INT8_CLAIMED = [name for name, a in CLAIMED if a == "int8"]


@pytest.mark.parametrize("name", INT8_CLAIMED)
def test_which_int8_kernels_xnnpack_takes(name: str) -> None:
    integer, quantized, _ = _integer(name, "int8")
    feeds = {t.name: x for t, x in zip(integer.model.main.inputs, quantized, strict=True)}
    taken = delegate_partitions(invoked(model_to_bytes(integer.model), feeds, "default")) > 0
    assert taken == (name not in XNNPACK_LEAVES_INT8)
    assert RULES[name].xnnpack_integer or not taken


def _shared_values(name: str) -> np.ndarray:
    """Every value the float inputs of a "same" op take (GATHER: its params), which one set of parameters covers."""
    model, feeds = _make(CASES[name])
    values = [x.ravel() for t, x in zip(model.main.inputs, feeds, strict=True) if t.type == FLOAT32]
    if not values:
        values = [model.main.operators[0].inputs[RULES[name].weight_input].data.ravel()]
    return np.concatenate(values)


def _same_expected(name: str, activations: str, runtime: str) -> str:
    return "prepare" if (name, activations) in SAME_REFUSED[runtime] else "wrong"


RESCALING = [(n, a) for n, a in CLAIMED if RULES[n].scales != "fixed"]


@pytest.mark.parametrize(("name", "activations"), RESCALING, ids=_ids(RESCALING))
@BOTH_RUNTIMES
def test_output_parameters(name: str, activations: str, runtime: str) -> None:
    """An output whose range is twice the one the table gives it: "own" ops rescale; "same" ops copy or compare
    codes, so they compute garbage (or refuse it)."""
    _, reference = _reference(CASES[name])
    if RULES[name].scales == "same":
        outputs = [_stretched(activations, _shared_values(name))] * len(reference)
        expected = _same_expected(name, activations, runtime)
    else:
        outputs, expected = [_stretched(activations, y) for y in reference], "right"
    assert outcome(name, activations, runtime, outputs=outputs) == expected


MULTI_INPUT = [(n, a) for n, a in CLAIMED if sum(dtype is F for _, _, dtype in CASES[n].inputs) > 1]


@pytest.mark.parametrize(("name", "activations"), MULTI_INPUT, ids=_ids(MULTI_INPUT))
@BOTH_RUNTIMES
def test_input_parameters(name: str, activations: str, runtime: str) -> None:
    """The second input's range twice the first's: "own" ops rescale each input, "same" ops do not."""
    feeds, _ = _reference(CASES[name])
    if RULES[name].scales == "same":
        shared = _params(activations, _shared_values(name))
        changes = {"inputs": [shared, _stretched(activations, _shared_values(name))], "outputs": [shared]}
        expected = _same_expected(name, activations, runtime)
    else:
        changes, expected = {"inputs": [_params(activations, feeds[0]), _stretched(activations, feeds[1])]}, "right"
    assert outcome(name, activations, runtime, **changes) == expected


# How each fixed-output kernel takes the parameters of the float op's own output range instead, in the builtin
# kernels; the default runtime does the same but for int8 LOGISTIC, which XNNPACK runs right with any output
# parameters (the fixed ones are still what the builtin kernel needs).
OWN_OUTPUT = {
    ("SOFTMAX", "int8"): "prepare", ("SOFTMAX", "int16"): "prepare",  # "not near 1/256", "not near 1/32768"
    ("LOGISTIC", "int8"): "prepare", ("LOGISTIC", "int16"): "prepare",  # scale == 1/256, 1/32768 exactly
    ("TANH", "int8"): "right",  # its lookup table is built for the output parameters it is given
    ("TANH", "int16"): "prepare",  # the scale must round to 2^-15
}  # fmt: skip
XNNPACK_OWN_OUTPUT = {("LOGISTIC", "int8"): "right"}
FIXED = [(n, a) for n, a in CLAIMED if RULES[n].scales == "fixed"]


@pytest.mark.parametrize(("name", "activations"), FIXED, ids=_ids(FIXED))
@BOTH_RUNTIMES
def test_fixed_output(name: str, activations: str, runtime: str) -> None:
    assert set(FIXED) == set(OWN_OUTPUT)
    _, reference = _reference(CASES[name])
    expected = OWN_OUTPUT[(name, activations)]
    if runtime == "default":
        expected = XNNPACK_OWN_OUTPUT.get((name, activations), expected)
    assert outcome(name, activations, runtime, outputs=[_params(activations, reference[0])]) == expected


# The fixed scale with another zero point: refused, except int8 LOGISTIC, which assumes -128 without checking.
FIXED_ZERO_POINTS = [
    ("SOFTMAX", "int8", (1 / 256, 0), "prepare"), ("LOGISTIC", "int8", (1 / 256, 0), "wrong"),
    ("SOFTMAX", "int16", (1 / 32768, 3), "prepare"), ("LOGISTIC", "int16", (1 / 32768, 3), "prepare"),
    ("TANH", "int16", (1 / 32768, 3), "prepare"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "activations", "params", "expected"), FIXED_ZERO_POINTS, ids=_ids(FIXED_ZERO_POINTS))
@BOTH_RUNTIMES
def test_fixed_zero_point(name: str, activations: str, params: Params, expected: str, runtime: str) -> None:
    assert params[0] == RULES[name].fixed_params(activations)[0]
    assert outcome(name, activations, runtime, outputs=[params]) == expected


GRANULAR = [(n, a, g) for n, a in WEIGHTED for g in ("tensor", "channel")]


@pytest.mark.parametrize(("name", "activations", "granularity"), GRANULAR, ids=_ids(GRANULAR))
@BOTH_RUNTIMES
def test_weight_granularity(name: str, activations: str, granularity: str, runtime: str) -> None:
    """Ops marked "channel" read per-channel and per-tensor weights right; "tensor" ones read one scale for all
    channels (BATCH_MATMUL: all zeros, PRELU: one alpha scale, GATHER: one output scale for every row)."""
    right = granularity == "tensor" or RULES[name].integer_weights == "channel"
    assert outcome(name, activations, runtime, granularity=granularity) == ("right" if right else "wrong")


# Measured: XNNPACK refuses (fails to prepare) an int8 CONV_2D, DEPTHWISE_CONV_2D or TRANSPOSE_CONV whose per-tensor
# weight comes with a bias listing one (equal) scale per channel; the builtin kernels, and XNNPACK's int8
# FULLY_CONNECTED, read it right.  The spec's bias has one scale per weight scale, which every runtime takes.
XNNPACK_ONE_BIAS_SCALE = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"}
TENSOR_WEIGHTED = [(n, a) for n, a in BIASED if a == "int8"]


@pytest.mark.parametrize(("name", "activations"), TENSOR_WEIGHTED, ids=_ids(TENSOR_WEIGHTED))
@BOTH_RUNTIMES
def test_a_per_tensor_weight_wants_one_bias_scale_in_xnnpack(name: str, activations: str, runtime: str) -> None:
    refused = runtime == "default" and name in XNNPACK_ONE_BIAS_SCALE
    fate = outcome(name, activations, runtime, granularity="tensor", bias_scale_per_channel=True)
    assert fate == ("prepare" if refused else "right")


# How an integer weighted op takes its weight (int8 codes; GATHER's params in the activation type) through DENSIFY,
# where that is not right: XNNPACK claims an int8 FULLY_CONNECTED and fails to prepare it; int16 GATHER refuses a
# computed params tensor.  ``DENSIFY_INTEGER_READERS`` claims CONV_2D; the other ops are right in both runtimes too.
THROUGH_DENSIFY = {
    ("FULLY_CONNECTED", "int8", "default"): "prepare",
    ("GATHER", "int16", "builtin"): "invoke",
    ("GATHER", "int16", "default"): "invoke",
}


@pytest.mark.parametrize(("name", "activations"), WEIGHTED, ids=_ids(WEIGHTED))
@BOTH_RUNTIMES
def test_integer_weights_through_densify(name: str, activations: str, runtime: str) -> None:
    expected = THROUGH_DENSIFY.get((name, activations, runtime), "right")
    assert name not in DENSIFY_INTEGER_READERS or expected == "right"
    assert outcome(name, activations, runtime, through_densify=True) == expected


@pytest.mark.parametrize("activations", ACTIVATIONS)
@BOTH_RUNTIMES
def test_prelu_alpha_is_int8(activations: str, runtime: str) -> None:
    assert outcome("PRELU", activations, runtime, weight_type="int16") == "wrong"


# How each weighted op takes each bias type (16x8 with quantized_bias_type unset).
BIAS = {
    ("CONV_2D", "int8"): {"int32": "right", "int64": "prepare"},
    ("CONV_2D", "int16"): {"int32": "wrong", "int64": "right"},
    ("DEPTHWISE_CONV_2D", "int8"): {"int32": "right", "int64": "prepare"},
    ("DEPTHWISE_CONV_2D", "int16"): {"int32": "prepare", "int64": "right"},
    ("FULLY_CONNECTED", "int8"): {"int32": "right", "int64": "wrong"},
    ("FULLY_CONNECTED", "int16"): {"int32": "right", "int64": "right"},
    ("TRANSPOSE_CONV", "int8"): {"int32": "right", "int64": "prepare"},
    ("TRANSPOSE_CONV", "int16"): {"int32": "wrong", "int64": "right"},
}
BIAS_FORMS = [(n, a, b) for n, a in BIASED for b in ("int32", "int64")]


@pytest.mark.parametrize(("name", "activations", "bias"), BIAS_FORMS, ids=_ids(BIAS_FORMS))
@BOTH_RUNTIMES
def test_bias_type(name: str, activations: str, bias: str, runtime: str) -> None:
    assert set(BIASED) == set(BIAS)
    assert BIAS[(name, activations)][BIAS_TYPES[activations].lower()] == "right"
    assert outcome(name, activations, runtime, bias_type=bias) == BIAS[(name, activations)][bias]


# op_version.cc's version for 16x8 with quantized_bias_type set, which makes an int32 bias read right.
QUANTIZED_BIAS_VERSIONS = {"CONV_2D": 8, "TRANSPOSE_CONV": 5, "FULLY_CONNECTED": 11}


@pytest.mark.parametrize("name", sorted(QUANTIZED_BIAS_VERSIONS))
@BOTH_RUNTIMES
def test_int16_int32_bias_with_quantized_bias_type(name: str, runtime: str) -> None:
    version = QUANTIZED_BIAS_VERSIONS[name]
    assert version <= RULES[name].max_version
    options = {"quantized_bias_type": TENSOR_TYPES["INT32"]}
    assert outcome(name, "int16", runtime, bias_type="int32", options=options, version=version) == "right"


POT_OPTION = [n for n, r in RULES.items() if r.options_for("int16")]


@pytest.mark.parametrize("name", POT_OPTION)
@BOTH_RUNTIMES
def test_int16_pot_scale_option(name: str, runtime: str) -> None:
    """int16 ADD/SUB: with pot_scale_int16 true and power-of-two scales the shift-only path refuses inputs whose
    shifts both differ from the output's; false rescales them; non-power-of-two scales rescale either way."""
    assert POT_OPTION == ["ADD", "SUB"]
    assert RULES[name].options_for("int16") == {"pot_scale_int16": False} and not RULES[name].options_for("int8")
    pot = {"inputs": [(2**-12, 0)] * 2, "outputs": [(2**-11, 0)]}
    assert outcome(name, "int16", runtime, options={"pot_scale_int16": True}, **pot) == "prepare"
    assert outcome(name, "int16", runtime, **pot) == "right"
    assert outcome(name, "int16", runtime, options={"pot_scale_int16": True}) == "right"


def _conversion(name: str, source: str, target: str, runtime: str, zero_point: int = 0) -> str:
    """How ``name`` converts (2, 8) values in [-1, 1] from ``source`` to ``target`` (each float32, uint8, int8 or
    int16 with parameters of its own: the target's range twice the source's); int16 sources get ``zero_point``."""
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8)).astype(F)
    b = GraphBuilder()
    t = b.input("x", x.shape, F if source == "float32" else DTYPES[source])
    y = b.output(b.op(name, [t], [x.shape], dtype=F if target == "float32" else DTYPES[target])[0], "y")
    feed, params = x, None
    if source != "float32":
        scale, zero = _params(source, x)
        zero = zero_point if source == "int16" else zero
        t.quantization, feed = _quantization(scale, zero), _quantize(x, (scale, zero), source)
    if target != "float32":
        params = _stretched(target, x)
        y.quantization = _quantization(*params)
    if name == "QUANTIZE":
        b.model.operator_codes[0].version = rule(name).integer_version(target) or 1  # uint8: 1
    else:
        b.model.operator_codes[0].version = dequantize_version(source.upper(), per_channel=False)
    try:
        (out,) = _invoke(b.build(), [feed], runtime)
    except Refused as exc:
        return exc.stage
    got = out.astype(np.float64) if params is None else (out.astype(np.float64) - params[1]) * params[0]
    return "right" if _sqnr(x, got) >= RIGHT_DB else "wrong"


QUANTIZE_FORMS = [(s, t) for s in ("float32", "uint8", "int8", "int16") for t in ("uint8", "int8", "int16")]


@pytest.mark.parametrize(("source", "target"), QUANTIZE_FORMS, ids=_ids(QUANTIZE_FORMS))
@BOTH_RUNTIMES
def test_quantize_converts(source: str, target: str, runtime: str) -> None:
    """QUANTIZE quantizes float, requantizes int8 -> int8 and int16 -> int16, and converts between the types but
    int16 -> uint8 (refused)."""
    expected = "prepare" if (source, target) == ("int16", "uint8") else "right"
    assert _conversion("QUANTIZE", source, target, runtime) == expected


@pytest.mark.parametrize("source", ["uint8", "int8", "int16"])
@BOTH_RUNTIMES
def test_dequantize_reads(source: str, runtime: str) -> None:
    assert _conversion("DEQUANTIZE", source, "float32", runtime) == "right"


@BOTH_RUNTIMES
def test_dequantize_int16_needs_zero_point_0(runtime: str) -> None:
    assert _conversion("DEQUANTIZE", "int16", "float32", runtime, zero_point=3) == "prepare"
