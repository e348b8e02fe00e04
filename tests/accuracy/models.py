"""A small random conv net built in the test (no training): the fast tier's model for the accuracy tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.format.builder import GraphBuilder
from engine.format.writer import write_model


def small_net(directory: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """``directory/small.tflite`` (CONV 3x3x16 -> CONV 3x3x32 stride 2 -> FULLY_CONNECTED 64 -> FULLY_CONNECTED 10
    -> SOFTMAX, random weights) and 48 seeded samples [48, 8, 8, 1] for it."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    b = GraphBuilder("small")
    x = b.input("image", (1, 8, 8, 1))
    x = b.conv2d(x, w(16, 3, 3, 1), np.zeros(16, np.float32), activation="RELU")
    x = b.conv2d(x, w(32, 3, 3, 16), np.zeros(32, np.float32), stride=2, activation="RELU")
    x = b.reshape(x, (1, -1))
    x = b.fully_connected(x, w(64, 512), np.zeros(64, np.float32), activation="RELU")
    x = b.fully_connected(x, w(10, 64) * 3, np.zeros(10, np.float32))
    b.output(b.softmax(x), "probabilities")
    path = Path(directory) / "small.tflite"
    write_model(b.build(), path)
    return path, rng.uniform(0, 1, (48, 8, 8, 1)).astype(np.float32)
