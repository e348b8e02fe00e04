"""A small attention classifier on scikit-learn's 8x8 digits, for the accuracy-budget tests: each image row is a
token; FULLY_CONNECTED embeds the 8 tokens (RELU), one self-attention head (query, key and value projections,
BATCH_MATMUL scores, SOFTMAX, BATCH_MATMUL with the values, residual ADD), then FULLY_CONNECTED to 10 classes and
SOFTMAX.  The embedding and attention projections are seeded random features; the classifier head is trained
(multinomial logistic regression on the attention features, scikit-learn), so it builds in about a second with no
TensorFlow or torch.  Its attention scores span a wide range, so int8 activations cost it accuracy: the uniform
int8 model loses points that a budgeted search has to win back (tests/test_mixed_precision.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from engine.format.builder import GraphBuilder
from engine.format.ir import Model
from engine.format.writer import write_model
from tests.digits import digits_data

_TOKENS, _WIDTH, _DIM = 8, 8, 32
_SCORE_SCALE = 3.0  # peaky attention scores
# One embedding channel much larger than the others (the "outlier feature" of transformers): per-tensor int8
# activations sized to it leave the other channels a few levels, which is what costs the int8 model accuracy.
_OUTLIER_GAIN = 80.0


def _projections(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def dense(out: int, inp: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * gain * np.sqrt(2.0 / inp)).astype(np.float32)

    embed, bias = dense(_DIM, _WIDTH, 2.0), (rng.standard_normal(_DIM) * 0.1).astype(np.float32)
    embed[0] *= _OUTLIER_GAIN
    bias[0] = abs(bias[0]) * _OUTLIER_GAIN
    return {
        "embed/weights": embed,
        "embed/bias": bias,
        "query/weights": dense(_DIM, _DIM, _SCORE_SCALE / np.sqrt(_DIM)),
        "key/weights": dense(_DIM, _DIM),
        "value/weights": dense(_DIM, _DIM),
    }


def _features(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The flattened attention output [N, tokens * dim], as the model computes it."""
    tokens = np.asarray(x, np.float32).reshape(len(x), _TOKENS, _WIDTH)
    h = np.maximum(tokens @ p["embed/weights"].T + p["embed/bias"], 0)
    q, k, v = (h @ p[f"{n}/weights"].T for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 2, 1)
    a = np.exp(scores - scores.max(axis=-1, keepdims=True))
    a /= a.sum(axis=-1, keepdims=True)
    return (a @ v + h).reshape(len(x), -1)


@functools.cache
def attention_params(seed: int = 0) -> dict[str, np.ndarray]:
    """The random projections and the trained head (``head/weights`` [10, tokens * dim], ``head/bias``)."""
    from sklearn.linear_model import LogisticRegression

    p = _projections(seed)
    x_train, y_train, _, _ = digits_data()
    features = _features(p, x_train)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    head = LogisticRegression(C=0.05, max_iter=500).fit((features - mean) / std, y_train)
    weights = head.coef_ / std  # the standardization folded into the head
    p["head/weights"] = weights.astype(np.float32)
    p["head/bias"] = (head.intercept_ - weights @ mean).astype(np.float32)
    return p


def build_attention_model(p: dict[str, np.ndarray]) -> Model:
    """Input ``image`` [1, 8, 8, 1], output ``probabilities`` [1, 10]."""
    b = GraphBuilder("digits_attention")
    x = b.input("image", (1, 8, 8, 1))
    tokens = b.reshape(x, (1, _TOKENS, _WIDTH))
    h = b.fully_connected(tokens, p["embed/weights"], p["embed/bias"], activation="RELU", keep_num_dims=True)
    q, k, v = (b.fully_connected(h, p[f"{n}/weights"], keep_num_dims=True) for n in ("query", "key", "value"))
    attention = b.softmax(b.batch_matmul(q, k, adj_y=True))
    mixed = b.add(b.batch_matmul(attention, v), h)
    logits = b.fully_connected(b.reshape(mixed, (1, _TOKENS * _DIM)), p["head/weights"], p["head/bias"])
    b.output(b.softmax(logits), "probabilities")
    return b.build()


def attention_model_path(directory: str | Path) -> Path:
    path = Path(directory) / "digits_attention.tflite"
    if not path.is_file():
        write_model(build_attention_model(attention_params()), path)
    return path
