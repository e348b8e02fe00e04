"""The public seam for quantization methods (engine.registry): a scale method written as a plugin outside
``engine/`` (examples/plugins/pow2_scale.py) is loaded, selected from the command line, a recipe and the Python
API like a built-in, reported like one, and its outputs load and run right in both runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.cli import main
from engine.errors import EngineError
from engine.registry import SCALE_METHODS, Registry, load_plugin
from tests.runtimes import RUNTIMES, worst_sqnr

POW2 = Path(__file__).parents[2] / "examples" / "plugins" / "pow2_scale.py"


@pytest.fixture(scope="module", autouse=True)
def pow2_loaded() -> None:
    load_plugin(str(POW2))
    load_plugin(str(POW2))  # a second load is a no-op, not a duplicate registration


def _scales(path: Path) -> list[np.ndarray]:
    return [
        t.quantization.scale
        for t in engine.read_model(path).main.tensors
        if t.type_name == "INT8" and t.quantization is not None and t.quantization.scale is not None
    ]


def test_plugin_scale_method_is_a_choice_like_the_built_ins(runnable: dict[str, Path], tmp_path: Path) -> None:
    assert {"minmax", "mse", "pow2"} <= set(SCALE_METHODS)
    source, out = runnable["hand_recrop"], tmp_path / "pow2.tflite"
    _, report = engine.compress(source, output=out, quantize="weight-int8", scale="pow2")
    assert report.compressed and all(t.scale == "pow2" for t in report.compressed)
    scales = np.concatenate(_scales(out))
    assert scales.size and np.all(np.log2(scales) == np.round(np.log2(scales)))  # powers of two
    photo = engine.zoo.model_photo("hand_recrop")
    for runtime in RUNTIMES:
        assert worst_sqnr(source, out, photo, runtime) > 40, runtime
    recipe = engine.Recipe.from_dict({"quantize": "weight-int8", "ops": {"CONV_2D": {"scale": "pow2"}}})
    _, by_recipe = engine.compress(source, recipe)
    assert {t.scale for t in by_recipe.compressed if "CONV_2D" in t.ops} == {"pow2"}


def test_plugin_from_the_command_line(runnable: dict[str, Path], tmp_path: Path) -> None:
    out, report = tmp_path / "out.tflite", tmp_path / "report.json"
    args = ["compress", str(runnable["hand_recrop"]), "-o", str(out), "--quantize", "int8"]
    photos = tmp_path / "photos.npy"
    np.save(photos, engine.zoo.model_calibration("hand_recrop"))
    argv = ["--plugin", str(POW2), *args, "--calibration", str(photos), "--scale", "pow2", "--report", str(report)]
    assert main(argv) == 0
    entries = [t for t in json.loads(report.read_text())["tensors"] if t["action"] == "compressed"]
    assert entries and {t["scale"] for t in entries} == {"pow2"}


def test_registry_refuses_what_would_go_wrong_silently() -> None:
    methods: Registry = Registry("scale method")
    methods.register("ok")(lambda rows, bits: np.ones(rows.shape[0], np.float32))
    with pytest.raises(EngineError, match="scale method 'ok' is already registered"):
        methods.register("ok")(lambda rows, bits: rows)
    with pytest.raises(EngineError, match=r"unknown scale method 'nope' \(known: ok\)"):
        methods.get("nope")
    with pytest.raises(EngineError, match="must be non-empty, without spaces"):
        methods.register("a b")(lambda rows, bits: rows)


def test_a_broken_scale_method_or_plugin_is_one_clear_error(runnable: dict[str, Path], tmp_path: Path) -> None:
    if "broken" not in SCALE_METHODS:
        SCALE_METHODS.register("broken")(lambda rows, bits: np.ones(3, np.float32))
    with pytest.raises(EngineError, match="scale method 'broken' returned"):
        engine.compress(runnable["hand_recrop"], quantize="weight-int8", scale="broken")
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise RuntimeError('oops')\n")
    with pytest.raises(EngineError, match=r"plugin .*bad_plugin.py failed to load: RuntimeError: oops"):
        load_plugin(str(bad))


def test_compress_takes_a_pipeline_and_an_executor(runnable: dict[str, Path]) -> None:
    """A research pass joins the run and its report; calibration runs through the executor given."""
    from engine.api import PIPELINE
    from engine.passes.common import entry, select
    from engine.runtime.calibrate import LiteRTExecutor

    seen: list[str] = []

    def note_weights(model: engine.Model, recipe: engine.Recipe) -> tuple[engine.Model, list]:
        chosen, _ = select(model, recipe, lambda options: True)
        seen.extend(weight.name for weight, _ in chosen)
        return model, [entry(weight, options, "looked at by the research pass") for weight, options in chosen]

    _, report = engine.compress(runnable["hand_recrop"], passes=(note_weights, *PIPELINE), quantize="weight-int8")
    assert seen and {t.name for t in report.compressed} <= set(seen)

    runs: list[int] = []

    class Counting(LiteRTExecutor):
        def run(self, feeds: dict) -> None:
            runs.append(1)
            super().run(feeds)

    calibration = engine.zoo.model_calibration("hand_recrop")
    engine.compress(runnable["hand_recrop"], quantize="int8", calibration=calibration, executor=Counting)
    assert len(runs) >= len(calibration)  # every sample ran through it (and a first trial run)


NF4 = Path(__file__).parents[2] / "examples" / "plugins" / "nf4_codebook.py"


def test_plugin_codebook_method_nf4(runnable: dict[str, Path], tmp_path: Path) -> None:
    """A non-uniform 4-bit codebook plugin: every output channel holds at most its 16 scaled NF4 levels, stored as
    uint8 indices and per-channel codebooks behind GATHER, right in both runtimes; like k-means, not better."""
    load_plugin(str(NF4))
    source = runnable["iris_landmark"]
    photo = engine.zoo.model_photo("iris_landmark")
    options = {"cluster": 16, "cluster_granularity": "channel", "cluster_storage": "gather"}
    out = tmp_path / "nf4.tflite"
    _, report = engine.compress(source, output=out, cluster_init="nf4", **options)
    gathered = [t for t in report.compressed if t.form == "gather"]
    assert gathered and all(t.clusters <= 16 for t in gathered)
    books = [t for t in engine.read_model(out).main.tensors if (t.name or "").endswith("_codebook")]
    assert books and all(np.asarray(b.data).shape[-1] == 16 for b in books)
    for book in books:
        rows = np.asarray(book.data).reshape(-1, 16)
        peak = np.abs(rows).max(axis=1, keepdims=True)
        levels = np.divide(rows, peak, out=np.zeros_like(rows), where=peak > 0)
        assert np.allclose(levels[peak[:, 0] > 0], levels[peak[:, 0] > 0][0], atol=1e-6)  # one shape, scaled
    kmeans = tmp_path / "kmeans.tflite"
    engine.compress(source, output=kmeans, **options)
    for runtime in RUNTIMES:
        nf4_sqnr, kmeans_sqnr = worst_sqnr(source, out, photo, runtime), worst_sqnr(source, kmeans, photo, runtime)
        assert nf4_sqnr > 10 and kmeans_sqnr >= nf4_sqnr - 1, (runtime, nf4_sqnr, kmeans_sqnr)
    with pytest.raises(EngineError, match="nf4 has 16 levels"):
        engine.compress(source, cluster=8, cluster_init="nf4")


POW2_ACTIVATIONS = Path(__file__).parents[2] / "examples" / "plugins" / "pow2_activations.py"


def test_plugin_full_integer_mode_pow2(runnable: dict[str, Path], tmp_path: Path) -> None:
    """A full-integer mode from a plugin (symmetric int8 activations, power-of-two scales) is a --quantize choice
    on the command line, runs on the int8 kernels in both runtimes, and is reported under its own name."""
    out, report_path = tmp_path / "pow2.tflite", tmp_path / "report.json"
    photos = tmp_path / "photos.npy"
    np.save(photos, engine.zoo.model_calibration("hand_recrop"))
    source = runnable["hand_recrop"]
    argv = ["--plugin", str(POW2_ACTIVATIONS), "--plugin", str(POW2), "compress", str(source), "-o", str(out)]
    argv += ["--quantize", "int8-pow2", "--scale", "pow2", "--calibration", str(photos), "--report", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["integer"]["mode"] == "int8-pow2" and report["integer"]["kernels"] == "int8"
    assert {t["mode"] for t in report["tensors"] if t["action"] == "compressed"} == {"int8-pow2"}
    activations = [
        t.quantization
        for t in engine.read_model(out).main.tensors
        if t.type_name == "INT8" and not t.is_constant and t.quantization is not None
    ]
    assert len(activations) > 20
    for q in activations:
        assert np.all(q.zero_point == 0)
        assert np.all(np.log2(q.scale) == np.round(np.log2(q.scale)))
    photo = engine.zoo.model_photo("hand_recrop")
    for runtime in RUNTIMES:
        assert worst_sqnr(source, out, photo, runtime) > 20, runtime  # int8: 36-41 dB, this: 26-29


def test_an_activation_scheme_that_does_not_fit_the_kernels_is_refused(
    runnable: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.quant.activations import ActivationScheme
    from engine.registry import ACTIVATION_SCHEMES

    if "int16-asymmetric" not in ACTIVATION_SCHEMES:
        ACTIVATION_SCHEMES.register("int16-asymmetric")(ActivationScheme("int16", 16, symmetric=False))
        ACTIVATION_SCHEMES.register("int4-acts")(ActivationScheme("int8", 4, symmetric=True))
    calibration = engine.zoo.model_calibration("hand_recrop", 2)
    with pytest.raises(EngineError, match="int16-asymmetric: int16 kernels need symmetric activations"):
        engine.compress(runnable["hand_recrop"], quantize="int16-asymmetric", calibration=calibration)
    with pytest.raises(EngineError, match="int4-acts: int8 kernels compute in INT8, not INT4"):
        engine.compress(runnable["hand_recrop"], quantize="int4-acts", calibration=calibration)
    out = tmp_path / "x.tflite"
    argv = ["compress", str(runnable["hand_recrop"]), "-o", str(out), "--quantize", "int16x8", "--io", "int8"]
    assert main([*argv, "--calibration", "x.npy"]) != 0 and not out.exists()
    assert "--io int8 does not apply: int16x8 keeps a float interface" in capsys.readouterr().err
