"""Hostile weights through every pass: one clean EngineError and no file, or an output LiteRT loads and runs.

Each case is a model LiteRT loads and runs (in both runtimes: the default interpreter, which applies XNNPACK, and
the builtin kernels) and one set of compression options.  ``engine.compress`` must then either refuse with one
one-line ``EngineError`` that names a tensor or op of the model and write nothing, or write a file that reads
back, loads and runs in both runtimes, and is finite wherever the input model's outputs are.

Fast tier: hypothesis graphs from ``tests.strategies.hostile_graphs`` (mutated weights, shared weights, missing
biases, one-element shapes).  Second tier: seeded mutations of three real MediaPipe models through every pass.
``python -m tests.api.test_hostile [--cases N]`` runs the same cases, each in a forked process (so a crash in the
runtime is counted, not fatal), and prints the outcomes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine import EngineError, read_model, write_model
from engine.format.builder import GraphBuilder
from engine.format.ir import Buffer, Model
from engine.passes.fold import fold_constant_decoders
from engine.runtime.litert import interpreter, run
from engine.zoo import mediapipe_model
from tests.strategies import hostile_graphs, mutate

# Every pass, with options that make it touch every weight however small.
PASSES: dict[str, dict[str, Any]] = {
    "float16": {"quantize": "float16"},
    "weight-int8": {"quantize": "weight-int8"},
    "dynamic-int8": {"quantize": "dynamic-int8"},
    "weight-int4": {"quantize": "weight-int4"},
    "dynamic-int4": {"quantize": "dynamic-int4"},
    "prune-unstructured": {"prune": 0.5},
    "prune-2:4": {"prune": 0.5, "prune_pattern": "2:4"},
    "prune-channel": {"prune": 0.5, "prune_pattern": "channel"},
    "cluster-values": {"cluster": 16},
    "cluster-gather": {"cluster": 16, "cluster_storage": "gather"},
    "int8": {"quantize": "int8"},
    "int8-integer-io": {"quantize": "int8", "io": "int8"},
}
REAL_MODELS = ("hand_recrop", "iris_landmark", "face_detection_short_range")
OUTPUT, REFUSED = "output", "refused"


# Activations beyond this (or non-finite ones) put a model on the edge of float32: any change to its weights,
# even the rounding of a lossless-looking encoding, may overflow somewhere, so only its constants are checked.
_TAME = 1e30


@dataclass
class Reference:
    """What the input model computes on seeded inputs: outputs per runtime (key: XNNPACK), and whether every
    activation is finite and far from float32's limit and every constant finite."""

    inputs: dict[str, np.ndarray]
    outputs: dict[bool, list[np.ndarray]]
    tame: bool
    constants_finite: bool


def reference(path: Path) -> Reference | None:
    """The input model's reference (None if LiteRT does not load and run it in both runtimes)."""
    model = read_model(path)
    rng = np.random.default_rng(0)
    inputs = {t.name or "": rng.uniform(-1, 1, t.shape).astype(np.float32) for t in model.main.inputs}
    try:
        outputs = {xnnpack: list(run(path, inputs, xnnpack=xnnpack).values()) for xnnpack in (False, True)}
        every = interpreter(path, "input", preserve_all=True)
        for detail in every.get_input_details():
            every.set_tensor(detail["index"], inputs[detail["name"]])
        every.invoke()
    except EngineError:
        return None
    peak = 0.0
    for detail in every.get_tensor_details():
        if np.dtype(detail["dtype"]) == np.float32 and np.prod(detail["shape"]) > 0:
            with contextlib.suppress(ValueError):  # tensors the run freed
                peak = max(peak, float(np.abs(every.get_tensor(detail["index"]).astype(np.float64)).max()))
    return Reference(inputs, outputs, bool(peak < _TAME), _constants_finite(model))


def _constants_finite(model: Model) -> bool:
    """Whether every float constant (decoded) and every quantization scale is finite."""
    model, _ = fold_constant_decoders(model)
    for sg in model.subgraphs:
        for t in sg.tensors:
            q = t.quantization
            if q is not None and q.scale is not None and not np.isfinite(q.scale).all():
                return False
            if t.is_constant and t.type_name == "FLOAT32" and t.sparsity is None and not np.isfinite(t.data).all():
                return False
    return True


def check(path: Path, options: dict[str, Any], out: Path, expected: Reference) -> str:
    """Compress ``path`` with ``options`` into ``out`` and check the rule; returns OUTPUT or REFUSED."""
    model = read_model(path)
    names = {t.name for sg in model.subgraphs for t in sg.tensors} | {op.name for op in model.main.operators}
    if options.get("quantize") == "int8":
        shape = model.main.inputs[0].shape
        options = {**options, "calibration": np.random.default_rng(0).uniform(-1, 1, (2, *shape)).astype(np.float32)}
    try:
        engine.compress(path, output=out, min_elements=0, **options)
    except EngineError as exc:
        message = str(exc)
        assert "\n" not in message and message, message
        assert any(name in message for name in names if name), f"names no tensor or op: {message}"
        assert not out.exists(), f"refused ({message}) but wrote {out}"
        return REFUSED
    outcome = _forked(lambda: _loads_and_runs(out, expected))  # a runtime crash fails the case, not the run
    assert outcome == OUTPUT, outcome
    return OUTPUT


def _loads_and_runs(out: Path, expected: Reference) -> str:
    """The written model re-reads, loads and runs in both runtimes, and is finite where the input is."""
    written = read_model(out)
    if expected.constants_finite:
        assert _constants_finite(written), "a constant or scale became NaN or infinite"
    for xnnpack, outputs in expected.outputs.items():
        got = list(run(out, expected.inputs, xnnpack=xnnpack).values())
        for want, have in zip(outputs, got, strict=True):
            bad = np.isfinite(np.asarray(want, np.float64)) & ~np.isfinite(np.asarray(have, np.float64))
            assert not (expected.tame and bad.any()), (
                f"{int(bad.sum())} non-finite outputs where the input's are finite (xnnpack={xnnpack})"
            )
    return OUTPUT


def _case(model: Model, options: dict[str, Any], folder: Path) -> str | None:
    """Write ``model`` and check one pass on it; None when LiteRT does not run the model itself."""
    path, expected = _written(model, folder)
    return None if expected is None else _checked(path, options, folder, expected)


def _written(model: Model, folder: Path) -> tuple[Path, Reference | None]:
    """``model`` written as the input, and its reference (None when LiteRT does not run it)."""
    path = folder / "input.tflite"
    write_model(model, path)
    return path, reference(path)


def _checked(path: Path, options: dict[str, Any], folder: Path, expected: Reference) -> str:
    """One pass on the written input, into a fresh output file."""
    out = folder / "output.tflite"
    out.unlink(missing_ok=True)
    return check(path, options, out, expected)


# ------------------------------------------------------------------------------------------------- fast tier

FAST_EXAMPLES = 150


def graph_cases(examples: int, record: Callable[[str, str | None], None]) -> None:
    """Run ``examples`` hypothesis cases (derandomized), ``record``-ing (pass, outcome) for each."""

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(hostile_graphs(), st.sampled_from(sorted(PASSES)))
    def case(graph: tuple[Model, list[str]], name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            record(name, _case(graph[0], PASSES[name], Path(folder)))

    case()


def test_hostile_graphs() -> None:
    outcomes: Counter[str | None] = Counter()
    graph_cases(FAST_EXAMPLES, lambda _name, outcome: outcomes.update([outcome]))
    assert outcomes[OUTPUT] > outcomes[REFUSED] > 0, outcomes


# ----------------------------------------------------------------------------------------------- real models


def real_cases() -> list[tuple[str, int, str]]:
    """(model, mutation seed, pass) for every pass on each real model, two seeds each."""
    return [(model, seed, name) for model in REAL_MODELS for seed in (0, 1) for name in sorted(PASSES)]


def mutated(model_name: str, seed: int) -> Model:
    """The real model with three seeded mutations."""
    model = read_model(mediapipe_model(model_name))
    mutate(model, np.random.default_rng(seed), count=3)
    return model


def real_case(model_name: str, seed: int, name: str, folder: Path) -> str | None:
    return _case(mutated(model_name, seed), PASSES[name], folder)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
@pytest.mark.parametrize("model_name", REAL_MODELS)
def test_mutated_real_models(model_name: str, tmp_path: Path) -> None:
    """The cases of ``real_cases()`` for one model, as ``real_case`` runs them, except that each mutated model is
    written and run for its reference once, not once per pass (the same bytes give the same reference); its
    bytes are written anew before each pass, as ``_case`` does."""
    outcomes: Counter[str | None] = Counter()
    for seed in sorted({s for m, s, _ in real_cases() if m == model_name}):
        path, expected = _written(mutated(model_name, seed), tmp_path)
        data = path.read_bytes()
        for m, s, name in real_cases():
            if (m, s) != (model_name, seed):
                continue
            if expected is None:
                outcomes[None] += 1
                continue
            path.write_bytes(data)
            outcomes[_checked(path, PASSES[name], tmp_path, expected)] += 1
    assert None not in outcomes and sum(outcomes.values()) == 2 * len(PASSES), outcomes


# ----------------------------------------------------------------------------------------- targeted failures


def _conv_model(weights: np.ndarray, bias: np.ndarray | None = None, depthwise: bool = False) -> Model:
    b = GraphBuilder()
    x = b.input("x", (1, 4, 4, 2))
    layer = b.depthwise_conv2d if depthwise else b.conv2d
    flat = b.reshape(layer(x, weights, bias), (1, -1))
    b.output(b.fully_connected(flat, _ones(3, flat.shape[1])))
    return b.build()


def _ones(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 1, shape).astype(np.float32)


def _refused(model: Model, tmp_path: Path, match: str, **options: Any) -> None:
    """``compress`` refuses the model with one EngineError matching ``match`` and writes nothing."""
    path, out = tmp_path / "input.tflite", tmp_path / "output.tflite"
    write_model(model, path)
    if options.get("quantize") == "int8":
        options["calibration"] = np.zeros((1, 1, 4, 4, 2), np.float32)
    with pytest.raises(EngineError, match=match):
        engine.compress(path, output=out, min_elements=0, **options)
    assert not out.exists()


def test_int8_requantization_xnnpack_cannot_express_is_refused(tmp_path: Path) -> None:
    """A bias near 1e38 raises its conv's weight scale so the bias fits int32; with the output kept in [-1, 1] by a
    fused RELU_N1_TO_1 the requantization scale is far over the 256 XNNPACK takes, and the int8 model would not
    load in the default interpreter (found by the fuzzer)."""
    b = GraphBuilder()
    x = b.input("x", (1, 4, 4, 2))
    b.output(b.conv2d(x, _ones(3, 1, 1, 2), np.full(3, 1e38, np.float32), activation="RELU_N1_TO_1"))
    _refused(b.build(), tmp_path, r"CONV_2D with weight 'conv2d_1/weights'.* beyond the 256 XNNPACK", quantize="int8")


def test_buffer_size_disagreeing_with_the_shape_is_refused_by_the_reader(tmp_path: Path) -> None:
    model = _conv_model(_ones(3, 1, 1, 2))
    weight = model.main.operators[0].inputs[1]
    weight.buffer = Buffer.of(np.zeros(5, np.float32))
    _refused(model, tmp_path, r"conv2d_1/weights.*buffer holds 20 bytes, the shape needs 24", quantize="weight-int8")


def test_absurd_sparse_dimension_is_refused_before_allocating(tmp_path: Path) -> None:
    """A sparse constant claiming a dimension of 2**31 - 1 (128 GiB dense), and a DENSIFY output claiming it."""
    model = _conv_model(_ones(3, 1, 1, 2))
    path = tmp_path / "pruned.tflite"
    engine.compress(model, output=path, prune=0.9, min_elements=0)
    for target in ("source", "output"):
        pruned = read_model(path)
        densify = next(op for op in pruned.main.operators if op.name == "DENSIFY")
        tensor = densify.inputs[0] if target == "source" else densify.outputs[0]
        assert tensor is not None and tensor.shape is not None
        tensor.shape = (2**31 - 1, *tensor.shape[1:])
        match = "sparse tensor of .* dense bytes is absurd" if target == "source" else "is decoded to shape"
        _refused(pruned, tmp_path, match, quantize="weight-int8")


@pytest.mark.parametrize(
    ("mutation", "match"),
    [
        ("depthwise-two-inputs", r"DEPTHWISE_CONV_2D.*bias input 2 is missing"),
        ("weight-omitted", r"CONV_2D.*weight input 1 is missing"),
        ("weight-rank", r"CONV_2D.*weight .*needs 4 axes"),
        ("bias-size", r"CONV_2D.*bias .* does not hold one value for each of the weight's 3 output channels"),
    ],
)
def test_ops_litert_could_crash_on_are_refused_before_calibration(tmp_path: Path, mutation: str, match: str) -> None:
    """Each of these crashed LiteRT (a segmentation fault in one runtime or both) or the int8 bias scaling."""
    model = (
        _conv_model(_ones(1, 1, 1, 2), depthwise=True)
        if mutation.startswith("depthwise")
        else _conv_model(_ones(3, 1, 1, 2))
    )
    op = model.main.operators[0]
    if mutation == "depthwise-two-inputs":
        op.inputs.pop()
    elif mutation == "weight-omitted":
        op.inputs[1] = None
    elif mutation == "weight-rank":
        op.inputs[1].data = _ones(3, 2)
    else:
        op.inputs[2].data = np.zeros(5, np.float32)
    _refused(model, tmp_path, match, quantize="int8")


def test_channel_pruning_an_op_without_a_bias_slot(tmp_path: Path) -> None:
    """FULLY_CONNECTED with two inputs (no bias at all, not even -1) has its filters removed."""
    b = GraphBuilder()
    x = b.input("x", (1, 8))
    hidden = b.fully_connected(x, _ones(4, 8))
    b.graph.operators[-1].inputs.pop()
    b.output(b.fully_connected(hidden, _ones(2, 4)))
    path, out = tmp_path / "input.tflite", tmp_path / "output.tflite"
    write_model(b.build(), path)
    expected = reference(path)
    assert expected is not None
    assert check(path, {"prune": 0.5, "prune_pattern": "channel"}, out, expected) == OUTPUT
    assert read_model(out).main.operators[0].inputs[1].shape == (2, 8)


@pytest.mark.parametrize("options", [{"prune": 0.5}, {"cluster": 4}, {"quantize": "int8"}])
def test_all_zero_weights_stored_sparse_load_in_both_runtimes(tmp_path: Path, options: dict[str, Any]) -> None:
    """A sparse constant with no stored value would be a computed tensor to LiteRT (DENSIFY then refuses it):
    an all-zero weight keeps one explicit zero."""
    model = _conv_model(np.zeros((8, 1, 1, 2), np.float32))
    path = tmp_path / "input.tflite"
    write_model(model, path)
    expected = reference(path)
    assert expected is not None
    assert check(path, options, tmp_path / "output.tflite", expected) == OUTPUT
    densify = [op for op in read_model(tmp_path / "output.tflite").main.operators if op.name == "DENSIFY"]
    assert densify and all(op.inputs[0].buffer.data.size > 0 for op in densify)


def test_float16_keeps_float32_weights_beyond_its_range(tmp_path: Path) -> None:
    model = _conv_model(_ones(3, 1, 1, 2) * np.float32(1e5))
    _, report = engine.compress(model, quantize="float16", min_elements=0)
    entry = next(t for t in report.tensors if t.name == "conv2d_1/weights")
    assert entry.action == "skipped" and "65504" in (entry.reason or "")


# ------------------------------------------------------------------------------------------------------ main


def _forked(work: Callable[[], str | None]) -> str:
    """``work()``'s outcome run in a child process: "crash (signal N)" if the child dies, the failure's first
    line if it raises.  The child must not run Numba's parallel kernels unless the threading layer is
    "workqueue" (GNU OpenMP's threads do not survive fork)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            result: str = str(work())
        except BaseException as exc:
            result = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        os.write(write, pickle.dumps(result))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return pickle.loads(data) if data else f"crash (signal {os.WEXITSTATUS(status) or status & 0x7F})"


def _warm(folder: Path) -> None:
    """Load every kernel once before forking, so each child does not load them again."""
    b = GraphBuilder()
    x = b.input("x", (1, 4))
    b.output(b.fully_connected(x, np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)))
    write_model(b.build(), folder / "warm.tflite")
    for options in PASSES.values():
        if options.get("quantize") != "int8":
            engine.compress(folder / "warm.tflite", min_elements=0, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=FAST_EXAMPLES, help="hypothesis graph cases")
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # OpenMP's threads do not survive fork()
    tally: Counter[tuple[str, str]] = Counter()

    def record(name: str, outcome: str | None) -> None:
        tally[(name, str(outcome))] += 1

    with tempfile.TemporaryDirectory() as folder:
        _warm(Path(folder))
        cases: list[tuple[str, Callable[[], str | None]]] = []

        @settings(max_examples=args.cases, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(hostile_graphs(), st.sampled_from(sorted(PASSES)))
        def collect(graph: tuple[Model, list[str]], name: str) -> None:
            cases.append((f"graph/{name}", lambda g=graph[0], n=name: _case(g, PASSES[n], Path(folder))))

        collect()
        cases += [(f"real/{name}", lambda m=m, s=s, n=name: real_case(m, s, n, Path(folder)))
                  for m, s, name in real_cases()]  # fmt: skip
        for label, work in cases:
            record(label, _forked(work))
    totals: Counter[str] = Counter()
    for (label, outcome), count in sorted(tally.items()):
        print(f"{label:32} {outcome:60} {count}")
        totals[outcome if outcome in (OUTPUT, REFUSED, "None") else "failure"] += count
    ran = totals[OUTPUT] + totals[REFUSED] + totals["failure"]
    print(f"\n{ran} cases run ({totals['None']} generated models LiteRT itself refuses, not counted): "
          f"{totals[OUTPUT]} outputs, {totals[REFUSED]} clean refusals, {totals['failure']} failures")  # fmt: skip
    if totals["failure"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
