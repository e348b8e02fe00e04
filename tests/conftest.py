"""Shared fixtures: the real MediaPipe models (fetched, pinned and cached by engine.zoo), and each of them compressed
in each of the modes the tests judge (``MODES``), once per session; and the two test tiers.

``python -m pytest`` runs every test (the full tier: the README's command, what CI runs).  ``python -m pytest -m
"not slow"`` runs the fast tier: unit and property tests on small built models, LiteRT facts included, with no
MediaPipe model fetched or read.  A test is ``slow`` when it asks for one of ``REAL_MODEL_FIXTURES`` (marked here,
at collection) or when it is marked ``@pytest.mark.slow`` in its module: it reads a MediaPipe model through
``engine.zoo`` itself (or fetches the wheel), or trains the digits net.  Markers only select; nothing is skipped.
A new test that reads a real model unmarked fails this check: ``LITERT_ENGINE_MODELS=/nonexistent python -m pytest
-m "not slow"`` (the zoo then has no model to give)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.recipe import TensorOptions, is_full_integer
from engine.recipes import STANDARD_MODES
from engine.zoo import CUSTOM_OP_MODELS, mediapipe_models, model_calibration

# The compression modes run on every runnable MediaPipe model.  The full-integer ones are calibrated on
# ``engine.zoo.model_calibration(name)`` (16 crops of other pictures than ``model_photo(name)``, which judges them).
MODES = STANDARD_MODES
Compressed = Callable[[str, str], tuple[Path, engine.Report]]
# A test asking for any of these reads the real models, so it is in the slow tier.
REAL_MODEL_FIXTURES = frozenset({"mediapipe", "runnable", "compressed"})


def _with_defaults(options: Mapping[str, object]) -> dict[str, object]:
    return {**{f.name: f.default for f in dataclasses.fields(TensorOptions)}, **options}


def standard_mode(options: Mapping[str, object]) -> str | None:
    """The ``MODES`` entry that asks for exactly ``options`` (``engine.compress`` keywords, defaults filled in),
    or None: a test compressing a runnable model with such options reads ``compressed(name, mode)`` instead of
    computing the same bytes and report again.  Full-integer modes are left out (their calibration is the
    fixture's own)."""
    fields = {f.name for f in dataclasses.fields(TensorOptions)}
    if not fields.issuperset(options):
        return None
    for mode, asked in MODES.items():
        if not is_full_integer(asked.get("quantize")) and _with_defaults(asked) == _with_defaults(options):
            return mode
    return None


def compressed_or_shared(
    compressed: Compressed, name: str, path: Path, options: Mapping[str, Any], out: Path
) -> tuple[Path, engine.Report]:
    """``engine.compress(path, output=out, **options)`` for the runnable model ``name``: the session's
    ``compressed(name, mode)`` (the same bytes and report) when the options are a standard mode, else ``out``."""
    mode = standard_mode(options)
    if mode:
        return compressed(name, mode)
    _, report = engine.compress(path, output=out, **options)
    return out, report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that uses a real-model fixture, directly or through another fixture."""
    for item in items:
        if REAL_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
            if is_full_integer(options.get("quantize")):
                options["calibration"] = model_calibration(name)
            out = folder / f"{name}.{mode}.tflite"
            _, report = engine.compress(runnable[name], output=out, **options)
            done[name, mode] = out, report
        return done[name, mode]

    return get
