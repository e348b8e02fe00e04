"""``engine.evaluate`` / ``python -m engine evaluate``: every figure of the record is there and agrees with the
measurement it comes from; bad input is one clear error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import EngineError
from engine.evaluation import headline
from engine.runtime.litert import run
from engine.runtime.validate import validate
from engine.zoo import mediapipe_model, model_photo
from tests.accuracy.models import small_net

FAST = {"runs": 3, "warmup": 1, "footprint": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("evaluate")
    model, samples = small_net(folder)
    engine.compress(model, output=folder / "int8.tflite", quantize="int8", calibration=samples[:16])
    np.save(folder / "data.npy", samples[16:])
    outputs = np.stack([run(model, sample[None])["probabilities"][0] for sample in samples[16:]])
    labels = outputs.argmax(axis=1)
    labels[:8] = (labels[:8] + 1) % 10  # the float model is right on 24 of the 32 samples
    np.save(folder / "labels.npy", labels)
    return {
        "model": folder / "int8.tflite",
        "reference": model,
        "data": folder / "data.npy",
        "labels": folder / "labels.npy",
    }


def test_record_against_a_reference_with_labels(files: dict[str, Path]) -> None:
    found = engine.evaluate(files["model"], files["reference"], files["data"], files["labels"], threads=2, **FAST)
    record = found.to_dict()
    assert set(record) == {"size", "quality", "measured"}
    size = record["size"]
    assert size["file_bytes"] == files["model"].stat().st_size
    assert size["reference"]["file_bytes"] == files["reference"].stat().st_size
    assert size["bytes_by_dtype"]["INT8"] > 0 and "INT8" not in size["reference"]["bytes_by_dtype"]
    assert size["parameters"] == size["reference"]["parameters"] > 0

    expected = validate(files["reference"], files["model"], files["data"], intermediates=False).to_dict()
    quality = record["quality"]
    assert quality["worst_sqnr_db"] == expected["worst_sqnr_db"] and quality["samples"] == 32
    assert quality["runtimes"] == expected["runtimes"]
    assert quality["reference_accuracy"] == 0.75
    assert quality["accuracy_change_points"] == pytest.approx(100 * (quality["accuracy"] - 0.75))

    latency = record["measured"]["latency"]
    assert [(e["runtime"], e["threads"]) for e in latency] == [("default", 1), ("default", 2), ("builtin", 1),
                                                                ("builtin", 2)]  # fmt: skip
    for e in latency:
        assert 0 < e["median_ms"] <= e["p90_ms"] and 0 < e["reference_median_ms"] <= e["reference_p90_ms"]
    assert record["measured"]["footprint"] is None and record["measured"]["settings"]["runs"] == 3

    figures = headline(record)
    assert figures["size_ratio"] == pytest.approx(size["file_bytes"] / size["reference"]["file_bytes"])
    assert figures["latency_ms"] == latency[0]["median_ms"] and figures["accuracy"] == quality["accuracy"]
    text = found.format_text()
    assert "accuracy on 32 labelled samples" in text and "builtin kernels, 2 threads:" in text


def test_a_model_alone_and_its_footprint(files: dict[str, Path]) -> None:
    record = engine.evaluate(files["reference"], runs=2, warmup=0, threads=1).to_dict()
    assert record["quality"] is None and record["size"]["reference"] is None
    assert [(e["runtime"], e["threads"]) for e in record["measured"]["latency"]] == [("default", 1), ("builtin", 1)]
    footprint = record["measured"]["footprint"]
    assert footprint["error"] is None and footprint["load_ms"] > 0 and footprint["peak_memory_bytes"] >= 0
    assert headline(record)["worst_sqnr_db"] is None


def test_the_same_file_is_exact(files: dict[str, Path]) -> None:
    quality = engine.evaluate(files["reference"], files["reference"], **FAST).to_dict()["quality"]
    assert quality["worst_sqnr_db"] == "inf" and quality["inputs"]["image"]["source"] == "generated"
    assert math.isinf(headline({"size": {"file_bytes": 1, "gzip_bytes": 1}, "quality": quality})["worst_sqnr_db"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: engine.evaluate(f["model"], labels=f["labels"], **FAST), "labels need data"),
        (lambda f: engine.evaluate(f["model"].with_name("none.tflite"), **FAST), "none.tflite"),
        (lambda f: engine.evaluate(f["model"], f["reference"], f["data"], np.zeros(3, np.int64), **FAST),
         "labels hold 3 entries but the data holds 32 samples"),
        (lambda f: engine.evaluate(f["model"], f["reference"], f["labels"], **FAST), "data for input 'image'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error(files: dict[str, Path], call, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        call(files)


def test_command_line(files: dict[str, Path], tmp_path: Path) -> None:
    def cli(*args: object) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "engine", "evaluate", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    done = cli(files["model"], "--reference", files["reference"], "--data", files["data"], "--runs", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["quality"]["samples"] == 32
    done = cli(files["model"], "--labels", files["labels"])
    assert done.returncode == 1 and done.stderr.strip().splitlines() == ["error: labels need data: one class per "
                                                                        "sample of the data"]  # fmt: skip
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")
    done = cli(broken)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_real_model(tmp_path: Path) -> None:
    source = mediapipe_model("face_detection_short_range")
    engine.compress(source, output=tmp_path / "int8.tflite", quantize="weight-int8")
    np.save(tmp_path / "photo.npy", model_photo("face_detection_short_range"))
    record = engine.evaluate(tmp_path / "int8.tflite", source, tmp_path / "photo.npy", runs=5).to_dict()
    assert 20 < float(record["quality"]["worst_sqnr_db"]) < 80
    assert headline(record)["size_ratio"] < 0.8  # its weights were float16 already
    assert record["size"]["bytes_by_dtype"]["INT8"] > record["size"]["bytes_by_dtype"].get("FLOAT16", 0)
    footprint = record["measured"]["footprint"]
    assert footprint["load_ms"] > 0 and footprint["peak_memory_bytes"] > 1_000_000  # XNNPACK packs the weights
