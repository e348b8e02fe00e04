"""engine.runtime.latency: interleaved LiteRT timing returns one sane figure per model, in order, or one clear error.

No test compares a time with a fixed threshold: the only timing claim is that a model doing 10x the work of
another, timed in the same interleaved rounds, is measured slower.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import EngineError
from engine.format.builder import GraphBuilder
from engine.format.writer import model_to_bytes
from engine.runtime.latency import RUNTIMES, Latency, measure_latency, median_latency_ms
from engine.zoo import mediapipe_model, model_photo

WIDTH = 512
FAST = {"runs": 5, "warmup": 1}


def _mlp(layers: int, input_name: str = "x") -> bytes:
    """``layers`` FULLY_CONNECTED layers of WIDTH x WIDTH: the work grows with ``layers``."""
    rng = np.random.default_rng(layers)
    b = GraphBuilder()
    y = b.input(input_name, (1, WIDTH))
    for _ in range(layers):
        weights = (rng.standard_normal((WIDTH, WIDTH)) / math.sqrt(WIDTH)).astype(np.float32)
        y = b.fully_connected(y, weights, activation="RELU")
    b.output(y, "y")
    return model_to_bytes(b.build())


@pytest.fixture(scope="module")
def small() -> bytes:
    return _mlp(1)


@pytest.fixture(scope="module")
def big() -> bytes:
    return _mlp(10)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_positive_finite_figure_per_model_in_order(runtime: str, small: bytes, big: bytes) -> None:
    measured = measure_latency([small, big, small], runtime=runtime, **FAST)
    assert len(measured) == 3 and all(isinstance(m, Latency) for m in measured)
    assert all(0 < m.median_ms <= m.p90_ms and math.isfinite(m.p90_ms) for m in measured)
    # the 10x model is slower than the small one on either side of it, wherever it stands in the list
    assert measured[1].median_ms > max(measured[0].median_ms, measured[2].median_ms)
    first, second = median_latency_ms([big, small], runtime=runtime, **FAST)
    assert first > second


def test_data_by_name_by_position_and_quantized_for_an_integer_interface(small: bytes, tmp_path: Path) -> None:
    source = tmp_path / "small.tflite"
    source.write_bytes(small)
    integer = tmp_path / "small.int8.tflite"
    samples = np.random.default_rng(0).standard_normal((4, 1, WIDTH)).astype(np.float32)
    engine.compress(source, output=integer, quantize="int8", io="int8", calibration=samples)
    data = {"x": samples[0]}
    # float data for the int8 input is quantized with its parameters; "other" is fed by position
    times = median_latency_ms([source, integer, _mlp(1, input_name="other")], data, **FAST)
    assert len(times) == 3 and all(t > 0 and math.isfinite(t) for t in times)
    with pytest.raises(EngineError, match="data for unknown input"):
        median_latency_ms([source], {"y": samples[0]}, **FAST)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_real_model_on_a_photo(runtime: str) -> None:
    name = "hand_recrop"
    path = mediapipe_model(name)
    times = median_latency_ms([path, path.read_bytes()], {"input_1": model_photo(name)}, runtime=runtime, **FAST)
    assert len(times) == 2 and all(t > 0 and math.isfinite(t) for t in times)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_a_model_that_does_not_load_names_itself_and_the_runtime(small: bytes) -> None:
    # Convolution2DTransposeBias: the builtin kernels have no such op; XNNPACK, in the default runtime, has
    selfie = mediapipe_model("selfie_segmentation")
    with pytest.raises(EngineError, match=r"selfie_segmentation\.tflite \(builtin runtime\) uses custom op"):
        median_latency_ms([selfie], runtime="builtin", **FAST)
    assert median_latency_ms([selfie], runtime="default", **FAST)[0] > 0
    with pytest.raises(EngineError, match=r"\(default runtime\): interpreter error: .*not a valid Flatbuffer"):
        median_latency_ms([small, b"not a model" * 8], runtime="default", **FAST)


def test_bad_requests_are_refused(small: bytes) -> None:
    with pytest.raises(EngineError, match="unknown runtime 'gpu'"):
        median_latency_ms([small], runtime="gpu")
    with pytest.raises(EngineError, match="runs must be at least 1"):
        median_latency_ms([small], runs=0)
    two_inputs = GraphBuilder()
    two_inputs.output(two_inputs.add(two_inputs.input("a", (1, WIDTH)), two_inputs.input("b", (1, WIDTH))))
    with pytest.raises(EngineError, match="reference has 1 inputs"):
        median_latency_ms([small, model_to_bytes(two_inputs.build())], **FAST)
    assert median_latency_ms([]) == []
