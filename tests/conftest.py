"""Shared fixtures: the real MediaPipe models (fetched, pinned and cached by engine.zoo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.zoo import CUSTOM_OP_MODELS, mediapipe_models


@pytest.fixture(scope="session")
def mediapipe() -> dict[str, Path]:
    """All 14 models; a fetch failure fails the test with the zoo's instructions (never a skip)."""
    return mediapipe_models()


@pytest.fixture(scope="session")
def runnable(mediapipe: dict[str, Path]) -> dict[str, Path]:
    """The 11 models without custom ops, which the interpreter can run."""
    return {name: path for name, path in mediapipe.items() if name not in CUSTOM_OP_MODELS}
