"""Validation in the official interpreter, on real MediaPipe models and real photos."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine import validate as v
from engine import zoo
from engine.errors import EngineError


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return zoo.mediapipe_models()  # an EngineError here fails the tests with its message


def _photo(model: str, shape: tuple[int, ...]) -> np.ndarray:
    return zoo.photo_input(shape, np.float32, value_range=zoo.INPUT_RANGES[model])


HAND = "hand_landmark_lite"
HAND_SHAPE = (1, 224, 224, 3)
PALM_SHAPE = (1, 192, 192, 3)


# ------------------------------------------------------------------------------ real models


def test_model_against_itself_is_exact(models: dict[str, Path]) -> None:
    report = v.validate(models[HAND], models[HAND], _photo(HAND, HAND_SHAPE))
    assert [o.name for o in report.outputs] == ["Identity", "Identity_1", "Identity_2", "Identity_3"]
    assert all(o.bit_identical and o.sqnr_db == math.inf for o in report.outputs)
    assert all(o.max_abs_error == 0.0 and o.cosine_similarity == pytest.approx(1.0) for o in report.outputs)
    landmarks = report.outputs[0]  # rank-2 [1, 63]: treated as class scores by the heuristic
    assert landmarks.top1_agreement == 1.0
    assert report.outputs[1].top1_agreement is None  # [1, 1] has a single column
    assert report.worst_sqnr_db == math.inf
    assert len(report.intermediates) > 50
    assert all(t.sqnr_db == math.inf for t in report.intermediates)
    encoded = json.loads(json.dumps(report.to_dict()))
    assert encoded["worst_sqnr_db"] == "inf"
    assert encoded["outputs"][0]["shape"] == [1, 63]
    assert encoded["inputs"]["input_1"]["source"] == "given"
    assert "Identity_3" in report.format_text()


def test_different_models_give_finite_sqnr(models: dict[str, Path]) -> None:
    lite, full = models["palm_detection_lite"], models["palm_detection_full"]
    report = v.validate(lite, full.read_bytes(), _photo("palm_detection_lite", PALM_SHAPE), class_scores=True)
    assert [o.name for o in report.outputs] == ["Identity", "Identity_1"]
    for o in report.outputs:
        assert not o.bit_identical
        assert math.isfinite(o.sqnr_db) and o.max_abs_error > 0
    assert report.outputs[0].top1_agreement is not None  # class_scores=True: last dim 18 > 1
    assert report.outputs[1].top1_agreement is None
    assert report.worst_sqnr_db == min(o.sqnr_db for o in report.outputs)
    assert any(math.isfinite(t.sqnr_db) for t in report.intermediates)
    text = report.format_text()
    assert "Identity_1" in text and "intermediates:" in text


def test_generated_inputs_are_seeded(models: dict[str, Path]) -> None:
    lite, full = models["palm_detection_lite"], models["palm_detection_full"]
    a = v.validate(lite, full, seed=3, intermediates=False)
    b = v.validate(lite, full, seed=3, intermediates=False)
    c = v.validate(lite, full, seed=4, intermediates=False)
    assert a.intermediates == []
    assert a.inputs["input_1"]["source"] == "generated"
    assert -1.0 <= a.inputs["input_1"]["min"] < a.inputs["input_1"]["max"] <= 1.0
    assert a.outputs == b.outputs != c.outputs


def test_run_returns_outputs_by_name(models: dict[str, Path]) -> None:
    photo = _photo(HAND, HAND_SHAPE)
    first = v.run(models[HAND], {"input_1": photo})
    second = v.run(models[HAND].read_bytes(), photo)
    assert {k: a.shape for k, a in first.items()} == {
        "Identity": (1, 63),
        "Identity_1": (1, 1),
        "Identity_2": (1, 1),
        "Identity_3": (1, 63),
    }
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("face_landmark_with_attention", "Landmarks2TransformMatrix"),
        ("selfie_segmentation", "Convolution2DTransposeBias"),
    ],
)
def test_custom_op_model_names_the_op(models: dict[str, Path], name: str, op: str) -> None:
    with pytest.raises(EngineError, match=op):
        v.validate(models[name], models[name])


def test_incompatible_models_are_an_engine_error(models: dict[str, Path]) -> None:
    with pytest.raises(EngineError, match="candidate"):
        v.validate(models["palm_detection_lite"], models["face_detection_short_range"])


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        v.run(tmp_path / "nothing.tflite", {})


def test_missing_interpreter_says_what_to_install(models: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(EngineError, match=r"litert-engine\[validate\]"):
        v.run(models[HAND], _photo(HAND, HAND_SHAPE))


# --------------------------------------------------------------------------------- input data


def test_npz_keyed_by_name_and_single_arrays(models: dict[str, Path], tmp_path: Path) -> None:
    photo = _photo(HAND, HAND_SHAPE)
    np.savez(tmp_path / "named.npz", input_1=photo)
    np.savez(tmp_path / "single.npz", photo)
    np.save(tmp_path / "single.npy", photo)
    named = v.load_inputs(tmp_path / "named.npz")
    assert isinstance(named, dict) and list(named) == ["input_1"]
    for single in ("single.npz", "single.npy"):
        np.testing.assert_array_equal(v.load_inputs(tmp_path / single), photo)
    expected = v.run(models[HAND], photo)
    report = v.validate(models[HAND], models[HAND], named, intermediates=False)
    assert report.inputs["input_1"]["max"] == pytest.approx(float(photo.max()))
    np.testing.assert_array_equal(v.run(models[HAND], v.load_inputs(tmp_path / "single.npy"))["Identity"],
                                  expected["Identity"])  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"wrong_name": np.zeros(HAND_SHAPE, np.float32)}, "wrong_name"),
        ({}, "no data for input.*input_1"),
        ({"input_1": np.zeros((1, 64, 64, 3), np.float32)}, r"input_1.*\[1, 224, 224, 3\]"),
        (np.zeros((224, 224, 3), np.float32), "input_1"),
    ],
)
def test_bad_data_names_the_input(models: dict[str, Path], data: object, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        v.validate(models[HAND], models[HAND], data, intermediates=False)


def test_load_inputs_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="npz"):
        v.load_inputs(tmp_path / "data.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(EngineError, match="broken"):
        v.load_inputs(tmp_path / "broken.npz")


def _detail(dtype: type, scale: float = 0.0, zero_point: int = 0) -> dict:
    return {"name": "x", "dtype": dtype, "quantization": (scale, zero_point)}


def test_cast_quantizes_float_data_and_passes_integer_data() -> None:
    int8 = _detail(np.int8, 0.5, -3)
    f32 = _detail(np.float32)
    floats = np.array([-1.0, 0.0, 0.26, 100.0], np.float32)
    np.testing.assert_array_equal(v._cast_for(floats, f32, int8), [-5, -3, -2, 127])
    already = np.array([-5, 7], np.int8)
    assert v._cast_for(already, int8, int8) is already
    np.testing.assert_allclose(v._cast_for(already, int8, f32), [-1.0, 5.0])
    np.testing.assert_array_equal(v._cast_for(already, int8, _detail(np.uint8, 0.25, 128)), [124, 148])


# ------------------------------------------------------------------------------------ metrics


def test_sqnr_matches_known_noise_power() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(10_000)
    noise = rng.standard_normal(10_000)
    noise *= 0.1 / np.sqrt(np.mean(noise**2))  # noise power exactly 0.01 of ...
    ref /= np.sqrt(np.mean(ref**2))  # ... signal power exactly 1: 20 dB
    assert v.sqnr_db(ref, ref + noise) == pytest.approx(20.0)
    assert v.sqnr_db(ref, ref) == math.inf
    assert v.sqnr_db(np.zeros(3), np.ones(3)) == -math.inf


@given(
    arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3, allow_subnormal=False)).filter(
        lambda a: np.any(a)
    ),
    st.floats(1e-3, 10.0),
)
def test_sqnr_of_scaled_copy(ref: np.ndarray, k: float) -> None:
    assert v.sqnr_db(ref, ref * (1 + k)) == pytest.approx(-20 * math.log10(k), abs=1e-6)
    assert v.cosine_similarity(ref, ref * (1 + k)) == pytest.approx(1.0)
    assert v.cosine_similarity(ref, -ref) == pytest.approx(-1.0)
    assert v.max_abs_error(ref, ref * (1 + k)) == pytest.approx(k * np.abs(ref).max())


def test_cosine_and_top1_on_known_arrays() -> None:
    assert v.cosine_similarity([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert v.cosine_similarity([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert v.cosine_similarity([0.0, 0.0], [1.0, 0.0]) == 0.0
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    cand = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.5, 0.5]])
    assert v.top1_agreement(ref, cand) == 0.75


@given(
    arrays(np.float64, 20, elements=st.floats(-10, 10)),
    st.floats(0.01, 1.0),
    st.integers(-20, 20),
)
def test_quantize_round_trip_within_half_a_step(x: np.ndarray, scale: float, zero_point: int) -> None:
    q = v.quantize_array(x, scale, zero_point, np.int16)
    assert q.dtype == np.int16
    assert np.all(np.abs(v.dequantize_array(q, scale, zero_point) - x) <= scale / 2 + 1e-9)


def test_report_json_encodes_non_finite_values() -> None:
    out = v.OutputComparison("y", (2,), math.nan, 0.0, "y", 1.0, None, False)
    report = v.ValidationReport(outputs=[out])
    assert math.isnan(report.worst_sqnr_db)
    assert json.loads(json.dumps(report.to_dict()))["outputs"][0]["sqnr_db"] == "nan"
    assert v.ValidationReport(outputs=[]).to_dict()["worst_sqnr_db"] == "inf"


def _two_in_two_out(quantized_io: bool) -> bytes:
    """y0 = a + b, y1 = a * b; with ``quantized_io`` the graph's inputs and outputs are int8 around it."""
    from engine import QuantizationParams, model_to_bytes
    from engine.builder import GraphBuilder

    def q(scale: float) -> QuantizationParams:
        return QuantizationParams(scale=np.array([scale], np.float32), zero_point=np.array([3], np.int64))

    b = GraphBuilder()
    shape = (1, 4, 4, 2)
    a, c = (
        b.input("a", shape, np.int8 if quantized_io else np.float32),
        b.input("b", shape, np.int8 if quantized_io else np.float32),
    )
    if quantized_io:
        a.quantization, c.quantization = q(1 / 64), q(1 / 64)
        a, c = (b.op("DEQUANTIZE", [t], [shape], dtype=np.float32)[0] for t in (a, c))
    outs = [b.add(a, c), b.mul(a, c)]
    for i, out in enumerate(outs):
        if quantized_io:
            out = b.op("QUANTIZE", [out], [shape], dtype=np.int8)[0]
            out.quantization = q(1 / 32)
        b.output(out, f"y{i}")
    return model_to_bytes(b.build())


def test_several_inputs_outputs_and_int8_boundaries(tmp_path: Path) -> None:
    reference, candidate = _two_in_two_out(False), _two_in_two_out(True)
    rng = np.random.default_rng(3)
    data = {name: rng.uniform(-1, 1, (1, 4, 4, 2)).astype(np.float32) for name in ("a", "b")}
    np.savez(tmp_path / "ab.npz", **data)
    same = v.validate(reference, reference, v.load_inputs(tmp_path / "ab.npz"))
    assert [o.name for o in same.outputs] == ["y0", "y1"] and all(o.bit_identical for o in same.outputs)
    report = v.validate(reference, candidate, data, intermediates=False)
    # int8 with scale 1/64 in and 1/32 out: errors of about half an output step, SQNR well above 20 dB.
    assert all(20 < o.sqnr_db < 60 and o.max_abs_error <= 1 / 32 + 1 / 64 for o in report.outputs)
    generated = v.validate(reference, candidate, intermediates=False)
    assert all(o.sqnr_db > 20 for o in generated.outputs)
