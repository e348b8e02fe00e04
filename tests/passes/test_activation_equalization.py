"""Activation equalization (``--equalize`` in full-integer modes, engine/passes/full_integer/smooth.py): the
rescaled float model computes what the original did, bit for bit in both runtimes, the groups stop where the graph
does not allow the scaling, and the integer model gets closer to float where activation channels are uneven."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine import model_to_bytes, read_model
from engine.format.builder import GraphBuilder
from engine.format.ir import Model
from engine.passes.fold import fold_constant_decoders
from engine.passes.full_integer.plan import scheme_of
from engine.passes.full_integer.smooth import ChannelStatistics, Smoothed, smooth_activations
from engine.passes.fuse import fuse_activations
from engine.quant.metrics import sqnr_db
from engine.recipe import Recipe, TensorOptions
from engine.runtime.calibrate import load_calibration
from engine.zoo import model_calibration, model_photo
from tests.digits import accuracy, digits_data, litert_outputs
from tests.digits_attention import attention_model_path
from tests.runtimes import RUNTIMES, run_model
from tests.strategies import graphs

INT8 = Recipe({"quantize": "int8"})


def _samples(model: Model, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.uniform(-1, 1, (count, *t.shape[1:])).astype(np.float32) for t in model.main.inputs}


def _equalized(model: Model, strength: float | None, seed: int = 0) -> tuple[bytes, bytes, list[Smoothed]]:
    """The model as the full-integer pass sees it (decoders folded, activations fused) before and after."""
    model, _ = fold_constant_decoders(model)
    model, _ = fuse_activations(model)
    before = model_to_bytes(model)
    data = load_calibration(_samples(model, 4, seed), model)
    smoothed = smooth_activations(model, INT8, data, scheme_of(TensorOptions(**INT8.options)), strength=strength)
    return before, model_to_bytes(model), smoothed


def _assert_same_outputs(before: bytes, after: bytes, model: Model, seed: int = 1) -> None:
    inputs = {name: value[:1] for name, value in _samples(model, 1, seed).items()}
    for runtime in RUNTIMES:
        expected, got = run_model(before, inputs, runtime), run_model(after, inputs, runtime)
        for name, value in expected.items():
            assert np.array_equal(value, got[name]), (runtime, name, np.abs(value - got[name]).max())


@settings(max_examples=60, deadline=None)
@given(graphs(), st.sampled_from([0.25, 1.0]), st.integers(0, 1000))
def test_equalized_graphs_compute_what_they_did(model: Model, strength: float, seed: int) -> None:
    before, after, _ = _equalized(model, strength, seed)
    _assert_same_outputs(before, after, read_model(before))


@st.composite
def scalable_chains(draw: st.DrawFn) -> Model:
    """A conv whose channels (positive, ranges 1024x apart) pass through a random run of the ops a group follows
    (activations, pooling, depthwise, PAD of the channels, ADD or CONCATENATION with a sibling branch, reshapes,
    a fully connected head on the flattened tensor) to the ops that read them."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = GraphBuilder()
    x = b.input("x", (1, draw(st.integers(2, 5)), draw(st.integers(2, 5)), 3))
    c = draw(st.sampled_from([2, 4, 6]))

    def conv(t, out: int, k: int = 1) -> object:
        spread = np.exp2(5.0 * (-1) ** np.arange(out)).astype(np.float32)  # 1024x apart, positive: no RELU zeroes it
        w = (rng.normal(size=(out, k, k, t.shape[3])) * spread[:, None, None, None]).astype(np.float32)
        bias = (spread * rng.uniform(8, 16, out)).astype(np.float32)
        return b.conv2d(t, w, bias, activation=draw(st.sampled_from([None, "RELU"])))

    h = conv(x, c, draw(st.sampled_from([1, 3])))
    for step in draw(st.lists(st.sampled_from(["relu", "prelu", "pool", "depthwise", "pad", "add", "concat"]))):
        n = h.shape[3]
        if step == "relu":
            h = b.relu(h)
        elif step == "prelu":
            h = b.prelu(h, rng.uniform(-0.5, 0.5, n).astype(np.float32))
        elif step == "pool":
            h = (b.max_pool2d if draw(st.booleans()) else b.average_pool2d)(h, 2, 1, "SAME")
        elif step == "depthwise":
            h = b.depthwise_conv2d(
                h, rng.normal(size=(1, 3, 3, n)).astype(np.float32), rng.normal(size=n).astype(np.float32)
            )
        elif step == "pad":
            pads = np.array([[0, 0], [0, 0], [0, 0], [c * draw(st.integers(0, 1)), c]], np.int32)
            h = b.op("PAD", [h, pads], [(*h.shape[:3], n + int(pads[3].sum()))])[0]
        elif step == "add":
            h = b.add(h, conv(x, n))
        else:
            h = b.concatenation([h, conv(x, c)], -1)
    if draw(st.booleans()):
        flat = b.reshape(h, (1, int(np.prod(h.shape[1:]))))
        y = b.fully_connected(flat, rng.normal(size=(3, flat.shape[1])).astype(np.float32))
    else:
        y = conv(h, 3)
    b.output(y, "y")
    return b.build()


@settings(max_examples=40, deadline=None)
@given(scalable_chains(), st.sampled_from([0.25, 1.0, None]), st.integers(0, 1000))
def test_equalized_chains_compute_what_they_did(model: Model, strength: float | None, seed: int) -> None:
    """Rescaled for any strength (and as chosen), bit for bit in both runtimes; forced strengths rescale."""
    before, after, smoothed = _equalized(model, strength, seed)
    if strength == 1.0:
        assert smoothed, "a chain from a conv with channel ranges 1024x apart to its readers is rescaled"
    _assert_same_outputs(before, after, read_model(before))


def _uneven_chain() -> Model:
    """conv (4 channels, ranges 1000x apart) -> depthwise -> PAD of the channels to 8 -> conv, with a second
    branch concatenated: one group through depthwise, PAD and CONCATENATION."""
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", (1, 6, 6, 3))
    w = (
        rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
        * np.array([30.0, 1.0, 0.03, 3.0], np.float32)[:, None, None, None]
    )
    h = b.conv2d(x, w, rng.normal(size=4).astype(np.float32), activation="RELU")
    d = b.depthwise_conv2d(h, rng.normal(size=(1, 3, 3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32))
    p = b.op("PAD", [d, np.array([[0, 0], [0, 0], [0, 0], [0, 4]], np.int32)], [(1, 6, 6, 8)])[0]
    g = b.conv2d(x, rng.normal(size=(4, 1, 1, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32))
    c = b.concatenation([p, g], -1)
    b.output(b.conv2d(c, rng.normal(size=(5, 1, 1, 12)).astype(np.float32), np.zeros(5, np.float32)), "y")
    return b.build()


def test_groups_follow_depthwise_pad_and_concatenation_exactly() -> None:
    model = _uneven_chain()
    before, after, smoothed = _equalized(model, 1.0)
    assert len(smoothed) == 1
    group = smoothed[0]
    assert group.period == 4 and group.readers == 1 and len(group.producers) == 2
    assert group.tensors == 5 and group.channels > 0 and group.spread[1] < group.spread[0]
    _assert_same_outputs(before, after, model)


def _weight_decoders(path: Path) -> list[str]:
    """The decoders from the op writing ``y`` back to its stored weight, and that constant's type."""
    sg = read_model(path).main
    producers = sg.producers()
    (op,) = [op for op in sg.operators if op.outputs[0].name == "y"]
    chain, t = [], op.inputs[1]
    while id(t) in producers:
        chain.append(producers[id(t)].name)
        t = producers[id(t)].inputs[0]
    return [*chain, t.type_name]


@pytest.mark.parametrize("storage", ["float16", "sparse", "sparse float16"])
def test_float_island_weights_keep_the_input_storage_after_equalization(storage: str, tmp_path: Path) -> None:
    """A rescaled weight read only by an op left float goes back behind its input's decoders (float16 behind
    DEQUANTIZE, sparse behind DENSIFY), holding the rescaled values, rather than as float32: the same bytes as
    without equalization, and the model still computes the float one's outputs in both runtimes."""
    source = tmp_path / "source.tflite"
    (tmp_path / "float32.tflite").write_bytes(model_to_bytes(_uneven_chain()))
    stored = {"float16": {"quantize": "float16"}, "sparse": {"prune": 0.5}}
    options = {k: v for part in storage.split() for k, v in stored[part].items()}
    engine.compress(tmp_path / "float32.tflite", output=source, min_elements=0, **options)
    calibration = np.random.default_rng(0).uniform(-1, 1, (8, 6, 6, 3)).astype(np.float32)
    held_out = {"x": np.random.default_rng(1).uniform(-1, 1, (1, 6, 6, 3)).astype(np.float32)}
    recipe = {"quantize": "int8", "tensors": {"^y$": {"quantize": None}}}  # the last conv stays float
    outs, reports = {}, {}
    for equalize in (False, True):
        outs[equalize] = tmp_path / f"equalize-{equalize}.tflite"
        (tmp_path / "recipe.json").write_text(json.dumps({**recipe, "equalize": equalize}))
        _, reports[equalize] = engine.compress(
            source, output=outs[equalize], recipe=tmp_path / "recipe.json", calibration=calibration
        )
    assert reports[True].integer.equalized and reports[True].integer.float_ops[0]["output"] == "y"
    assert reports[True].integer.restored_decoders == reports[False].integer.restored_decoders > 0
    assert outs[True].stat().st_size == outs[False].stat().st_size
    assert _weight_decoders(outs[True]) == _weight_decoders(source) != ["FLOAT32"]
    for runtime in RUNTIMES:
        expected, got = run_model(source, held_out, runtime)["y"], run_model(outs[True], held_out, runtime)["y"]
        assert sqnr_db(expected, got) > 25, runtime


def test_steps_stay_exact_in_the_type_a_float_weight_is_stored_in() -> None:
    """``stored`` (a float island's weight kept as float16 behind DEQUANTIZE): the power-of-two steps keep its
    rescaled values exact in float16, so it can go back there; bounded by float32 alone (the folded constant's
    type) they are not.  The reader's weights are float16 subnormals, which no step down leaves exact in
    float16, and migration strength 1 asks for steps down."""
    rng = np.random.default_rng(2)
    steps = np.float32(2.0**-24)  # float16's smallest subnormal: odd multiples of it lose a bit when halved
    exact = {}
    for stored in (False, True):
        model, _ = fuse_activations(fold_constant_decoders(_uneven_chain())[0])
        (reader,) = [op.inputs[1] for op in model.main.operators if op.outputs[0].name == "y"]
        reader.data = (2 * rng.integers(1, 200, reader.shape) + 1).astype(np.float32) * steps
        data = load_calibration(_samples(model, 4, 0), model)
        smooth_activations(
            model, INT8, data, scheme_of(TensorOptions(**INT8.options)), strength=1.0,
            stored={id(reader): np.dtype(np.float16)} if stored else None,
        )  # fmt: skip
        values = np.asarray(reader.data)
        exact[stored] = np.array_equal(values.astype(np.float16).astype(np.float32), values)
    assert exact == {False: False, True: True}


@pytest.mark.parametrize("ending", ["softmax", "output", "relu6", "adjoint", "reader"])
def test_groups_stop_where_the_scaling_would_change_the_model(ending: str) -> None:
    """A channel that reaches SOFTMAX, a graph output, RELU6 (which clips at a fixed value) or the right-hand side
    of a BATCH_MATMUL that contracts it (adj_y) is left alone; read by a FULLY_CONNECTED only, it is rescaled."""
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    x = b.input("x", (1, 4, 8))
    weights = rng.normal(size=(6, 8)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    h = b.fully_connected(x, weights, keep_num_dims=True)
    if ending == "adjoint":
        left = b.constant(rng.normal(size=(1, 3, 6)).astype(np.float32))
        b.output(
            b.fully_connected(b.batch_matmul(left, h, adj_y=True), rng.normal(size=(2, 4)).astype(np.float32)), "y"
        )
    elif ending == "reader":
        b.output(b.fully_connected(h, rng.normal(size=(3, 6)).astype(np.float32)), "y")
    elif ending == "softmax":
        b.output(b.fully_connected(b.softmax(h), rng.normal(size=(3, 6)).astype(np.float32)), "y")
    elif ending == "output":
        b.output(b.fully_connected(h, rng.normal(size=(3, 6)).astype(np.float32)), "y")
        b.output(h, "h")
    else:
        b.output(b.fully_connected(b.relu6(h), rng.normal(size=(3, 6)).astype(np.float32)), "y")
    model = b.build()
    before, after, smoothed = _equalized(model, 1.0)
    if ending == "reader":
        assert [g.tensors for g in smoothed] == [1]
        _assert_same_outputs(before, after, model)
    else:
        assert smoothed == [] and before == after


@pytest.mark.slow
def test_mediapipe_models_equalized_exactly(runnable: dict[str, Path]) -> None:
    """Every runnable MediaPipe model, its groups forced to the strongest migration, computes what it did on a
    real photo, bit for bit in both runtimes; on most of them some group is rescaled."""
    rescaled = []
    for name, path in sorted(runnable.items()):
        model = read_model(path)
        model, _ = fold_constant_decoders(model)
        model, _ = fuse_activations(model)
        before = model_to_bytes(model)
        data = load_calibration(model_calibration(name, 4), model)
        smoothed = smooth_activations(model, INT8, data, scheme_of(TensorOptions(**INT8.options)), strength=1.0)
        rescaled += [name] if smoothed else []
        photo = {model.main.inputs[0].name: model_photo(name)}
        for runtime in RUNTIMES:
            expected, got = run_model(before, photo, runtime), run_model(model_to_bytes(model), photo, runtime)
            for output, value in expected.items():
                assert np.array_equal(value, got[output]), (name, runtime, output)
    assert len(rescaled) >= 8, rescaled


def test_channel_statistics_match_numpy() -> None:
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(2, 3, 5)).astype(np.float32) for _ in range(3)]
    observer = ChannelStatistics()
    for batch in batches:
        observer.update(batch)
    rows = np.concatenate([b.reshape(-1, 5) for b in batches])
    assert np.array_equal(observer.high, rows.max(axis=0)) and np.array_equal(observer.low, rows.min(axis=0))
    assert np.allclose(observer.squares, np.square(rows.astype(np.float64)).sum(axis=0)) and observer.vectors == 18


def test_attention_group_is_found_and_exact(tmp_path: Path) -> None:
    """The residual stream of the digits attention classifier: the embedding's output, the values, attention x
    values, their sum and its flattening are one group (written by the embedding and value projections, read by
    the query, key, value and head projections, period 32), and rescaling it changes no float output."""
    model = read_model(attention_model_path(tmp_path))
    before, after, smoothed = _equalized(model, 0.5)
    assert [(g.tensors, g.readers, len(g.producers), g.period) for g in smoothed] == [(5, 4, 2, 32)]
    _assert_same_outputs(before, after, model)


@pytest.mark.slow
def test_equalized_int8_attention_is_3_db_closer_and_as_accurate(tmp_path: Path) -> None:
    """Issue 14's goal: full int8 at least 3 dB over the converter's method (the engine's defaults) on the digits
    attention classifier, on the test digits the calibration did not see, in both runtimes, and at least as
    accurate (measured: 12.0 -> 17.1 dB, 91.3% -> 94.6%, float 94.8%)."""
    source = attention_model_path(tmp_path)
    x_train, _, x_test, y_test = digits_data()
    paths = {}
    for equalize in (False, True):
        paths[equalize] = tmp_path / f"equalize-{equalize}.tflite"
        _, report = engine.compress(
            source, output=paths[equalize], quantize="int8", calibration=x_train[:128], equalize=equalize
        )
    assert "activation equalization: 1 group(s) of 5 tensors" in report.format_text()
    for runtime in RUNTIMES:
        reference = litert_outputs(source, x_test, runtime)
        closeness = {e: sqnr_db(reference, litert_outputs(p, x_test, runtime)) for e, p in paths.items()}
        assert closeness[True] >= closeness[False] + 3, (runtime, closeness)
        scores = {e: accuracy(p, x_test, y_test, runtime) for e, p in paths.items()}
        assert scores[True] >= scores[False], (runtime, scores)
