"""Cross-layer equalization (``--equalize``, engine/passes/equalize.py): the ops table's ``homogeneous`` facts hold in
LiteRT, the equalized float model computes what the original did bit for bit (both runtimes; random chains with
float16 weights behind DEQUANTIZE, and every runnable MediaPipe model), the channel ranges come out balanced, the
pairs it must not touch are left alone, and quantized per tensor it is judged on held-out inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.cli import main
from engine.errors import EngineError
from engine.format.builder import GraphBuilder
from engine.format.ir import Model, Tensor
from engine.format.writer import model_to_bytes
from engine.graph.ops import RULES
from engine.graph.weights import find_weights
from engine.passes.equalize import equalize_weights
from engine.recipe import Recipe
from engine.zoo import CUSTOM_OP_MODELS, MODEL_SHA256, mediapipe_model, model_photo
from tests.runtimes import BOTH_RUNTIMES, RUNTIMES, run_model, worst_sqnr

PER_TENSOR = {"quantize": "weight-int8", "granularity": "tensor", "min_elements": 0, "equalize": True}


def _graded(rng: np.random.Generator, shape: tuple[int, ...], axis: int, spread: float = 1e3) -> np.ndarray:
    """Random weights whose channels along ``axis`` have ranges ``spread`` apart, in shuffled order."""
    scale = rng.permutation(np.geomspace(spread**-0.5, spread**0.5, shape[axis]))
    expand = [i for i in range(len(shape)) if i != axis % len(shape)]
    return (rng.uniform(-1, 1, shape) * np.expand_dims(scale, expand)).astype(np.float32)


def _equalized(model: Model, options: dict | None = None) -> tuple[bytes, bytes, list]:
    """The model's bytes before and after the pass (the pass edits it in place), and the report entries."""
    before = bytes(model_to_bytes(model))
    model, reports = equalize_weights(model, Recipe.from_dict(dict(options or PER_TENSOR)))
    return before, bytes(model_to_bytes(model)), reports


def _assert_same_outputs(before: bytes, after: bytes, inputs: np.ndarray) -> None:
    for runtime in RUNTIMES:
        expected, got = run_model(before, inputs, runtime), run_model(after, inputs, runtime)
        for name, value in expected.items():
            assert np.array_equal(value, got[name]), (runtime, name, np.abs(value - got[name]).max())


# ------------------------------------------------------------------------------------------ the ops table


def _single(name: str) -> Model:
    b = GraphBuilder()
    x = b.input("x", (1, 4, 4, 3))
    if name == "PRELU":
        y = b.prelu(x, np.array([0.25, -0.5, 2.0], np.float32))
    elif name == "PAD":
        y = b.op("PAD", [x, np.array([[0, 0], [1, 0], [0, 2], [0, 0]], np.int32)], [(1, 5, 6, 3)])[0]
    elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        y = (b.max_pool2d if name == "MAX_POOL_2D" else b.average_pool2d)(x, 2, 1, "SAME")
    elif name == "ADD":  # a merge: homogeneous when every input is scaled alike
        y = b.add(x, b.relu(x))
    elif name == "BATCH_MATMUL":  # in its right-hand side, whose last axis it keeps
        y = b.batch_matmul(b.constant(np.random.default_rng(2).normal(size=(1, 4, 4, 4)).astype(np.float32)), x)
    elif name == "RESIZE_BILINEAR":
        y = b.op("RESIZE_BILINEAR", [x, np.array([7, 5], np.int32)], [(1, 7, 5, 3)])[0]
    else:
        y = b.op(name, [x], [x.shape])[0]
    b.output(y, "y")
    return b.build()


# Ops that keep channels apart but clip or bend at fixed values: scaling through them changes the result.
BENDING = ("RELU6", "RELU_N1_TO_1", "HARD_SWISH", "LOGISTIC", "TANH")


@BOTH_RUNTIMES
@pytest.mark.parametrize("name", [*sorted(n for n, r in RULES.items() if r.homogeneous), *BENDING])
def test_homogeneous_ops_commute_with_positive_channel_scales(name: str, runtime: str) -> None:
    """op(s * x) == s * op(x) for positive per-channel s exactly where the table says ``homogeneous`` (powers of
    two, so float rounding cannot blur the answer)."""
    assert RULES[name].homogeneous == (name not in BENDING)
    model = bytes(model_to_bytes(_single(name)))
    x = np.random.default_rng(1).uniform(-4, 4, (1, 4, 4, 3)).astype(np.float32)
    s = np.array([0.25, 2.0, 8.0], np.float32)
    scaled_first, scaled_after = run_model(model, x * s, runtime)["y"], run_model(model, x, runtime)["y"] * s
    assert np.array_equal(scaled_first, scaled_after) == RULES[name].homogeneous


# ------------------------------------------------------------------------------------------ exact in float


@st.composite
def chains(draw: st.DrawFn) -> tuple[Model, np.ndarray]:
    """A chain of convolutions, depthwise convolutions and the ops between them (fused or separate activations,
    PAD, pooling, PRELU), maybe a FULLY_CONNECTED head; weights with channel ranges 1000x apart, stored float32 or
    float16 behind DEQUANTIZE; biases likewise, some shared."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = GraphBuilder()
    shape = (1, draw(st.integers(3, 6)), draw(st.integers(3, 6)), draw(st.integers(1, 4)))
    x = b.input("x", shape)
    shared_bias: dict[int, Tensor] = {}

    def stored(array: np.ndarray) -> np.ndarray | Tensor:
        return b.dequantize(b.constant(array.astype(np.float16))) if draw(st.booleans()) else array

    def bias(n: int) -> np.ndarray | Tensor:
        if draw(st.booleans()) and n in shared_bias:
            return shared_bias[n]
        value = stored(rng.uniform(-2, 2, n).astype(np.float32))
        if isinstance(value, Tensor):
            shared_bias[n] = value
        return value

    for _ in range(draw(st.integers(2, 6))):
        c = x.shape[3]
        fused = draw(st.sampled_from([None, None, "RELU", "RELU6"]))
        step = draw(
            st.sampled_from(["conv", "conv", "depthwise", "depthwise", "relu", "relu6", "prelu", "pad", "pool"])
        )
        if step == "conv":
            out = draw(st.integers(1, 5))
            x = b.conv2d(x, stored(_graded(rng, (out, 3, 3, c), 0)), bias(out), 1, "SAME", fused)
        elif step == "depthwise":
            x = b.depthwise_conv2d(x, stored(_graded(rng, (1, 3, 3, c), 3)), bias(c), 1, "SAME", 1, fused)
        elif step == "prelu":
            x = b.prelu(x, rng.uniform(-1, 1, (c,)).astype(np.float32))
        elif step == "pad":
            x = b.op(
                "PAD",
                [x, np.array([[0, 0], [1, 1], [0, 1], [0, 0]], np.int32)],
                [(1, x.shape[1] + 2, x.shape[2] + 1, c)],
            )[0]
        elif step == "pool":
            x = (b.max_pool2d if draw(st.booleans()) else b.average_pool2d)(x, 2, 1, "SAME")
        else:
            x = getattr(b, step)(x)
    if draw(st.booleans()):
        units = draw(st.integers(1, 4))
        x = b.fully_connected(x, stored(_graded(rng, (units, x.shape[3]), 0)), bias(units))
    b.output(x, "y")
    return b.build(), rng.uniform(-2, 2, shape).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(chains(), st.sampled_from(["per-tensor", "per-tensor-large", "per-channel-readers"]))
def test_equalized_chains_compute_what_they_did(case: tuple[Model, np.ndarray], recipe: str) -> None:
    """Bit for bit in both runtimes, whichever sides the recipe quantizes per tensor (both; only the large
    weights, the others float; per channel, where only a producer per tensor with float readers moves)."""
    model, x = case
    options = {
        "per-tensor": PER_TENSOR,
        "per-tensor-large": {**PER_TENSOR, "min_elements": 40},
        "per-channel-readers": {**PER_TENSOR, "ops": {"CONV_2D": {"granularity": "channel"}}},
    }[recipe]
    before, after, reports = _equalized(model, options)
    _assert_same_outputs(before, after, x)
    assert all(r.equalized and r.bytes_after == r.bytes_before for r in reports)


# ------------------------------------------------------------------------------------------ balanced ranges


def _channel_ranges(values: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(values, axis, 0)).reshape(values.shape[axis], -1).max(axis=1)


def _depthwise_then_conv(rng: np.random.Generator, relu: str | None = None) -> Model:
    """A depthwise convolution (144 weights, channel ranges 1000x apart), an optional activation op, a 1x1
    convolution (256 weights)."""
    b = GraphBuilder()
    x = b.depthwise_conv2d(
        b.input("x", (1, 6, 6, 16)), _graded(rng, (1, 3, 3, 16), 3), rng.normal(size=16).astype(np.float32)
    )
    if relu is not None:
        x = getattr(b, relu)(x)
    b.output(b.conv2d(x, rng.normal(size=(16, 1, 1, 16)).astype(np.float32)), "y")
    return b.build()


def _weights(model: Model) -> dict[str, np.ndarray]:
    return {w.op_name: w.decode() for w in find_weights(model)}


def test_both_sides_per_tensor_balance_within_a_factor_2() -> None:
    """The paper's balance: each channel's ranges r1 (depthwise filter) and r2 (the conv's input channel) end within
    a factor 2 of each other, their product unchanged, and the depthwise channels' spread shrinks from 1000x."""
    model = _depthwise_then_conv(np.random.default_rng(2))
    before = _weights(model)
    _, _, reports = _equalized(model)
    after = _weights(model)
    r1, r2 = _channel_ranges(after["DEPTHWISE_CONV_2D"], 3), _channel_ranges(after["CONV_2D"], 3)
    assert np.all((r1 / r2 >= 0.5) & (r1 / r2 <= 2)), r1 / r2
    products = _channel_ranges(before["DEPTHWISE_CONV_2D"], 3) * _channel_ranges(before["CONV_2D"], 3)
    np.testing.assert_array_equal(r1 * r2, products)
    spread = _channel_ranges(before["DEPTHWISE_CONV_2D"], 3)
    assert r1.max() / r1.min() < (spread.max() / spread.min()) / 10
    assert {r.ops[0] for r in reports} == {"DEPTHWISE_CONV_2D", "CONV_2D"}


def test_one_side_per_tensor_fills_its_range() -> None:
    """With the depthwise filter left float (under min_elements), the conv's input channels are raised to within a
    factor 2 of its largest, which stays: its one scale stays and every other channel gets more levels."""
    model = _depthwise_then_conv(np.random.default_rng(3), "relu")
    conv_before = _weights(model)["CONV_2D"]
    _equalized(model, {**PER_TENSOR, "min_elements": 200})
    conv = _weights(model)["CONV_2D"]
    columns = _channel_ranges(conv, 3)
    assert np.abs(conv).max() == np.abs(conv_before).max()
    assert np.all(columns > np.abs(conv).max() / 2), columns


@pytest.mark.parametrize(
    "case", ["relu6 fused", "relu6 op", "residual add", "graph output", "per-channel reader", "excluded"]
)
def test_left_alone_where_not_exact_or_no_gain(case: str) -> None:
    """Clipping activations, a residual ADD, an output the user reads, a reader whose per-channel scales the
    scaling would move, and an excluded weight: nothing changes."""
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    x = b.input("x", (1, 6, 6, 8))
    fused = "RELU6" if case == "relu6 fused" else None
    y = b.depthwise_conv2d(x, _graded(rng, (1, 3, 3, 8), 3), rng.normal(size=8).astype(np.float32), activation=fused)
    if case == "relu6 op":
        y = b.relu6(y)
    if case == "graph output":
        b.output(y, "middle")
    z = b.conv2d(y, rng.normal(size=(8, 1, 1, 8)).astype(np.float32))
    b.output(b.add(z, y) if case == "residual add" else z, "y")
    options = {
        "per-channel reader": {**PER_TENSOR, "ops": {"CONV_2D": {"granularity": "channel"}}},
        "excluded": {**PER_TENSOR, "exclude": ["depthwise"]},
    }.get(case, PER_TENSOR)
    before, after, reports = _equalized(b.build(), options)
    assert reports == [] and before == after


def test_cli_and_recipe() -> None:
    """``--equalize`` is a model option that needs something with one scale per tensor (weights with granularity
    tensor, or a full-integer mode's activations); the report names what it rescaled."""
    with pytest.raises(EngineError, match="granularity"):
        Recipe({"quantize": "weight-int8", "equalize": True})
    Recipe({"quantize": "int8", "equalize": True})  # full integer: the activations (passes/full_integer/smooth.py)
    with pytest.raises(EngineError, match="whole model"):
        Recipe.from_dict({"quantize": "weight-int8", "granularity": "tensor", "ops": {"CONV_2D": {"equalize": True}}})
    with pytest.raises(EngineError, match="true or false"):
        Recipe({"quantize": "weight-int8", "granularity": "tensor", "equalize": "yes"})


def test_cli_equalize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "in.tflite", tmp_path / "out.tflite"
    engine.write_model(_depthwise_then_conv(np.random.default_rng(5)), source)
    flags = ["--quantize", "weight-int8", "--granularity", "tensor", "--min-elements", "0", "--equalize"]
    assert main(["compress", str(source), "-o", str(out), *flags, "--report", str(tmp_path / "r.json")]) == 0
    assert "weight-int8 (dequantize, INT8, tensor), equalized" in capsys.readouterr().out
    assert main(["compress", str(source), "-o", str(out), "--quantize", "weight-int8", "--equalize"]) == 1
    assert "--equalize" in capsys.readouterr().err


def test_per_tensor_int8_gains_on_a_depthwise_net() -> None:
    """The case the paper targets: per-tensor int8 weights of a depthwise layer whose channels span 1000x lose the
    small channels; equalized, the held-out output SQNR rises by over 3 dB (measured 37.3 -> 41.5 dB)."""
    rng = np.random.default_rng(6)
    source = bytes(model_to_bytes(_depthwise_then_conv(rng, "relu")))
    held_out = rng.uniform(-1, 1, (1, 6, 6, 16)).astype(np.float32)
    sqnr = {}
    for equalize in (False, True):
        options = (
            {**PER_TENSOR, "equalize": equalize}
            if equalize
            else {k: v for k, v in PER_TENSOR.items() if k != "equalize"}
        )
        model, _ = engine.compress(engine.read_model(source), **options)
        sqnr[equalize] = worst_sqnr(source, bytes(model_to_bytes(model)), held_out, "default")
    assert sqnr[True] > sqnr[False] + 3, sqnr


# ------------------------------------------------------------------------------------------ MediaPipe


RUNNABLE = sorted(name for name in MODEL_SHA256 if name not in CUSTOM_OP_MODELS)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
@pytest.mark.parametrize("name", RUNNABLE)
def test_equalized_mediapipe_models_compute_what_they_did(name: str) -> None:
    """Float16 weights behind DEQUANTIZE, shared biases, sparse filters: bit for bit in both runtimes on the
    photo; every model with a depthwise layer followed by a conv without RELU6 has pairs to rescale."""
    before, after, reports = _equalized(engine.read_model(mediapipe_model(name)))
    _assert_same_outputs(before, after, model_photo(name))
    if not name.startswith(("hand_landmark", "pose_landmark")):  # RELU6 between their layers
        assert len(reports) > 10


# Held-out output SQNR (worst output, default runtime, the photo) of weight-int8 per tensor, default min_elements,
# without and with --equalize, measured 2026-12 (docs/cli.md): +8.1 dB face_detection_short_range, +7.1
# face_landmark, +3.6 palm_detection_lite; palm_detection_full -1.6, hand_recrop -0.5; the rest within 0.3 dB.
EQUALIZE_FLOOR_DB = -2.0


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_equalize_per_tensor_on_mediapipe() -> None:
    gains = {}
    for name in RUNNABLE:
        path, photo = mediapipe_model(name), model_photo(name)
        sqnr = []
        for equalize in (False, True):
            options = {"quantize": "weight-int8", "granularity": "tensor"} | ({"equalize": True} if equalize else {})
            model, _ = engine.compress(path, **options)
            sqnr.append(worst_sqnr(path, bytes(model_to_bytes(model)), photo, "default"))
        gains[name] = sqnr[1] - sqnr[0]
    assert min(gains.values()) > EQUALIZE_FLOOR_DB, gains
    assert sum(g > 3 for g in gains.values()) >= 3, gains
