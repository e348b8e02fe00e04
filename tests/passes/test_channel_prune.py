"""Channel pruning that removes filters: shapes shrink, LiteRT runs the result (in both runtimes,
``tests/runtimes.py``), and it computes what the same network with those channels zeroed computes
(``prune_channels`` "zero"), on builder models and a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import engine
from engine.format.builder import GraphBuilder
from engine.format.ir import Model
from engine.report import Report
from engine.zoo import INPUT_RANGES, photo_input
from tests.runtimes import RUNTIMES, run_model, worst_sqnr

RNG = np.random.default_rng(7)


def _filters(out: int, inp: int, small: list[int] | None = None) -> np.ndarray:
    """OHWI 3x3 filters; the ``small`` ones have the least L2 norm, so channel pruning picks them."""
    w = RNG.normal(size=(out, 3, 3, inp)).astype(np.float32)
    if small:
        w[small] *= np.float32(0.01)
    return w


def _bias(n: int) -> np.ndarray:
    return RNG.normal(size=n).astype(np.float32)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NHWC x OHWI convolution, stride 1, SAME padding, in float64: the numpy reference."""
    _, kh, kw, _ = w.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros((x.shape[0], h, wd, w.shape[0]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,oc->nhwo", padded[:, i : i + h, j : j + wd], w[:, i, j].astype(np.float64))
    return out + b


def _compress(model: Model, tmp_path: Path, mode: str) -> tuple[Path, Report]:
    source, out = tmp_path / "in.tflite", tmp_path / f"{mode}.tflite"
    engine.write_model(model, source)
    options = {
        "prune": 0.5,
        "prune_pattern": "channel",
        "min_elements": 0,
        "prune_channels": mode,
        "sparse_format": "dense",
    }
    _, report = engine.compress(source, output=out, **options)
    return out, report


def _by_name(report: Report) -> dict:
    return {t.name: t for t in report.tensors}


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in engine.read_model(path).main.tensors}


def _conv_relu_conv() -> Model:
    b = GraphBuilder()
    x = b.input("x", (1, 8, 8, 4))
    h = b.relu(b.conv2d(x, _filters(8, 4), _bias(8)))
    b.output(b.conv2d(h, _filters(6, 8), _bias(6)), "y")
    return b.build()


def test_conv_relu_conv_loses_half_the_channels_and_computes_the_pruned_network(tmp_path: Path) -> None:
    model = _conv_relu_conv()
    removed, report = _compress(model, tmp_path, "remove")
    zeroed, _ = _compress(model, tmp_path, "zero")
    shapes = _shapes(removed)
    assert shapes["conv2d_1/weights"] == (4, 3, 3, 4) and shapes["conv2d_1/bias"] == (4,)
    assert shapes["conv2d_1/output"] == shapes["relu_1/output"] == (1, 8, 8, 4)
    assert shapes["conv2d_2/weights"] == (6, 3, 3, 4)
    first = _by_name(report)["conv2d_1/weights"]
    assert first.channels_removed == 4 and first.reason is None
    x = RNG.normal(size=(1, 8, 8, 4)).astype(np.float32)
    # The numpy reference of the pruned network, from the weights the removed model holds.
    sg = engine.read_model(removed).main
    const = {t.name: t.data for t in sg.tensors if t.is_constant}
    assert all(t.sparsity is None for t in sg.tensors)
    h = np.maximum(_conv(x, const["conv2d_1/weights"], const["conv2d_1/bias"]), 0)
    reference = _conv(h, const["conv2d_2/weights"], const["conv2d_2/bias"])
    for runtime in RUNTIMES:
        got = run_model(removed, x, runtime)["y"]
        assert np.abs(got - reference).max() < 1e-4 * np.abs(reference).max(), runtime
        # Removing the channels computes what zeroing them (filters and the readers' inputs) does, at full size.
        full = run_model(zeroed, x, runtime)["y"]
        assert np.abs(got - full).max() < 1e-5 * np.abs(full).max(), runtime


def _residual(partner: str) -> Model:
    """x -> conv_a -> relu -> conv_b, ADD with a second branch (conv_c pruned alike or not, or x itself),
    then relu -> conv_d, the output."""
    b = GraphBuilder()
    x = b.input("x", (1, 6, 6, 8))
    a = b.relu(b.conv2d(x, _filters(8, 8), _bias(8)))
    main = b.conv2d(a, _filters(8, 8, small=[0, 2, 5, 7]), _bias(8))
    if partner == "x":
        other = x
    else:
        other = b.conv2d(x, _filters(8, 8, small=[0, 2, 5, 7] if partner == "alike" else [1, 3, 4, 6]), _bias(8))
    h = b.relu(b.add(main, other))
    b.output(b.conv2d(h, _filters(4, 8), _bias(4)), "y")
    return b.build()


def test_a_residual_add_loses_channels_only_when_both_branches_lose_the_same(tmp_path: Path) -> None:
    x = RNG.normal(size=(1, 6, 6, 8)).astype(np.float32)
    outcomes = {}
    for partner in ("alike", "different", "x"):
        folder = tmp_path / partner
        folder.mkdir()
        model = _residual(partner)
        removed, report = _compress(model, folder, "remove")
        zeroed, _ = _compress(model, folder, "zero")
        entries = _by_name(report)
        outcomes[partner] = {n: (entries[n].channels_removed, entries[n].reason) for n in ("conv2d_2/weights",)}
        shapes = _shapes(removed)
        # conv_a always goes: relu and conv_b's input channels are its own.
        assert entries["conv2d_1/weights"].channels_removed == 4
        assert shapes["conv2d_1/output"] == (1, 6, 6, 4) and shapes["conv2d_2/weights"][3] == 4
        if partner == "alike":
            assert entries["conv2d_3/weights"].channels_removed == 4
            assert shapes["add_1/output"] == shapes["relu_2/output"] == (1, 6, 6, 4)
            assert shapes["conv2d_4/weights"] == (4, 3, 3, 4)
        else:
            assert shapes["add_1/output"] == (1, 6, 6, 8)
        assert all(worst_sqnr(zeroed, removed, x, runtime) > 100 for runtime in RUNTIMES)
    assert outcomes["alike"]["conv2d_2/weights"] == (4, None)
    assert outcomes["different"]["conv2d_2/weights"] == (
        None,
        "channels zeroed, not removed: the inputs of an ADD lose different channels",
    )
    assert outcomes["x"]["conv2d_2/weights"] == (
        None,
        "channels zeroed, not removed: ADD add_1/output adds a branch whose channels are not pruned alike",
    )


def test_filters_feeding_a_graph_output_are_zeroed_with_the_reason(tmp_path: Path) -> None:
    removed, report = _compress(_conv_relu_conv(), tmp_path, "remove")
    last = _by_name(report)["conv2d_2/weights"]
    assert last.action == "compressed" and last.channels_removed is None
    assert last.reason == "channels zeroed, not removed: y is a subgraph output"
    assert _shapes(removed)["y"] == (1, 8, 8, 6)
    model = engine.read_model(removed)
    weights = {w.name: w for w in engine.graph.weights.find_weights(model)}["conv2d_2/weights"].decode()
    assert np.count_nonzero(np.abs(weights).reshape(6, -1).sum(axis=1) == 0) == 3


def test_a_real_model_loses_channels_and_computes_what_zeroing_them_does(
    runnable: dict[str, Path], tmp_path: Path
) -> None:
    path = runnable["iris_landmark"]
    files = {mode: tmp_path / f"{mode}.tflite" for mode in ("remove", "zero")}
    reports = {}
    for mode, out in files.items():
        _, reports[mode] = engine.compress(path, output=out, prune=0.25, prune_pattern="channel", prune_channels=mode)
    before, after = _shapes(path), _shapes(files["remove"])
    shrunk = [n for n in after if n in before and after[n] != before[n]]
    removed = [t for t in reports["remove"].tensors if t.channels_removed]
    assert len(shrunk) > 100 and len(removed) > 10
    assert files["remove"].stat().st_size < 0.9 * path.stat().st_size
    assert any(t.reason and "ADD" in t.reason for t in reports["remove"].tensors)
    x = photo_input(
        tuple(engine.read_model(path).main.inputs[0].shape), "float32", 0, value_range=INPUT_RANGES["iris_landmark"]
    )
    assert all(worst_sqnr(files["zero"], files["remove"], x, runtime) > 80 for runtime in RUNTIMES)
