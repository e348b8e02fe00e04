"""The command line as users and CI call it: ``python -m engine ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine import read_model, structural_diff
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
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32))
    result = _run("validate", path, path, "--data", tmp_path / "x.npy", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outputs"] and all(o["bit_identical"] for o in report["outputs"])
    lite, full = runnable["palm_detection_lite"], runnable["palm_detection_full"]
    below = _run("validate", lite, full, "--no-intermediates", "--min-sqnr", "30")
    assert below.returncode == 3, below.stderr
    assert "is below 30.0 dB" in below.stderr and "Traceback" not in below.stderr


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
    assert "x weight-int8 (dequantize, INT8, channel)" in result.stdout and "worst output SQNR" in result.stdout
    saved = json.loads(report.read_text())
    compressed = [t for t in saved["tensors"] if t["action"] == "compressed"]
    assert compressed and all(t["bytes_after"] < t["bytes_before"] and t["weight_sqnr_db"] > 30 for t in compressed)
    assert saved["file_bytes_after"] == out.stat().st_size and saved["validation"]["outputs"]


def test_bad_compression_options_one_line_no_output_file(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    model, out = mediapipe["hand_recrop"], tmp_path / "out.tflite"
    _assert_clean_error(_run("compress", model, "-o", out, "--quantize", "int3"), "unknown quantize mode 'int3'")
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
    before = model.read_bytes()
    _assert_clean_error(
        _run("compress", mediapipe["selfie_segmentation"], "-o", out, "--quantize", "weight-int8", "--validate"),
        "custom op",
    )
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tflite", "recipe.json"]


def test_readme_python_example_runs_as_written(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    (tmp_path / "model.tflite").write_bytes(mediapipe["iris_landmark"].read_bytes())
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "int8.tflite").exists() and (tmp_path / "mixed.tflite").exists()
    assert read_model(tmp_path / "full.int8.tflite").main.inputs[0].type_name == "INT8"  # io="int8"
