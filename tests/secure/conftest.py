"""Fixtures of the security tests: key pairs made once per session, and a small built model that LiteRT runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import Metadata, Model, write_model
from engine.format.builder import GraphBuilder
from engine.format.ir import Buffer
from engine.secure import generate_key, generate_keypair

INPUT_SHAPE = (1, 8, 8, 3)


def small_model() -> Model:
    """A convolution and a fully connected layer with seeded weights, plus a metadata entry of its own (the
    signature entry must leave other metadata alone)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("small")
    x = b.input("x", INPUT_SHAPE)
    y = b.conv2d(x, rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32), activation="RELU")
    y = b.fully_connected(y, rng.uniform(-1, 1, (5, 256)).astype(np.float32))
    b.output(y, "y")
    model = b.build()
    model.metadata = [Metadata("min_runtime_version", Buffer.of(np.frombuffer(b"1.5.0\0\0\0", np.uint8)))]
    return model


def sample_input() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, INPUT_SHAPE).astype(np.float32)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.tflite"
    write_model(small_model(), path)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private, public) PEM files of a P-256 key pair made by ``keygen``."""
    return generate_keypair(tmp_path_factory.mktemp("keys") / "signing.pem")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("other") / "other.pem")


@pytest.fixture(scope="session")
def aes_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_key(tmp_path_factory.mktemp("aes") / "model.key")
