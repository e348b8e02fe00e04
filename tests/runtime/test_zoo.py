"""The pinned MediaPipe models resolve and are verified; photos become well-formed model inputs."""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import zoo
from engine.errors import EngineError


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return zoo.mediapipe_models()  # an EngineError here fails the tests with its message


@pytest.fixture
def model_copy(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for path in models.values():
        shutil.copy2(path, folder / path.name)
    monkeypatch.setenv("LITERT_ENGINE_MODELS", str(folder))
    return folder


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_all_fourteen_models_resolve_with_pinned_hashes(models: dict[str, Path]) -> None:
    assert len(models) == 14
    assert set(models) == set(zoo.MODEL_SHA256)
    assert set(models) >= zoo.CUSTOM_OP_MODELS
    assert set(zoo.INPUT_RANGES) == set(models)
    for name, path in models.items():
        assert path.name == f"{name}.tflite"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == zoo.MODEL_SHA256[name]
    assert zoo.mediapipe_model("palm_detection_lite") == models["palm_detection_lite"]


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(EngineError, match="no_such_model"):
        zoo.mediapipe_model("no_such_model")


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_models_folder_from_environment(model_copy: Path) -> None:
    found = zoo.mediapipe_models()
    assert all(path.parent == model_copy for path in found.values())


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_tampered_model_is_rejected(model_copy: Path) -> None:
    zoo.mediapipe_models()  # verified once; the change below must still be noticed
    target = model_copy / "iris_landmark.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(1, 1))
    with pytest.raises(EngineError, match=r"iris_landmark\.tflite"):
        zoo.mediapipe_models()


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_missing_model_is_rejected(model_copy: Path) -> None:
    (model_copy / "hand_recrop.tflite").unlink()
    with pytest.raises(EngineError, match=r"hand_recrop\.tflite"):
        zoo.mediapipe_models()


def test_failed_fetch_says_how_to_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITERT_ENGINE_MODELS", raising=False)
    monkeypatch.setenv("LITERT_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo.sys, "executable", "/bin/false")
    with pytest.raises(EngineError, match=r"LITERT_ENGINE_MODELS=.*") as info:
        zoo.mediapipe_models()
    assert "pip download" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


@pytest.mark.slow  # fetches the mediapipe wheel into an empty cache
def test_fetch_fills_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ.get("LITERT_ENGINE_MODELS"):
        pytest.skip("LITERT_ENGINE_MODELS is set: this machine is declared offline, fetching not tested")
    monkeypatch.setenv("LITERT_ENGINE_CACHE", str(tmp_path))
    found = zoo.mediapipe_models()
    assert {p.parent for p in found.values()} == {tmp_path / f"mediapipe-{zoo.MEDIAPIPE_VERSION}"}
    assert [p.name for p in tmp_path.iterdir()] == [f"mediapipe-{zoo.MEDIAPIPE_VERSION}"]


def test_sample_images_are_rgb_photos() -> None:
    images = zoo.sample_images()
    assert len(images) >= 4
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] >= 256 and image.std() > 20


def test_photo_input_float_range_and_batch() -> None:
    x = zoo.photo_input((3, 128, 96, 3), np.float32)
    assert x.shape == (3, 128, 96, 3) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() - x.min() > 1.5
    assert not np.array_equal(x[0], x[1])
    np.testing.assert_array_equal(zoo.photo_input((1, 128, 96, 3), np.float32, index=1)[0], x[1])
    y = zoo.photo_input((1, 64, 64, 3), np.float32, value_range=(0.0, 1.0))
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_photo_input_integer_and_grey() -> None:
    u = zoo.photo_input((1, 32, 32, 3), np.uint8)
    i = zoo.photo_input((1, 32, 32, 3), np.int8)
    assert u.dtype == np.uint8 and i.dtype == np.int8
    np.testing.assert_array_equal(u.astype(np.int16) - 128, i)
    g = zoo.photo_input((2, 16, 16, 1), np.float16)
    assert g.shape == (2, 16, 16, 1) and g.dtype == np.float16


@pytest.mark.parametrize(("shape", "dtype"), [((1, 8, 8), np.float32), ((1, 8, 8, 4), np.float32),
                                              ((1, 8, 8, 3), np.int32)])  # fmt: skip
def test_photo_input_rejects_what_it_cannot_make(shape: tuple[int, ...], dtype: type) -> None:
    with pytest.raises(EngineError):
        zoo.photo_input(shape, dtype)


def test_bilinear_resize_keeps_constants_and_identity() -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    np.testing.assert_allclose(zoo._resize_bilinear(image, 7, 5), image)
    flat = np.full((9, 13, 3), 77, np.uint8)
    np.testing.assert_allclose(zoo._resize_bilinear(flat, 4, 20), 77.0)
