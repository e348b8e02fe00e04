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

from engine import read_model, zoo
from engine.errors import EngineError
from engine.quant import metrics
from engine.runtime import litert as rt
from engine.runtime import validate as v
from engine.runtime.calibrate import load_calibration


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return zoo.mediapipe_models()  # an EngineError here fails the tests with its message


def _photo(model: str, shape: tuple[int, ...]) -> np.ndarray:
    return zoo.photo_input(shape, np.float32, value_range=zoo.INPUT_RANGES[model])


HAND = "hand_landmark_lite"
HAND_SHAPE = (1, 224, 224, 3)
PALM_SHAPE = (1, 192, 192, 3)


# ------------------------------------------------------------------------------ real models


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
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
    # Both runtimes, each with its own section; intermediates come from the builtin kernels only.
    assert [r.runtime for r in report.runtimes] == ["default", "builtin"] and report.failures == []
    assert [o.name for o in report.runtimes[0].outputs] == [o.name for o in report.outputs]
    assert report.runtimes[0].intermediates is None and report.runtimes[1].intermediates == report.intermediates
    encoded = json.loads(json.dumps(report.to_dict()))
    assert encoded["worst_sqnr_db"] == "inf" and encoded["samples"] == 1
    for runtime in ("default", "builtin"):
        assert encoded["runtimes"][runtime]["outputs"][0]["shape"] == [1, 63]
        assert encoded["runtimes"][runtime]["worst_sqnr_db"] == "inf"
    assert encoded["runtimes"]["default"]["intermediates"] is None
    assert encoded["inputs"]["input_1"]["source"] == "given"
    text = report.format_text()
    assert "Identity_3" in text and "intermediates: builtin kernels only" in text
    assert "default runtime (XNNPACK):" in text and "builtin kernels:" in text


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
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
    assert report.worst_sqnr_db == min(r.worst_sqnr_db for r in report.runtimes)
    assert any(math.isfinite(t.sqnr_db) for t in report.intermediates)
    text = report.format_text()
    assert "Identity_1" in text and "intermediates:" in text


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_generated_inputs_are_seeded(models: dict[str, Path]) -> None:
    lite, full = models["palm_detection_lite"], models["palm_detection_full"]
    a = v.validate(lite, full, seed=3, intermediates=False)
    b = v.validate(lite, full, seed=3, intermediates=False)
    c = v.validate(lite, full, seed=4, intermediates=False)
    assert a.intermediates == []
    assert a.inputs["input_1"]["source"] == "generated"
    assert -1.0 <= a.inputs["input_1"]["min"] < a.inputs["input_1"]["max"] <= 1.0
    assert a.outputs == b.outputs != c.outputs


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_run_returns_outputs_by_name(models: dict[str, Path]) -> None:
    photo = _photo(HAND, HAND_SHAPE)
    first = rt.run(models[HAND], {"input_1": photo})
    second = rt.run(models[HAND].read_bytes(), photo)
    assert {k: a.shape for k, a in first.items()} == {
        "Identity": (1, 63),
        "Identity_1": (1, 1),
        "Identity_2": (1, 1),
        "Identity_3": (1, 63),
    }
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_custom_op_model_names_the_op(models: dict[str, Path]) -> None:
    """A reference no runtime runs is an error naming the op; one only XNNPACK runs (MediaPipe's selfie
    segmentation, whose Convolution2DTransposeBias only XNNPACK has) is compared there and the builtin section
    says why it is not compared: the reference's own limit is no failure of the candidate."""
    name = "face_landmark_with_attention"
    with pytest.raises(EngineError, match=r"default runtime \(XNNPACK\) and builtin kernels: .*Landmarks2Transform"):
        v.validate(models[name], models[name])
    selfie = models["selfie_segmentation"]
    report = v.validate(selfie, selfie, intermediates=False)
    default, builtin = report.runtimes
    assert default.decides and default.worst_sqnr_db == math.inf and all(o.bit_identical for o in default.outputs)
    assert not builtin.decides and "Convolution2DTransposeBias" in builtin.skipped and builtin.error is None
    assert report.failures == [] and report.worst_sqnr_db == math.inf
    assert "builtin kernels: not compared, the reference fails here" in report.format_text()
    with pytest.raises(EngineError, match="Convolution2DTransposeBias"):
        v.validate(selfie, selfie, runtime="builtin")


def _constant_output(dequantized: bool) -> bytes:
    """A model whose output is a constant; ``dequantized`` stores it as float16 behind DEQUANTIZE, which XNNPACK
    fails to run ("failed to setup XNNPACK runtime") while the builtin kernels run it."""
    from engine import model_to_bytes
    from engine.format.builder import GraphBuilder

    w = np.linspace(-1, 1, 128, dtype=np.float32).reshape(8, 16)
    b = GraphBuilder()
    b.output(b.dequantize(b.constant(w.astype(np.float16), "w16")) if dequantized else b.constant(w, "w"), "w")
    return model_to_bytes(b.build())


def test_a_candidate_failing_in_one_runtime_is_a_failure_naming_it() -> None:
    report = v.validate(_constant_output(False), _constant_output(True), runtime="both")
    default, builtin = report.runtimes
    assert default.error is not None and default.error.startswith("candidate (")
    assert "interpreter error: " in default.error and "\n" not in default.error
    assert default.outputs == [] and default.worst_sqnr_db == -math.inf
    assert builtin.error is None and all(o.sqnr_db > 60 for o in builtin.outputs)  # float16 rounding only
    assert report.failures == [f"default runtime (XNNPACK): {default.error}"]
    assert report.worst_sqnr_db == -math.inf and report.outputs == builtin.outputs
    assert "FAILED in the default runtime (XNNPACK): candidate" in report.format_text()
    encoded = json.loads(json.dumps(report.to_dict()))
    assert encoded["failures"] == report.failures and encoded["runtimes"]["default"]["worst_sqnr_db"] == "-inf"
    only_builtin = v.validate(_constant_output(False), _constant_output(True), runtime="builtin")
    assert [r.runtime for r in only_builtin.runtimes] == ["builtin"] and only_builtin.failures == []


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_default_runtime_is_the_interpreter_as_users_build_it(models: dict[str, Path], monkeypatch) -> None:
    """The judge is ``Interpreter(model_path=p)`` with one thread and nothing else; the builtin runtime only adds
    the op resolver (and keeps intermediates when asked)."""
    import ai_edge_litert.interpreter as litert

    calls = []

    class Recording(litert.Interpreter):
        def __init__(self, **kwargs):
            calls.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(litert, "Interpreter", Recording)
    path = models["hand_recrop"]
    v.validate(path, path, runtime="default")
    assert calls == [{"model_path": str(path), "num_threads": 1}] * 2
    calls.clear()
    v.validate(path, path.read_bytes(), runtime="builtin")
    resolver = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    options = {"num_threads": 1, "experimental_op_resolver_type": resolver, "experimental_preserve_all_tensors": True}
    assert calls == [{"model_path": str(path), **options}, {"model_content": path.read_bytes(), **options}]
    with pytest.raises(EngineError, match="unknown runtime 'gpu'"):
        v.validate(path, path, runtime="gpu")


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_incompatible_models_are_an_engine_error(models: dict[str, Path]) -> None:
    with pytest.raises(EngineError, match="candidate"):
        v.validate(models["palm_detection_lite"], models["face_detection_short_range"])


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        rt.run(tmp_path / "nothing.tflite", {})


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_missing_interpreter_says_what_to_install(models: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(EngineError, match=r"litert-engine\[validate\]"):
        rt.run(models[HAND], _photo(HAND, HAND_SHAPE))


# --------------------------------------------------------------------------------- input data


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_data_files_are_the_calibration_format(models: dict[str, Path], tmp_path: Path) -> None:
    """.npz by name, one array in an .npz under any name or in an .npy, samples with or without the batch axis:
    the loader calibration uses, so the same file serves both."""
    photo = _photo(HAND, HAND_SHAPE)
    expected = v.validate(models[HAND], models[HAND], photo, intermediates=False)
    np.savez(tmp_path / "named.npz", input_1=photo)
    np.savez(tmp_path / "photos.npz", photos=photo)  # one array, not under the input's name nor arr_0
    np.savez(tmp_path / "arr_0.npz", photo[np.newaxis])  # the batch axis kept: [samples, 1, H, W, C]
    np.save(tmp_path / "single.npy", photo)
    for name in ("named.npz", "photos.npz", "arr_0.npz", "single.npy"):
        report = v.validate(models[HAND], models[HAND], tmp_path / name, intermediates=False)
        assert report.samples == 1 and report.inputs == expected.inputs, name
    loaded = load_calibration(tmp_path / "photos.npz", read_model(models[HAND]))
    assert loaded.count == 1 and np.array_equal(loaded.sample(0)[0], photo)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_every_sample_runs_and_the_worst_decides(models: dict[str, Path], tmp_path: Path) -> None:
    lite, full = models["palm_detection_lite"], models["palm_detection_full"]
    photos = np.stack([zoo.photo_input(PALM_SHAPE, np.float32, i, value_range=(0.0, 1.0))[0] for i in range(3)])
    np.save(tmp_path / "photos.npy", photos)  # [3, 192, 192, 3]: samples without the batch axis
    report = v.validate(lite, full, tmp_path / "photos.npy", runtime="default")
    singles = [v.validate(lite, full, photo[np.newaxis], runtime="default") for photo in photos]
    assert report.samples == 3 and report.inputs["input_1"]["shape"] == [1, 192, 192, 3]
    for k, output in enumerate(report.outputs):
        per_sample = [s.outputs[k].sqnr_db for s in singles]
        assert len(set(per_sample)) == 3 and output.sqnr_db == min(per_sample)
        assert output.median_sqnr_db == pytest.approx(float(np.median(per_sample)))
        assert output.max_abs_error == max(s.outputs[k].max_abs_error for s in singles)
    assert report.worst_sqnr_db == min(s.worst_sqnr_db for s in singles)
    assert "median" in report.format_text() and "inputs (3 samples)" in report.format_text()


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"wrong_name": np.zeros(HAND_SHAPE, np.float32)}, "wrong_name"),
        ({}, "no samples for input.*input_1"),
        ({"input_1": np.zeros((1, 64, 64, 3), np.float32)}, r"input_1.*\[1, 224, 224, 3\]"),
        (np.zeros((224, 224, 3), np.float32), "input_1"),
        (np.full((2, *HAND_SHAPE), np.nan, np.float32), "input 'input_1' contains NaN or infinite values"),
        (np.zeros((2, *HAND_SHAPE), np.int32), "input 'input_1' is int32; the input is FLOAT32"),
        (np.zeros((0, *HAND_SHAPE), np.float32), "input 'input_1' holds no samples"),
    ],
)
def test_bad_data_names_the_input(models: dict[str, Path], data: object, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        v.validate(models[HAND], models[HAND], data, intermediates=False)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_bad_data_files_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    for name, content, message in [
        ("data.csv", b"1,2", "must be .npz"),
        ("broken.npz", b"not a zip", "broken.npz: cannot read it"),
        ("missing.npz", None, "missing.npz: file not found"),
    ]:
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(EngineError, match=message):
            v.validate(models[HAND], models[HAND], tmp_path / name)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(EngineError, match="holds no arrays"):
        v.validate(models[HAND], models[HAND], tmp_path / "empty.npz")


def _detail(dtype: type, scale: float = 0.0, zero_point: int = 0) -> dict:
    return {"name": "x", "dtype": dtype, "quantization": (scale, zero_point)}


def test_cast_quantizes_float_data_and_passes_integer_data() -> None:
    int8 = _detail(np.int8, 0.5, -3)
    f32 = _detail(np.float32)
    floats = np.array([-1.0, 0.0, 0.26, 100.0], np.float32)
    np.testing.assert_array_equal(rt.cast_input(floats, f32, int8), [-5, -3, -2, 127])
    already = np.array([-5, 7], np.int8)
    assert rt.cast_input(already, int8, int8) is already
    np.testing.assert_allclose(rt.cast_input(already, int8, f32), [-1.0, 5.0])
    np.testing.assert_array_equal(rt.cast_input(already, int8, _detail(np.uint8, 0.25, 128)), [124, 148])


# ------------------------------------------------------------------------------------ metrics


@given(
    arrays(np.float64, st.integers(1, 8), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)),
    arrays(np.float64, st.integers(1, 8), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)),
)
def test_sqnr_is_a_float_for_any_values(a: np.ndarray, b: np.ndarray) -> None:
    """Never raises (weights near 1e38 overflow to inf outputs; it once hit log10(0)): inf when identical (even
    with infinities), NaN when either holds NaN, -inf for a zero reference."""
    b = np.resize(b, a.shape)
    with np.errstate(over="ignore"):  # float64 -> float32 overflows to inf: more cases, not an error
        pairs = ((a, b), (a.astype(np.float32), b.astype(np.float32)), (a, a))
    for ref, cand in pairs:
        result = metrics.sqnr_db(ref, cand)
        assert isinstance(result, float)
        if np.isnan(ref).any() or np.isnan(cand).any():
            assert math.isnan(result)
        elif np.array_equal(ref, cand):
            assert result == math.inf
        elif not ref.any():
            assert result == -math.inf


def test_sqnr_of_extreme_values() -> None:
    big = np.float32(3e38)
    assert metrics.sqnr_db([1.0], [math.inf]) == -math.inf  # was log10(0): math domain error
    assert metrics.sqnr_db([1.0, math.inf], [1.0, math.inf]) == math.inf
    assert math.isnan(metrics.sqnr_db([math.inf], [-math.inf]))
    assert metrics.sqnr_db(np.array([big, -big]), np.array([big, big])) == pytest.approx(10 * math.log10(2 / 4))
    # signal / noise underflows to 0 (log10(0) raised); the difference of logs does not
    assert metrics.sqnr_db([2.3e-162, 0, 0, 0], [1, 1, 1, 1]) == pytest.approx(-3239.08, abs=0.01)


@given(
    arrays(np.float32, st.integers(1, 300), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float16]),
)
def test_weight_sqnr_is_sqnr_without_the_copies(w: np.ndarray, seed: int, dtype: type) -> None:
    """weight_sqnr_db (float64 sums a chunk at a time, for large weights) agrees with sqnr_db, over several chunks
    and with infinities, overflow to float16 and NaN."""
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore", invalid="ignore"):
        noise = rng.standard_normal(w.size).astype(np.float32) * np.float32(rng.choice([0.0, 1e-3, 1.0]))
        pairs = ((w, (w + noise).astype(dtype)), (w, w.astype(dtype)))
    chunk = metrics._CHUNK
    try:
        metrics._CHUNK = 7
        for ref, cand in pairs:
            expected, result = metrics.sqnr_db(ref, cand), metrics.weight_sqnr_db(ref, cand)
            assert result == pytest.approx(expected, rel=1e-9, abs=1e-9) or (
                math.isnan(result) and math.isnan(expected)
            )
    finally:
        metrics._CHUNK = chunk


def test_sqnr_matches_known_noise_power() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(10_000)
    noise = rng.standard_normal(10_000)
    noise *= 0.1 / np.sqrt(np.mean(noise**2))  # noise power exactly 0.01 of ...
    ref /= np.sqrt(np.mean(ref**2))  # ... signal power exactly 1: 20 dB
    assert metrics.sqnr_db(ref, ref + noise) == pytest.approx(20.0)
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.sqnr_db(np.zeros(3), np.ones(3)) == -math.inf


@given(
    arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3, allow_subnormal=False)).filter(
        lambda a: np.any(a)
    ),
    st.floats(1e-3, 10.0),
)
def test_sqnr_of_scaled_copy(ref: np.ndarray, k: float) -> None:
    assert metrics.sqnr_db(ref, ref * (1 + k)) == pytest.approx(-20 * math.log10(k), abs=1e-6)
    assert metrics.cosine_similarity(ref, ref * (1 + k)) == pytest.approx(1.0)
    assert metrics.cosine_similarity(ref, -ref) == pytest.approx(-1.0)
    assert metrics.max_abs_error(ref, ref * (1 + k)) == pytest.approx(k * np.abs(ref).max())


def test_cosine_and_top1_on_known_arrays() -> None:
    assert metrics.cosine_similarity([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert metrics.cosine_similarity([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert metrics.cosine_similarity([0.0, 0.0], [1.0, 0.0]) == 0.0
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    cand = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.5, 0.5]])
    assert metrics.top1_agreement(ref, cand) == 0.75


@given(
    arrays(np.float64, 20, elements=st.floats(-10, 10)),
    st.floats(0.01, 1.0),
    st.integers(-20, 20),
)
def test_quantize_round_trip_within_half_a_step(x: np.ndarray, scale: float, zero_point: int) -> None:
    q = metrics.quantize_array(x, scale, zero_point, np.int16)
    assert q.dtype == np.int16
    assert np.all(np.abs(metrics.dequantize_array(q, scale, zero_point) - x) <= scale / 2 + 1e-9)


def test_report_json_encodes_non_finite_values() -> None:
    out = v.OutputComparison("y", (2,), math.nan, 0.0, math.nan, "y", 1.0, None, False)
    report = v.ValidationReport([v.RuntimeResult("builtin", [out])])
    assert math.isnan(report.worst_sqnr_db)
    encoded = json.loads(json.dumps(report.to_dict()))
    assert encoded["runtimes"]["builtin"]["outputs"][0]["sqnr_db"] == "nan" and encoded["worst_sqnr_db"] == "nan"
    assert v.ValidationReport([v.RuntimeResult("default")]).to_dict()["worst_sqnr_db"] == "inf"


def _two_in_two_out(quantized_io: bool) -> bytes:
    """y0 = a + b, y1 = a * b; with ``quantized_io`` the graph's inputs and outputs are int8 around it."""
    from engine import QuantizationParams, model_to_bytes
    from engine.format.builder import GraphBuilder

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
    same = v.validate(reference, reference, tmp_path / "ab.npz")
    assert [o.name for o in same.outputs] == ["y0", "y1"] and all(o.bit_identical for o in same.outputs)
    report = v.validate(reference, candidate, data, intermediates=False)
    # int8 with scale 1/64 in and 1/32 out: errors of about half an output step, SQNR well above 20 dB.
    assert all(20 < o.sqnr_db < 60 and o.max_abs_error <= 1 / 32 + 1 / 64 for o in report.outputs)
    generated = v.validate(reference, candidate, intermediates=False)
    assert all(o.sqnr_db > 20 for o in generated.outputs)
