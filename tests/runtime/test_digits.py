"""The digits helper is a usable baseline: accurate, faithful to its numpy reference in LiteRT (both runtimes), and
reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from tests.digits import (
    accuracy,
    build_digits_model,
    digits_data,
    digits_model_path,
    digits_params,
    litert_predictions,
    predict,
    train_digits,
)
from tests.runtimes import BOTH_RUNTIMES

pytestmark = pytest.mark.slow  # every test here trains the digits net


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_model_path(tmp_path_factory.mktemp("digits"))


@BOTH_RUNTIMES
def test_float_model_is_accurate_and_matches_numpy(digits_model: Path, runtime: str) -> None:
    """Quantization tests measure accuracy drops against this model, so it must be good and be the numpy net."""
    _, _, x_test, y_test = digits_data()
    assert len(x_test) == 540
    assert accuracy(digits_model, x_test, y_test, runtime) >= 0.96
    from_bytes = accuracy(digits_model.read_bytes(), x_test, y_test, runtime)
    assert from_bytes == accuracy(digits_model, x_test, y_test, runtime)
    reference = predict(digits_params(), x_test).argmax(axis=1)
    assert np.mean(litert_predictions(digits_model, x_test, runtime) == reference) >= 0.995

    graph = read_model(digits_model).subgraphs[0]
    assert [(t.name, t.shape) for t in graph.inputs] == [("image", (1, 8, 8, 1))]
    assert [(t.name, t.shape) for t in graph.outputs] == [("probabilities", (1, 10))]


def test_training_is_deterministic() -> None:
    """Same seed, same bytes: results that depend on the trained weights stay reproducible across runs."""
    params = train_digits(0)
    assert model_to_bytes(build_digits_model(params)) == model_to_bytes(build_digits_model(digits_params()))
    assert not np.array_equal(train_digits(1)["fc/weights"], params["fc/weights"])
