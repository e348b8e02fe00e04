"""Shared fixtures: the real MediaPipe models (fetched, pinned and cached by engine.zoo), and each of them compressed
in each of the modes the tests judge (``MODES``), once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import engine
from engine.recipe import STATIC_MODES
from engine.zoo import CUSTOM_OP_MODELS, mediapipe_models, model_calibration

# The compression modes run on every runnable MediaPipe model: name -> engine.compress options.  The full-integer
# ones are calibrated on ``engine.zoo.model_calibration(name)`` (16 crops of other pictures than
# ``model_photo(name)``, which judges them).
MODES: dict[str, dict[str, object]] = {
    "float16": {"quantize": "float16"},
    "weight-int8": {"quantize": "weight-int8"},
    "dynamic-int8": {"quantize": "dynamic-int8"},
    "weight-int4": {"quantize": "weight-int4"},
    "dynamic-int4": {"quantize": "dynamic-int4"},
    "dynamic-int4-block32": {"quantize": "dynamic-int4", "granularity": "block:32"},
    "prune-0.5": {"prune": 0.5, "sparse_format": "dense"},
    "prune-0.5-sparse": {"prune": 0.5, "sparse_format": "tflite"},
    "cluster-16": {"cluster": 16},
    "cluster-16-gather": {"cluster": 16, "cluster_storage": "gather"},
    "int8": {"quantize": "int8"},
    "int16x8": {"quantize": "int16x8"},
    "int8-io-int8": {"quantize": "int8", "io": "int8"},
}
Compressed = Callable[[str, str], tuple[Path, engine.Report]]


@pytest.fixture(scope="session")
def mediapipe() -> dict[str, Path]:
    """All 14 models; a fetch failure fails the test with the zoo's instructions (never a skip)."""
    return mediapipe_models()


@pytest.fixture(scope="session")
def runnable(mediapipe: dict[str, Path]) -> dict[str, Path]:
    """The 11 models without custom ops, which the interpreter can run."""
    return {name: path for name, path in mediapipe.items() if name not in CUSTOM_OP_MODELS}


@pytest.fixture(scope="session")
def compressed(runnable: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Compressed:
    """``compressed(name, mode)``: the runnable model ``name`` compressed in ``MODES[mode]`` (file and report),
    computed the first time a test asks for it and shared by every test after."""
    folder = tmp_path_factory.mktemp("compressed")
    done: dict[tuple[str, str], tuple[Path, engine.Report]] = {}

    def get(name: str, mode: str) -> tuple[Path, engine.Report]:
        if (name, mode) not in done:
            options = dict(MODES[mode])
            if options.get("quantize") in STATIC_MODES:
                options["calibration"] = model_calibration(name)
            out = folder / f"{name}.{mode}.tflite"
            _, report = engine.compress(runnable[name], output=out, **options)
            done[name, mode] = out, report
        return done[name, mode]

    return get
