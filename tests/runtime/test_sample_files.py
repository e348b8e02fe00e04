"""Sample files (calibration and validation data): every way numpy writes them reads back to the same values; an
uncompressed .npz or an .npy is mapped, not copied, and never written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from engine.errors import EngineError
from engine.runtime import calibrate
from engine.runtime.calibrate import InputSpec, load_samples

SPECS = [InputSpec("image", (1, 5, 4, 3), np.dtype(np.float32)), InputSpec("ids", (1, 7), np.dtype(np.int32))]


def _samples(count: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((count, 1, 5, 4, 3)).astype(np.float32),
        "ids": rng.integers(0, 100, (count, 1, 7)).astype(np.int32),
    }


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a read-only view of a mapped file rather than memory of its own."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return not array.flags.writeable and not isinstance(owner, np.ndarray)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_uncompressed_npz_is_mapped_and_left_as_it_was(tmp_path: Path) -> None:
    data = _samples()
    path = tmp_path / "samples.npz"
    np.savez(path, **data)
    before = _sha(path)
    loaded = load_samples(path, SPECS, "calibration data")
    assert loaded.count == 6
    for name, array in data.items():
        assert np.array_equal(loaded.arrays[name], array) and _mapped(loaded.arrays[name]), name
    for i in range(loaded.count):
        image, ids = loaded.sample(i)
        assert np.array_equal(image, data["image"][i]) and np.array_equal(ids, data["ids"][i])
    with pytest.raises(ValueError, match="read-only"):
        loaded.arrays["image"][0, 0, 0, 0, 0] = 1.0
    assert _sha(path) == before


@pytest.mark.parametrize("form", ["compressed", "fortran", "npy"])
def test_other_forms_read_the_same_values(tmp_path: Path, form: str) -> None:
    """Compressed members are read by np.load (copies); Fortran order and .npy files are mapped too."""
    data = _samples()
    spec = SPECS[:1]
    image = np.asfortranarray(data["image"]) if form == "fortran" else data["image"]
    if form == "compressed":
        path = tmp_path / "samples.npz"
        np.savez_compressed(path, image=image)
    elif form == "fortran":
        path = tmp_path / "samples.npz"
        np.savez(path, image=image)
    else:
        path = tmp_path / "samples.npy"
        np.save(path, image)
    loaded = load_samples(path, spec, "calibration data")
    assert np.array_equal(loaded.arrays["image"], data["image"])
    assert _mapped(loaded.arrays["image"]) == (form != "compressed")
    assert all(np.array_equal(loaded.sample(i)[0], data["image"][i]) for i in range(6))


def test_a_mapped_file_is_checked_like_a_loaded_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value of a mapped file is checked for NaN (read in pieces), the last piece too."""
    monkeypatch.setattr(calibrate, "_FINITE_CHUNK", 1000)  # 16 samples of 60 values a piece
    image = np.zeros((300, 1, 5, 4, 3), np.float32)
    image[299, 0, 4, 3, 2] = np.inf
    np.savez(tmp_path / "late.npz", image=image)
    with pytest.raises(EngineError, match="input 'image' contains NaN or infinite values"):
        load_samples(tmp_path / "late.npz", SPECS[:1], "calibration data")
    np.savez(tmp_path / "objects.npz", image=np.array([object()] * 2))
    with pytest.raises(EngineError, match=r"objects\.npz: cannot read it"):
        load_samples(tmp_path / "objects.npz", SPECS[:1], "calibration data")
