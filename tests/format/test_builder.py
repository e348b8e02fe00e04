"""GraphBuilder models round-trip losslessly, run in LiteRT, and compute what numpy says they should."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from engine import model_to_bytes, read_model, structural_diff
from engine.errors import EngineError
from engine.format.builder import GraphBuilder
from engine.format.ir import BUILTIN_OPS, Model
from engine.format.schema import TABLES, UNIONS
from engine.graph.ops import RULES, rule
from tests.runtimes import BOTH_RUNTIMES, RUNTIMES, run_model
from tests.strategies import graphs

RNG = np.random.default_rng(0)


def _random(*shape: int) -> np.ndarray:
    return RNG.uniform(-1, 1, shape).astype(np.float32)


def _inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.uniform(-1, 1, t.shape).astype(np.float32) for t in model.main.inputs}


def _run(model: Model, runtime: str, **inputs: np.ndarray) -> np.ndarray:
    """The model's first output on ``inputs`` in ``runtime``."""
    return next(iter(run_model(model_to_bytes(model), inputs, runtime).values()))


# ------------------------------------------------------------------------------------ random graphs


@settings(max_examples=150, deadline=None)
@given(graphs())
def test_generated_models_round_trip(model: Model) -> None:
    names = [t.name for t in model.main.tensors]
    assert len(names) == len(set(names))
    first = read_model(model_to_bytes(model))
    assert structural_diff(model, first) == []
    assert structural_diff(first, read_model(model_to_bytes(first))) == []


@settings(max_examples=150, deadline=None)
@given(graphs())
def test_generated_models_run_identically_after_rewrite(model: Model) -> None:
    original = model_to_bytes(model)
    rewritten = model_to_bytes(read_model(original))
    inputs = _inputs(model)
    for runtime in RUNTIMES:
        before, after = run_model(original, inputs, runtime), run_model(rewritten, inputs, runtime)
        assert list(before) == list(after) == [t.name for t in model.main.outputs]
        for name, value in before.items():
            assert value.shape == model.main.outputs[list(before).index(name)].shape
            assert np.all(np.isfinite(value)), (runtime, name)
            assert np.array_equal(value, after[name]), (runtime, name)


# ------------------------------------------------------------------------------------ numpy references


def _patches(x: np.ndarray, k: tuple[int, int], stride: int, dilation: int, padding: str, fill: float = 0.0):
    """[N, OH, OW, KH, KW, C] windows of NHWC ``x``, padded as TFLite pads (extra cell at the end for SAME)."""
    n, h, w, c = x.shape
    eff = [(kk - 1) * dilation + 1 for kk in k]
    if padding == "SAME":
        out = [-(-h // stride), -(-w // stride)]
        pads = [max((o - 1) * stride + e - size, 0) for o, e, size in zip(out, eff, (h, w), strict=True)]
    else:
        out = [(size - e) // stride + 1 for e, size in zip(eff, (h, w), strict=True)]
        pads = [0, 0]
    x = np.pad(x, [(0, 0), (pads[0] // 2, pads[0] - pads[0] // 2), (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)],
               constant_values=fill)  # fmt: skip
    result = np.empty((n, *out, *k, c), x.dtype)
    for i in range(out[0]):
        for j in range(out[1]):
            rows = slice(i * stride, i * stride + eff[0], dilation)
            cols = slice(j * stride, j * stride + eff[1], dilation)
            result[:, i, j] = x[:, rows, cols]
    return result


@pytest.mark.parametrize(
    ("shape", "stride", "dilation", "padding", "activation"),
    [((1, 7, 6, 3), 2, 1, "SAME", None), ((2, 8, 9, 2), 1, 2, "VALID", "RELU6"), ((1, 5, 5, 4), 3, 1, "SAME", "RELU")],
)
@BOTH_RUNTIMES
def test_conv2d_matches_numpy(shape, stride, dilation, padding, activation, runtime: str) -> None:
    w, bias = _random(5, 3, 2, shape[3]), _random(5)
    b = GraphBuilder()
    b.output(b.conv2d(b.input("x", shape), w, bias, stride, padding, activation, dilation))
    x = _random(*shape)
    expected = np.einsum("nhwijc,oijc->nhwo", _patches(x, (3, 2), stride, dilation, padding), w) + bias
    if activation:
        expected = np.clip(expected, 0, 6 if activation == "RELU6" else None)
    got = _run(b.build(), runtime, x=x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("multiplier", "stride", "padding"), [(1, 1, "SAME"), (2, 2, "VALID"), (3, 2, "SAME")])
@BOTH_RUNTIMES
def test_depthwise_conv2d_matches_numpy(multiplier: int, stride: int, padding: str, runtime: str) -> None:
    shape = (1, 6, 7, 2)
    w = _random(1, 3, 3, 2 * multiplier)
    b = GraphBuilder()
    b.output(b.depthwise_conv2d(b.input("x", shape), w, None, stride, padding, multiplier))
    x = _random(*shape)
    per_channel = w[0].reshape(3, 3, 2, multiplier)
    expected = np.einsum("nhwijc,ijcm->nhwcm", _patches(x, (3, 3), stride, 1, padding), per_channel)
    got = _run(b.build(), runtime, x=x)
    np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-5)
    assert got.shape == (*expected.shape[:3], 2 * multiplier)


@pytest.mark.parametrize(("size", "stride", "padding"), [(2, 2, "VALID"), (3, 2, "SAME"), (3, 1, "SAME")])
@BOTH_RUNTIMES
def test_pools_match_numpy(size: int, stride: int, padding: str, runtime: str) -> None:
    shape = (1, 7, 5, 3)
    b = GraphBuilder()
    x = b.input("x", shape)
    b.output(b.max_pool2d(x, size, stride, padding), "max")
    b.output(b.average_pool2d(x, size, stride, padding), "avg")
    data = _random(*shape)
    got = run_model(model_to_bytes(b.build()), {"x": data}, runtime)
    window = (size, size)
    np.testing.assert_array_equal(got["max"], _patches(data, window, stride, 1, padding, -np.inf).max(axis=(3, 4)))
    total = _patches(data, window, stride, 1, padding).sum(axis=(3, 4))
    count = _patches(np.ones_like(data), window, stride, 1, padding).sum(axis=(3, 4))  # SAME: valid cells only
    np.testing.assert_allclose(got["avg"], total / count, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep_num_dims", [False, True])
@BOTH_RUNTIMES
def test_fully_connected_matches_numpy(keep_num_dims: bool, runtime: str) -> None:
    w, bias = _random(5, 4), _random(5)
    b = GraphBuilder()
    b.output(b.fully_connected(b.input("x", (2, 3, 4)), w, bias, keep_num_dims=keep_num_dims))
    x = _random(2, 3, 4)
    got = _run(b.build(), runtime, x=x)
    expected = x @ w.T + bias
    np.testing.assert_allclose(got, expected if keep_num_dims else expected.reshape(6, 5), rtol=1e-5, atol=1e-6)


@BOTH_RUNTIMES
def test_fully_connected_without_bias_flattens_nhwc(runtime: str) -> None:
    w = _random(3, 2 * 2 * 4)
    b = GraphBuilder()
    b.output(b.fully_connected(b.input("x", (1, 2, 2, 4)), w, activation="RELU"))
    x = _random(1, 2, 2, 4)
    np.testing.assert_allclose(
        _run(b.build(), runtime, x=x), np.maximum(x.reshape(1, -1) @ w.T, 0), rtol=1e-5, atol=1e-6
    )


@BOTH_RUNTIMES
def test_binary_ops_broadcast_like_numpy(runtime: str) -> None:
    b = GraphBuilder()
    a, c = b.input("a", (1, 4, 1, 3)), b.input("c", (1, 1, 5, 3))
    const = _random(3)
    b.output(b.add(a, const), "add")
    b.output(b.mul(a, c), "mul")
    b.output(b.sub(c, a, activation="RELU"), "sub")
    data = {"a": _random(1, 4, 1, 3), "c": _random(1, 1, 5, 3)}
    got = run_model(model_to_bytes(b.build()), data, runtime)
    np.testing.assert_allclose(got["add"], data["a"] + const, rtol=1e-6)
    np.testing.assert_allclose(got["mul"], data["a"] * data["c"], rtol=1e-6)
    np.testing.assert_allclose(got["sub"], np.maximum(data["c"] - data["a"], 0), rtol=1e-6)
    assert got["mul"].shape == (1, 4, 5, 3)


@BOTH_RUNTIMES
def test_activations_match_numpy(runtime: str) -> None:
    alpha = np.array([0.1, 0.2, 0.3], np.float32)
    references = {
        "relu": lambda x: np.maximum(x, 0),
        "relu6": lambda x: np.clip(x, 0, 6),
        "logistic": lambda x: 1 / (1 + np.exp(-x)),
        "tanh": np.tanh,
        "hard_swish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
        "leaky_relu": lambda x: np.where(x >= 0, x, 0.25 * x),
        "prelu": lambda x: np.where(x >= 0, x, alpha * x),
        "softmax": lambda x: np.exp(2 * x) / np.exp(2 * x).sum(-1, keepdims=True),
    }
    b = GraphBuilder()
    x = b.input("x", (1, 2, 4, 3))
    b.output(b.relu(x), "relu")
    b.output(b.relu6(x), "relu6")
    b.output(b.logistic(x), "logistic")
    b.output(b.tanh(x), "tanh")
    b.output(b.hard_swish(x), "hard_swish")
    b.output(b.leaky_relu(x, 0.25), "leaky_relu")
    b.output(b.prelu(x, alpha), "prelu")
    b.output(b.softmax(x, beta=2.0), "softmax")
    data = RNG.uniform(-8, 8, (1, 2, 4, 3)).astype(np.float32)
    got = run_model(model_to_bytes(b.build()), {"x": data}, runtime)
    for name, reference in references.items():
        np.testing.assert_allclose(got[name], reference(data), rtol=1e-5, atol=1e-6, err_msg=name)


@BOTH_RUNTIMES
def test_reshape_concatenation_and_float16_dequantize_are_exact(runtime: str) -> None:
    half = RNG.standard_normal((1, 2, 3, 2)).astype(np.float16)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 2, 2))
    r = b.reshape(x, (1, 2, -1, 2))
    weights = b.dequantize(b.constant(half, "half"))
    b.output(b.concatenation([r, weights, r], axis=-1), "cat")
    model = b.build()
    assert [t.shape for t in model.main.outputs] == [(1, 2, 3, 6)]
    data = _random(1, 3, 2, 2)
    reshaped = data.reshape(1, 2, 3, 2)
    expected = np.concatenate([reshaped, half.astype(np.float32), reshaped], axis=-1)
    np.testing.assert_array_equal(_run(model, runtime, x=data), expected)


def test_builder_names_options_and_constants() -> None:
    b = GraphBuilder()
    x = b.input("x", (1, 4, 4, 2))
    y = b.conv2d(x, _random(3, 1, 1, 2), stride=(1, 2), padding="VALID", activation="RELU")
    y = b.conv2d(y, _random(3, 1, 1, 3))
    b.output(y, "logits")
    model = b.build()
    assert [t.name for t in model.main.tensors] == [
        "x", "conv2d_1/weights", "conv2d_1/bias", "conv2d_1/output", "conv2d_2/weights", "conv2d_2/bias", "logits",
    ]  # fmt: skip
    first = model.main.operators[0]
    assert first.builtin_options.type == "Conv2DOptions"
    assert first.builtin_options.fields["stride_w"] == 2
    assert first.builtin_options.fields["padding"] == 1  # VALID
    assert first.builtin_options.fields["fused_activation_function"] == 1  # RELU
    assert first.outputs[0].shape == (1, 4, 2, 3)
    assert len({id(t.buffer) for t in model.main.tensors if t.is_constant}) == 4
    assert len(model.operator_codes) == 1 and model.version == 3


@BOTH_RUNTIMES
def test_generic_op_escape_hatch(runtime: str) -> None:
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    (y,) = b.op("MAXIMUM", [x, np.zeros(3, np.float32)], [(2, 3)], label="max")
    (z,) = b.op("MEAN", [y, np.array([1], np.int32)], [(2, 1)], {"keep_dims": True})
    b.output(z)
    assert y.name == "max_1/output" and z.name == "mean_1/output"
    data = _random(2, 3)
    np.testing.assert_allclose(_run(b.build(), runtime, x=data), np.maximum(data, 0).mean(1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    ("shape", "build"),
    [
        ((1, 3, 4, 2), lambda b, x: b.transpose_conv(x, _random(5, 3, 2, 2), _random(5), 2, "VALID", "RELU")),
        ((1, 3, 4, 2), lambda b, x: b.transpose_conv(x, _random(5, 2, 3, 2), stride=(3, 2))),
        ((1, 4, 5, 6, 2), lambda b, x: b.conv3d(x, _random(2, 3, 3, 2, 4), stride=(1, 2, 3), dilation=(2, 1, 1))),
        ((1, 4, 5, 6, 2), lambda b, x: b.conv3d(x, _random(2, 3, 1, 2, 4), _random(4), 2, "VALID", "RELU6")),
        ((3, 2, 4), lambda b, x: b.batch_matmul(x, _random(1, 5, 2), adj_x=True, adj_y=True)),
        ((3, 2, 4), lambda b, x: b.gather(x, b.input("i", (2, 2), np.int32), axis=-1)),
    ],
)
@BOTH_RUNTIMES
def test_new_ops_declare_the_shapes_the_kernels_compute(shape, build, runtime: str) -> None:
    b = GraphBuilder()
    b.output(build(b, b.input("x", shape)))
    model = b.build()
    data = {t.name: np.zeros(t.shape, t.dtype) for t in model.main.inputs}
    assert _run(model, runtime, **data).shape == model.main.outputs[0].shape


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda b, x: b.conv2d(x, _random(2, 3, 3, 5)), "OHWI"),
        (lambda b, x: b.depthwise_conv2d(x, _random(1, 3, 3, 3), depth_multiplier=2), "1HWO"),
        (lambda b, x: b.conv2d(x, _random(2, 9, 9, 3), padding="VALID"), "does not fit"),
        (lambda b, x: b.max_pool2d(x, 2, padding="FULL"), "padding"),
        (lambda b, x: b.add(x, _random(2)), "broadcast"),
        (lambda b, x: b.reshape(x, (5, -1)), "reshape"),
        (lambda b, x: b.concatenation([x, b.reshape(x, (1, 4, 8, 3))], 3), "concatenate"),
        (lambda b, x: b.op("RELU", [x], [x.shape], {"alpha": 1.0}), "no builtin options"),
        (lambda b, x: b.op("SOFTMAX", [x], [x.shape], {"alpha": 1.0}), "no field"),
        (lambda b, x: b.op("NOT_AN_OP", [x], [x.shape]), "RULES"),
        (lambda b, x: b.input("x", (1,)), "already used"),
        (lambda b, x: b.transpose_conv(x, _random(2, 3, 3, 5)), "OHWI"),
        (lambda b, x: b.transpose_conv(x, _random(2, 3, 3, 3), padding="FULL"), "padding"),
        (lambda b, x: b.conv3d(x, _random(2, 3, 3, 3, 4)), "DHWIO"),
        (lambda b, x: b.batch_matmul(x, _random(5, 2)), "do not multiply"),
        (lambda b, x: b.batch_matmul(x, _random(2, 3, 2)), "do not multiply"),
        (lambda b, x: b.embedding_lookup(x, _random(4, 2)), "1-D"),
    ],
)
def test_builder_rejects_invalid_graphs(build, message: str) -> None:
    b = GraphBuilder()
    with pytest.raises(EngineError, match=message):
        build(b, b.input("x", (1, 8, 4, 3)))


def test_build_needs_an_output() -> None:
    b = GraphBuilder()
    b.relu(b.input("x", (1, 2)))
    with pytest.raises(EngineError, match="no outputs"):
        b.build()


# ------------------------------------------------------------------------------------ ops table


def test_ops_table_matches_schema() -> None:
    option_tables = set(UNIONS["BuiltinOptions"].values())
    for name, op_rule in RULES.items():
        assert name in BUILTIN_OPS, name
        assert op_rule.options is None or (op_rule.options in TABLES and op_rule.options in option_tables), name
        assert (op_rule.weight_input is None) == (op_rule.weight_channel_axis is None), name
        assert op_rule.bias_input is None or op_rule.weight_input is not None, name
        assert not op_rule.hybrid or op_rule.weight_input is not None, name
        assert all(g <= {"tensor", "channel", "block"} for _, g in op_rule.hybrid) and op_rule.max_version >= 1, name
    assert rule("CONV_2D").weight_channel_axis == 0 and rule("DEPTHWISE_CONV_2D").weight_channel_axis == 3
    assert rule("TRANSPOSE_CONV").bias_input == 3 and rule("CONV_3D").weight_channel_axis == 4
