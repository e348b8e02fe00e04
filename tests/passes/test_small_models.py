"""Small models get a real size reduction by default: when nearly all of a model's weight elements sit in weights
under the default ``min_elements`` (4096), the floor drops so that at least half of them are compressed
(``engine.passes.common.small_model_floor``), and the accuracy measured on held-out digits in both runtimes stays.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.format.builder import GraphBuilder
from engine.graph.weights import find_weights
from engine.passes.common import small_model_floor
from engine.recipe import DEFAULT_MIN_ELEMENTS
from tests.digits import digits_data
from tests.runtimes import RUNTIMES, run_model

SIZES = (64, 48, 32, 10)  # weights of 3072, 1536 and 320 elements: every one under 4096


def _train_mlp(epochs: int = 40, lr: float = 0.05) -> list[tuple[np.ndarray, np.ndarray]]:
    """A 64-48-32-10 RELU classifier on the digits' training split, by plain minibatch SGD on cross-entropy."""
    x_train, y_train, _, _ = digits_data()
    x_train = x_train.reshape(len(x_train), -1)
    rng = np.random.default_rng(0)
    layers = [
        (rng.normal(0, np.sqrt(2 / a), (b, a)).astype(np.float32), np.zeros(b, np.float32))
        for a, b in itertools.pairwise(SIZES)
    ]
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            acts = [x_train[batch]]
            for i, (w, b) in enumerate(layers):
                z = acts[-1] @ w.T + b
                acts.append(np.maximum(z, 0) if i < len(layers) - 1 else z)
            p = np.exp(acts[-1] - acts[-1].max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(batch)), y_train[batch]] -= 1
            grad = p / len(batch)
            for i in reversed(range(len(layers))):
                w, b = layers[i]
                step_w, step_b = grad.T @ acts[i], grad.sum(axis=0)
                grad = (grad @ w) * (acts[i] > 0)
                layers[i] = (w - lr * step_w, b - lr * step_b)
    return layers


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = GraphBuilder()
    h = b.input("x", (1, SIZES[0]))
    layers = _train_mlp()
    for i, (w, bias) in enumerate(layers):
        h = b.fully_connected(h, w, bias, activation="RELU" if i < len(layers) - 1 else None)
    b.output(b.softmax(h))
    path = tmp_path_factory.mktemp("mlp") / "mlp.tflite"
    engine.write_model(b.build(), path)
    return path


def _accuracy(model: Path, runtime: str) -> float:
    _, _, x_test, y_test = digits_data()
    hits = [
        int(np.argmax(next(iter(run_model(model, x[None], runtime).values())))) == y
        for x, y in zip(x_test.reshape(len(x_test), -1), y_test, strict=True)
    ]
    return float(np.mean(hits))


def test_a_small_model_is_compressed_by_default_and_keeps_its_accuracy(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "w8.tflite"
    _, report = engine.compress(mlp, output=out, quantize="weight-int8")
    assert [t.name for t in report.compressed]  # the 3072-element weight at least
    assert out.stat().st_size < 0.65 * mlp.stat().st_size
    for runtime in RUNTIMES:
        before, after = _accuracy(mlp, runtime), _accuracy(out, runtime)
        assert before > 0.9 and after >= before - 0.01, (runtime, before, after)


def test_an_explicit_min_elements_is_kept(mlp: Path) -> None:
    _, report = engine.compress(mlp, quantize="weight-int8", min_elements=DEFAULT_MIN_ELEMENTS)
    assert not report.compressed


def test_the_floor_stays_on_models_with_large_weights(runnable: dict[str, Path]) -> None:
    """MediaPipe's models (up to 60% of elements in small weights, selfie_segmentation) keep the default."""
    for name in ("selfie_segmentation", "hand_recrop", "face_detection_short_range"):
        path = engine.zoo.mediapipe_model(name)
        assert small_model_floor(find_weights(engine.read_model(path))) == DEFAULT_MIN_ELEMENTS, name
