"""The command line as users and CI call it: ``python -m engine ...`` in a subprocess."""

from __future__ import annotations

import gc
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import cli, read_model, structural_diff
from engine.cli import main
from engine.errors import EngineError
from engine.format.builder import GraphBuilder
from engine.format.writer import write_model
from engine.zoo import mediapipe_model


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def _assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_inspect_text_and_json(mediapipe: dict[str, Path]) -> None:
    path = mediapipe["face_detection_full_range_sparse"]
    text = _run("inspect", path)
    assert text.returncode == 0, text.stderr
    assert "DENSIFY x46" in text.stdout and "sparse tensors: 46" in text.stdout
    assert "input_1: FLOAT32[1, 192, 192, 3]" in text.stdout and "signatures: none" in text.stdout
    summary = json.loads(_run("inspect", path, "--json").stdout)
    assert summary["operators"]["DEQUANTIZE"] == 182
    assert summary["constants_by_dtype"]["FLOAT16"]["tensors"] == 182
    assert [m["name"] for m in summary["metadata"]] == ["min_runtime_version", "TFLITE_METADATA"]
    custom = json.loads(_run("inspect", mediapipe["selfie_segmentation"], "--json").stdout)
    assert custom["custom_ops"] == {"Convolution2DTransposeBias": 1}


def test_compress_without_flags_is_the_round_trip(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.tflite"
    result = _run("compress", mediapipe["pose_detection"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert "operators: unchanged" in result.stdout and "constants: unchanged" in result.stdout
    assert structural_diff(read_model(mediapipe["pose_detection"]), read_model(out)) == []


def test_validate_command(runnable: dict[str, Path], tmp_path: Path) -> None:
    path = runnable["iris_landmark"]
    shape = tuple(read_model(path).main.inputs[0].shape)
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(0, 1, (2, *shape)).astype(np.float32))
    result = _run("validate", path, path, "--data", tmp_path / "x.npy", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 2 and list(report["runtimes"]) == ["default", "builtin"]
    for runtime in report["runtimes"].values():
        assert runtime["outputs"] and all(o["bit_identical"] for o in runtime["outputs"])
    lite, full = runnable["palm_detection_lite"], runnable["palm_detection_full"]
    below = _run("validate", lite, full, "--no-intermediates", "--min-sqnr", "30")
    assert below.returncode == 3, below.stderr
    assert below.stderr.splitlines() == [below.stderr.strip()] and "is below 30.0 dB" in below.stderr
    assert "default runtime (XNNPACK):" in below.stdout and "builtin kernels:" in below.stdout
    alias = json.loads(_run("validate", lite, full, "--xnnpack", "--json").stdout)  # deprecated: --runtime default
    assert list(alias["runtimes"]) == ["default"] and alias["runtimes"]["default"]["intermediates"] is None


def test_validate_fails_when_the_candidate_fails_in_one_runtime(tmp_path: Path) -> None:
    from tests.runtime.test_validate import _constant_output

    ref, cand = tmp_path / "ref.tflite", tmp_path / "cand.tflite"
    ref.write_bytes(_constant_output(False))
    cand.write_bytes(_constant_output(True))
    result = _run("validate", ref, cand)
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: the candidate fails in the default runtime (XNNPACK): candidate {cand}: ")
    assert "interpreter error: failed to setup XNNPACK runtime" in line and "Traceback" not in result.stderr
    assert "builtin kernels:" in result.stdout and "worst output SQNR: -inf dB" in result.stdout
    assert main(["validate", str(ref), str(cand), "--runtime", "builtin"]) == 0


def test_bad_input_one_line_no_output_file(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.tflite"
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(mediapipe["hand_recrop"].read_bytes()[:5000])
    _assert_clean_error(_run("compress", truncated, "-o", out), "corrupt TFLite file", "run past the end")
    notflat = tmp_path / "notes.txt"
    notflat.write_text("just some text, not a model\n")
    _assert_clean_error(_run("compress", notflat, "-o", out), "not a TFLite file")
    _assert_clean_error(_run("inspect", tmp_path / "missing.tflite"), "cannot read")
    _assert_clean_error(_run("compress", mediapipe["hand_recrop"], "-o", tmp_path / "no" / "dir" / "x.tflite"))
    _assert_clean_error(_run("validate", mediapipe["hand_recrop"], mediapipe["hand_recrop"], "--data", notflat))
    _assert_clean_error(
        _run("validate", mediapipe["face_landmark_with_attention"], mediapipe["face_landmark_with_attention"]),
        "custom op",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "truncated.tflite"]


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_demo_runs_on_the_built_in_default(tmp_path: Path) -> None:
    result = _run("demo", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "face_detection_short_range" in result.stdout and "x weight-int8" in result.stdout
    sqnr = float(result.stdout.split("worst output SQNR: ")[1].split()[0])
    assert sqnr > 20
    out = tmp_path / "face_detection_short_range.weight-int8.tflite"
    assert out.stat().st_size < 0.75 * mediapipe_model("face_detection_short_range").stat().st_size


def test_compress_quantizes_and_reports(runnable: dict[str, Path], tmp_path: Path) -> None:
    out, report = tmp_path / "out.tflite", tmp_path / "report.json"
    result = _run(
        "compress", runnable["iris_landmark"], "-o", out, "--quantize", "weight-int8", "--report", report, "--validate"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not even LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
    assert "x weight-int8 (dequantize, INT8, channel)" in result.stdout and "worst output SQNR" in result.stdout
    summary = result.stdout.strip().splitlines()[-2]
    assert summary.startswith(f"input -> output: {runnable['iris_landmark'].stat().st_size:,} -> ")
    assert "latency " in summary and "ms (default runtime, 1 thread, median of 20 interleaved runs)" in summary
    saved = json.loads(report.read_text())
    compressed = [t for t in saved["tensors"] if t["action"] == "compressed"]
    assert compressed and all(t["bytes_after"] < t["bytes_before"] and t["weight_sqnr_db"] > 30 for t in compressed)
    assert saved["file_bytes_after"] == out.stat().st_size
    assert all(saved["validation"]["runtimes"][r]["outputs"] for r in ("default", "builtin"))
    latency = saved["latency"]
    assert latency["runtime"] == "default" and latency["num_threads"] == 1
    assert latency["input_ms"] > 0 and latency["output_ms"] > 0 and f"{latency['input_ms']:.3g} ->" in summary


def test_compress_validate_on_data_samples_and_min_sqnr(runnable: dict[str, Path], tmp_path: Path, capsys) -> None:
    """--data takes N samples (any single array name), every one runs; below --min-sqnr after writing: exit 3 and
    the message says the file was written."""
    source, out = runnable["iris_landmark"], tmp_path / "out.tflite"
    samples = np.random.default_rng(2).uniform(0, 1, (3, 64, 64, 3)).astype(np.float32)
    np.savez(tmp_path / "eyes.npz", eyes=samples)
    args = ["compress", str(source), "-o", str(out), "--quantize", "weight-int4", "--validate"]
    assert main([*args, "--data", str(tmp_path / "eyes.npz"), "--runtime", "default", "--min-sqnr", "60"]) == 3
    captured = capsys.readouterr()
    assert "inputs (3 samples)" in captured.out and "median" in captured.out and "builtin kernels:" not in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: wrote {out}; validation failed: worst output SQNR ") and "below 60.0 dB" in line
    assert out.exists()
    np.savez(tmp_path / "nan.npz", eyes=np.where(samples > 0.5, np.nan, samples))
    assert main([*args, "--data", str(tmp_path / "nan.npz")]) == 3
    assert "--data for input 'input_1' contains NaN or infinite values" in capsys.readouterr().err


def test_gzip_sizes_where_they_inform_or_asked(tmp_path: Path, capsys) -> None:
    """gzip sizes cost ~0.1 s a MB: computed with --cluster or --prune (their gain is partly a compressor's) or
    --gzip, else the summary says how to get them; --gzip without compression options is refused."""
    from engine.format.builder import GraphBuilder

    rng = np.random.default_rng(1)
    b = GraphBuilder()
    b.output(b.fully_connected(b.input("x", (1, 64)), rng.normal(0, 1, (64, 64)).astype(np.float32)), "y")
    source, out = tmp_path / "fc.tflite", tmp_path / "out.tflite"
    engine.write_model(b.build(), source)

    def gzip_line(*flags: str) -> str:
        assert main(["compress", str(source), "-o", str(out), *flags]) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("gzip: "))

    assert "not computed (--gzip computes it" in gzip_line("--quantize", "weight-int8")
    for flags in (["--quantize", "weight-int8", "--gzip"], ["--cluster", "4"], ["--prune", "0.5"]):
        line = gzip_line(*flags)
        assert line.startswith("gzip: ") and "of the input" in line, (flags, line)
    out.unlink()
    assert main(["compress", str(source), "-o", str(out), "--gzip"]) == 1
    assert "error: --gzip does nothing in a lossless rewrite" in capsys.readouterr().err and not out.exists()


def test_compress_validate_blockwise_is_right_in_both_runtimes(tmp_path: Path, capsys) -> None:
    import engine
    from engine.format.builder import GraphBuilder

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    h = b.fully_connected(b.input("x", (4, 256)), rng.normal(0, 0.1, (128, 256)).astype(np.float32), activation="RELU")
    b.output(b.fully_connected(h, rng.normal(0, 0.1, (64, 128)).astype(np.float32)), "y")
    source, out, report = tmp_path / "mlp.tflite", tmp_path / "block.tflite", tmp_path / "r.json"
    engine.write_model(b.build(), source)
    args = ["compress", str(source), "-o", str(out), "--quantize", "dynamic-int4", "--granularity", "block:32"]
    assert main([*args, "--validate", "--min-sqnr", "10", "--report", str(report)]) == 0
    assert "(judged by the default runtime (XNNPACK) and the builtin kernels)" in capsys.readouterr().out
    runtimes = json.loads(report.read_text())["validation"]["runtimes"]
    assert all(r["decides"] and r["worst_sqnr_db"] > 10 for r in runtimes.values()), runtimes


def test_bad_compression_options_one_line_no_output_file(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    model, out = mediapipe["hand_recrop"], tmp_path / "out.tflite"
    _assert_clean_error(_run("compress", model, "-o", out, "--quantize", "int3"), "unknown --quantize mode 'int3'")
    _assert_clean_error(
        _run("compress", model, "-o", out, "--quantize", "weight-int8", "--granularity", "block:7"), "block:7"
    )
    _assert_clean_error(
        _run("compress", model, "-o", out, "--quantize", "weight-int4", "--bits", "6"), "at most 4-bit levels"
    )
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"quantize": "weight-int8", "ops": {"CONV_2D": {"granularty": "tensor"}}}')
    _assert_clean_error(_run("compress", model, "-o", out, "--recipe", recipe), "unknown option 'granularty'")
    recipe.write_text("{not json")
    _assert_clean_error(_run("compress", model, "-o", out, "--recipe", recipe), "not valid JSON")
    _assert_clean_error(_run("compress", model, "-o", out, "--recipe", tmp_path / "missing.json"), "missing.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]
    # Validation failing once the file is written: exit 3, and the one error line says the file is there.
    face = mediapipe["face_landmark_with_attention"]
    before = face.read_bytes()
    failed = _run("compress", face, "-o", out, "--quantize", "weight-int8", "--validate")
    assert failed.returncode == 3 and "Traceback" not in failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith(f"error: wrote {out}; validation failed: ") and "Landmarks2TransformMatrix" in line
    assert face.read_bytes() == before and out.exists()


def test_flags_that_do_nothing_are_refused_naming_the_flag(mediapipe: dict[str, Path], tmp_path: Path, capsys) -> None:
    """In-process (the same main() as ``python -m engine``): each refusal is one line naming the flag (never a
    recipe that was not given), exit 1, nothing written."""
    model, out = str(mediapipe["hand_recrop"]), tmp_path / "out.tflite"
    cases = [
        (["--quantize", "weight-int8", "--observer", "mse"], "--observer does nothing without --quantize int8"),
        (["--quantize", "weight-int8", "--io", "int8"], "--io does nothing without --quantize int8 or int16x8"),
        (["--quantize", "float16", "--bias-correction"], "--bias-correction does nothing without --quantize int8"),
        (["--quantize", "weight-int8", "--strict"], "--strict does nothing without --quantize int8"),
        (["--quantize", "weight-int8", "--calibration", "x.npy"], "--calibration does nothing without --quantize"),
        (["--calibration", "x.npy"], "--calibration does nothing without --quantize int8 or int16x8"),
        (["--quantize", "int8"], "--quantize int8 needs calibration data: pass --calibration DATA"),
        (["--quantize", "weight-int4", "--granularity", "block:32"], "blockwise weights run only in dynamic-int4"),
        (["--quantize", "float16", "--granularity", "tensor"], "--granularity does nothing without an integer --quant"),
        (["--cluster-init", "linear"], "--cluster-init does nothing without --cluster"),
        (
            ["--quantize", "weight-int4", "--gradual"],
            "--gradual stages what is fitted to data: it does nothing without",
        ),
        (["--quantize", "int8", "--gradual", "1"], "--gradual is the number of stages to quantize in, 2 or more"),
        (["--prune-scope", "global"], "--prune-scope does nothing without --prune"),
        (["--prune", "0.5", "--prune-channels", "zero"], "--prune-channels does nothing without --prune-pattern chan"),
        (["--data", "x.npz"], "--data does nothing without --validate"),
        (["--quantize", "weight-int8", "--min-sqnr", "30"], "--min-sqnr does nothing without --validate"),
        (["--report", "r.json"], "--report does nothing in a lossless rewrite"),
        (["--quantize", "weight-int8", "--exclude", "("], "--exclude: bad regular expression '('"),
    ]
    for flags, message in cases:
        assert main(["compress", model, "-o", str(out), *flags]) == 1, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (flags, err)
        assert "recipe" not in err, err
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"quantize": "weight-int8", "cluster_init": "linear"}')
    assert main(["compress", model, "-o", str(out), "--recipe", str(recipe)]) == 1
    assert "recipe: cluster_init does nothing without cluster" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_output_is_never_the_input_and_gets_normal_permissions(
    runnable: dict[str, Path], tmp_path: Path, capsys
) -> None:
    source = tmp_path / "model.tflite"
    source.write_bytes(runnable["hand_recrop"].read_bytes())
    (tmp_path / "link.tflite").symlink_to(source)
    os.link(source, tmp_path / "hard.tflite")
    aliases = ("sub/../model.tflite", "link.tflite", "hard.tflite")
    for output in (source, *(tmp_path / alias for alias in aliases)):
        assert main(["compress", str(source), "-o", str(output), "--quantize", "float16"]) == 1
        assert f"-o {output} is the input file" in capsys.readouterr().err
        with pytest.raises(EngineError, match="is the input file"):  # the Python API alike
            engine.compress(source, output=output, quantize="float16")
    assert source.read_bytes() == runnable["hand_recrop"].read_bytes()
    umask = os.umask(0o022)
    try:
        existing = tmp_path / "existing.tflite"
        existing.write_bytes(b"old")
        existing.chmod(0o600)
        for output, flags in ((tmp_path / "new.tflite", []), (existing, ["--quantize", "float16"])):
            assert main(["compress", str(source), "-o", str(output), *flags]) == 0
            assert stat.S_IMODE(output.stat().st_mode) == 0o644, output
    finally:
        os.umask(umask)


def test_readme_python_example_runs_as_written(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    (tmp_path / "model.tflite").write_bytes(mediapipe["iris_landmark"].read_bytes())
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "int8.tflite").exists() and (tmp_path / "mixed.tflite").exists()
    assert read_model(tmp_path / "full.int8.tflite").main.inputs[0].type_name == "INT8"  # io="int8"


def test_the_process_entry_exits_with_mains_code_and_freezes_the_collector_only_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` (``python -m engine``, the ``litert-engine`` script) exits with ``main``'s code and freezes the
    garbage collector just before, so the interpreter's last collection skips everything loaded; ``main``, which
    programs call in-process, leaves the collector alone."""
    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    missing = tmp_path / "missing.tflite"
    assert main(["inspect", str(missing)]) == 1 and not frozen
    with pytest.raises(SystemExit) as exited:
        cli.run(["inspect", str(missing)])
    assert exited.value.code == 1 and frozen == [1]
    path = tmp_path / "tiny.tflite"
    b = GraphBuilder()
    b.output(b.op("RELU", [b.input("x", (1, 4))], [(1, 4)])[0], "y")
    write_model(b.build(), path)
    with pytest.raises(SystemExit) as exited:
        cli.run(["inspect", str(path)])
    assert exited.value.code == 0 and frozen == [1, 1]
