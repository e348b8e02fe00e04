"""Real pretrained models (MediaPipe 0.10.14) and real photos for tests, benchmarks and the demo.

Synthetic toy graphs hide the problems real models have, so the engine is exercised on the 14
.tflite files shipped in the pinned ``mediapipe`` wheel and on photos from ``skimage.data``.

Where the models come from, in order:

1. ``LITERT_ENGINE_MODELS=<dir>``: a folder already holding the 14 files (for offline machines).
2. The cache ``$LITERT_ENGINE_CACHE/mediapipe-0.10.14/`` (``LITERT_ENGINE_CACHE`` defaults to
   ``~/.cache/litert-engine``).
3. Otherwise the wheel is fetched with ``pip download`` and the models extracted into the cache.

Every file is checked against its pinned sha256, so a tampered or truncated model is never used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.errors import EngineError

MEDIAPIPE_VERSION = "0.10.14"
_WHEEL_NAME = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
_WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"

MODEL_SHA256: dict[str, str] = {
    "face_detection_full_range_sparse": "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    "face_detection_short_range": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    "face_landmark": "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    "face_landmark_with_attention": "e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4",
    "hand_landmark_full": "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3",
    "hand_landmark_lite": "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6",
    "hand_recrop": "67d996ce96f9d36fe17d2693022c6da93168026ab2f028f9e2365398d8ac7d5d",
    "iris_landmark": "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
    "palm_detection_full": "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
    "palm_detection_lite": "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18",
    "pose_detection": "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    "pose_landmark_full": "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    "selfie_segmentation": "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    "selfie_segmentation_landscape": "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
}

# These use MediaPipe custom ops (Landmarks2TransformMatrix, Convolution2DTransposeBias, ...)
# that the interpreter's builtin kernels cannot run.
CUSTOM_OP_MODELS = frozenset({"face_landmark_with_attention", "selfie_segmentation", "selfie_segmentation_landscape"})

# Pixel range each model was trained on, from the `output_tensor_float_range` (or
# `zero_center`) option of the MediaPipe graph that feeds it. Pass it to `photo_input`.
INPUT_RANGES: dict[str, tuple[float, float]] = {
    name: (-1.0, 1.0) if name.startswith(("face_detection", "pose_detection")) else (0.0, 1.0) for name in MODEL_SHA256
}

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
# Calibration draws from other scikit-image pictures than the validation photo (astronaut, index 0), so a
# quantized model is judged on an image its ranges were not fitted to; grey ones are repeated to three channels.
_CALIBRATION_PICTURES = (
    "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "coins", "moon", "clock",
    "brick", "grass", "gravel", "cell", "page", "text",
)  # fmt: skip

# folder -> ((name, size, mtime_ns) per file) that passed the sha256 check in this process.
_verified: dict[Path, tuple[tuple[str, int, int], ...]] = {}


def mediapipe_models() -> dict[str, Path]:
    """Return the 14 verified MediaPipe models keyed by file stem, fetching them on first use."""
    override = os.environ.get("LITERT_ENGINE_MODELS")
    if override:
        return _verify(Path(override).expanduser(), "LITERT_ENGINE_MODELS folder")
    folder = _cache_dir()
    if not folder.is_dir():
        _fetch(folder)
    return _verify(folder, "model cache (delete it to download again)")


def mediapipe_model(name: str) -> Path:
    """Return the path of one MediaPipe model by file stem, e.g. "face_detection_short_range"."""
    if name not in MODEL_SHA256:
        raise EngineError(f"unknown MediaPipe model {name!r}; known: {', '.join(sorted(MODEL_SHA256))}")
    return mediapipe_models()[name]


def _cache_dir() -> Path:
    """The per-version cache folder, under LITERT_ENGINE_CACHE or ~/.cache/litert-engine."""
    root = os.environ.get("LITERT_ENGINE_CACHE") or Path.home() / ".cache" / "litert-engine"
    return Path(root).expanduser() / f"mediapipe-{MEDIAPIPE_VERSION}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(folder: Path, what: str) -> dict[str, Path]:
    """Check all 14 files by sha256; re-hash only when a file's size or mtime changed."""
    paths = {name: folder / f"{name}.tflite" for name in MODEL_SHA256}
    stamp = []
    for name, path in paths.items():
        if not path.is_file():
            raise EngineError(f"{path} is missing from the {what}")
        st = path.stat()
        stamp.append((name, st.st_size, st.st_mtime_ns))
    key = folder.resolve()
    if _verified.get(key) != tuple(stamp):
        for name, path in paths.items():
            if _sha256(path) != MODEL_SHA256[name]:
                raise EngineError(f"{path} does not match the pinned sha256 of mediapipe=={MEDIAPIPE_VERSION}")
        _verified[key] = tuple(stamp)
    return paths


def _fetch(folder: Path) -> None:
    """Download the pinned wheel and extract the models, renaming a complete temp dir into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
    try:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
            f"mediapipe=={MEDIAPIPE_VERSION}", "-d", str(tmp),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = tmp / _WHEEL_NAME
        if proc.returncode != 0 or not wheel.is_file():
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EngineError(
                f"could not fetch the MediaPipe models: `{' '.join(cmd)}` failed ({detail}); "
                f"on a machine without network set LITERT_ENGINE_MODELS=<dir> to a folder holding the "
                f"14 mediapipe/modules/**/*.tflite files of mediapipe=={MEDIAPIPE_VERSION}"
            )
        if _sha256(wheel) != _WHEEL_SHA256:
            raise EngineError(f"downloaded {wheel.name} does not match its pinned sha256")
        models = tmp / "models"
        models.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith("mediapipe/modules/") and member.endswith(".tflite"):
                    (models / Path(member).name).write_bytes(zf.read(member))
        _verify(models, f"wheel {wheel.name}")
        try:
            models.rename(folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent run that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sample_images() -> dict[str, np.ndarray]:
    """Return a few real RGB uint8 photos (HxWx3) from scikit-image, in a fixed order."""
    try:
        from skimage import data
    except ImportError as exc:
        raise EngineError("sample photos need scikit-image: pip install scikit-image") from exc
    return {name: np.ascontiguousarray(getattr(data, name)()[..., :3]) for name in _PHOTOS}


def photo_input(
    shape: tuple[int, ...] | list[int] | np.ndarray,
    dtype: type | np.dtype,
    index: int = 0,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """Turn real photos into an NHWC model input, so calibration and validation see natural images.

    Batch item n is photo ``index + n`` (cycling), resized bilinearly to H x W. Float inputs are
    scaled to ``value_range`` (see `INPUT_RANGES` for what each MediaPipe model expects); uint8
    keeps the pixels and int8 shifts them by -128. One channel means the grey level.
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    if len(shape) != 4 or shape[3] not in (1, 3) or min(shape) < 1:
        raise EngineError(f"photo_input needs an NHWC shape with 1 or 3 channels, got {list(shape)}")
    photos = list(sample_images().values())
    n, h, w, c = shape
    batch = np.stack([_resize_bilinear(photos[(index + i) % len(photos)], h, w) for i in range(n)])
    if c == 1:
        batch = batch.mean(axis=3, keepdims=True)
    if dtype.kind == "f":
        lo, hi = value_range
        return (lo + batch * ((hi - lo) / 255.0)).astype(dtype)
    pixels = np.clip(np.rint(batch), 0, 255)
    if dtype == np.uint8:
        return pixels.astype(np.uint8)
    if dtype == np.int8:
        return (pixels - 128).astype(np.int8)
    raise EngineError(f"photo_input cannot make {dtype} pixels; use a float, uint8 or int8 input")


def model_photo(name: str, index: int = 0) -> np.ndarray:
    """Photo ``index`` as the float input of MediaPipe model ``name``: its input shape, its trained pixel range."""
    from engine.format.reader import read_model

    shape = read_model(mediapipe_model(name)).main.inputs[0].shape
    return photo_input(shape, "float32", index, value_range=INPUT_RANGES[name])


def calibration_photos(
    shape: tuple[int, ...] | list[int], count: int, *, value_range: tuple[float, float] = (-1.0, 1.0), seed: int = 0
) -> np.ndarray:
    """``count`` float32 samples [count, H, W, C] for an NHWC input of ``shape``: seeded random crops (60-100% of
    the shorter side) of real pictures other than the validation photo, flipped on every second pass."""
    try:
        from skimage import data
    except ImportError as exc:
        raise EngineError("calibration photos need scikit-image: pip install scikit-image") from exc
    _, h, w, c = (int(d) for d in shape)
    rng = np.random.default_rng(seed)
    lo, hi = value_range
    samples = np.empty((count, h, w, c), np.float32)
    for i in range(count):
        picture = np.asarray(getattr(data, _CALIBRATION_PICTURES[i % len(_CALIBRATION_PICTURES)])())
        picture = np.repeat(picture[..., None], 3, axis=2) if picture.ndim == 2 else picture[..., :3]
        side = int(min(picture.shape[:2]) * rng.uniform(0.6, 1.0))
        top = int(rng.integers(0, picture.shape[0] - side + 1))
        left = int(rng.integers(0, picture.shape[1] - side + 1))
        crop = picture[top : top + side, left : left + side]
        if (i // len(_CALIBRATION_PICTURES)) % 2:
            crop = crop[:, ::-1]
        image = _resize_bilinear(crop, h, w)
        image = image.mean(axis=2, keepdims=True) if c == 1 else image
        samples[i] = lo + image * ((hi - lo) / 255.0)
    return samples


def model_calibration(name: str, count: int = 16) -> np.ndarray:
    """Calibration samples for MediaPipe model ``name``: its input shape and trained pixel range."""
    from engine.format.reader import read_model

    shape = read_model(mediapipe_model(name)).main.inputs[0].shape
    return calibration_photos(shape, count, value_range=INPUT_RANGES[name])


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (float64 HxWxC), numpy only."""
    out = image.astype(np.float64)
    for axis, size in ((0, height), (1, width)):
        src = out.shape[axis]
        pos = np.clip((np.arange(size) + 0.5) * (src / size) - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, src - 1)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out
