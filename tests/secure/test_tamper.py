"""Tamper evidence: flipping, inserting or deleting any byte of a signed model (detached or embedded), of its
signature, or of an encrypted model is detected, never a silent success and never an unexpected exception.

The fast tier checks it as hypothesis properties on a small built model; the slow tier runs 10,000 seeded
mutations over real MediaPipe models (biased towards the bytes a careless check would skip: headers, tags,
the embedded bundle, the ends of the file) and requires 0 accepted tampered files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import EngineError, write_model
from engine.secure import (
    VerificationError,
    decrypt_bytes,
    encrypt_file,
    generate_keypair,
    sign_embedded,
    sign_file,
    verify_embedded,
    verify_file,
)
from engine.secure.encryption import HEADER, TAG_BYTES
from tests.secure.conftest import small_model

KEY = bytes(range(32))
CHUNK = 256
KINDS = ("flip", "insert", "delete")
REAL_MODELS = ("hand_recrop", "face_detection_short_range", "selfie_segmentation")
MUTATIONS = 10_000


def mutate(data: bytes, kind: str, where: int, value: int) -> bytes:
    """``data`` with one byte flipped (xor ``value``, 1..255), inserted (``value``) or deleted at ``where``."""
    if kind == "insert":
        i = where % (len(data) + 1)
        return data[:i] + bytes([value]) + data[i:]
    i = where % len(data)
    if kind == "delete":
        return data[:i] + data[i + 1 :]
    return data[:i] + bytes([data[i] ^ value]) + data[i + 1 :]


class Artifacts:
    """One model signed both ways and encrypted, and how each target is checked: ``accepted`` is True only when
    tampered bytes pass; any error but the expected one propagates and fails the test."""

    def __init__(self, model: Path, folder: Path) -> None:
        self.folder = folder
        self.private, self.public = generate_keypair(folder / "key.pem")
        self.model = folder / "model.tflite"
        shutil.copyfile(model, self.model)
        self.sig = sign_file(self.model, self.private)
        self.signed = sign_embedded(self.model, self.private)
        self.sealed = folder / "model.enc"
        encrypt_file(self.model, self.sealed, KEY, chunk_size=CHUNK)
        self.originals = {
            "model": self.model.read_bytes(),
            "signature": self.sig.read_bytes(),
            "embedded": self.signed.read_bytes(),
            "encrypted": self.sealed.read_bytes(),
        }
        self.scratch = folder / "tampered"
        self.checks: dict[str, Callable[[Path], object]] = {
            "model": lambda p: verify_file(p, self.public, self.sig),
            "signature": lambda p: verify_file(self.model, self.public, p),
            "embedded": lambda p: verify_embedded(p, self.public),
            "encrypted": lambda p: decrypt_bytes(p, KEY),
        }
        for target in self.checks:  # the untouched files pass, so a failure below is the tampering's
            assert self.accepted(target, self.originals[target])

    def accepted(self, target: str, data: bytes) -> bool:
        """Whether checking ``data`` as ``target`` succeeds."""
        self.scratch.write_bytes(data)
        expected = EngineError if target == "encrypted" else VerificationError
        try:
            self.checks[target](self.scratch)
        except expected:
            return False
        return True

    def interesting(self, target: str) -> list[int]:
        """Byte positions a lax check would overlook: the ends, the encryption header and tags, the bundle."""
        data = self.originals[target]
        spots = [*range(64), *range(len(data) - 64, len(data))]
        if target == "encrypted":
            block = CHUNK + TAG_BYTES
            spots += range(HEADER.size)
            for end in range(HEADER.size + block, len(data) + block, block):
                spots += range(min(end, len(data)) - TAG_BYTES - 2, min(end, len(data)) + 2)
        if target == "embedded":
            start = data.find(self.originals["signature"][:40])
            assert start > 0
            spots += range(start - 64, start + len(self.originals["signature"]) + 64)
        return sorted({s for s in spots if 0 <= s < len(data)})


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    folder = tmp_path_factory.mktemp("tamper")
    write_model(small_model(), folder / "small.tflite")
    return Artifacts(folder / "small.tflite", folder)


MUTATION = st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 30), st.integers(1, 255))


@settings(max_examples=1000, deadline=None)
@given(target=st.sampled_from(["model", "signature", "embedded", "encrypted"]), mutation=MUTATION)
def test_any_one_byte_change_is_detected(artifacts: Artifacts, target: str, mutation: tuple[str, int, int]) -> None:
    tampered = mutate(artifacts.originals[target], *mutation)
    assert not artifacts.accepted(target, tampered), (target, mutation)


@settings(max_examples=500, deadline=None)
@given(target=st.sampled_from(["signature", "embedded", "encrypted"]), data=st.data())
def test_changes_where_the_format_is_subtle_are_detected(
    artifacts: Artifacts, target: str, data: st.DataObject
) -> None:
    where = data.draw(st.sampled_from(artifacts.interesting(target)))
    kind, value = data.draw(st.sampled_from(KINDS)), data.draw(st.integers(1, 255))
    assert not artifacts.accepted(target, mutate(artifacts.originals[target], kind, where, value)), (target, where)


def test_ten_thousand_mutations_of_real_models(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    """10,000 seeded mutations over three real models, each model signed both ways and encrypted: half at
    uniformly random positions, half at the subtle ones; 0 may be accepted."""
    rng = np.random.default_rng(16)
    targets = ("model", "signature", "embedded", "encrypted")
    cells = [(name, target) for name in REAL_MODELS for target in targets]
    done = accepted = 0
    for n, (name, target) in enumerate(cells):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if n % len(targets) == 0:
            subject = Artifacts(mediapipe[name], folder)
        original, spots = subject.originals[target], subject.interesting(target)
        count = MUTATIONS // len(cells) + (n < MUTATIONS % len(cells))
        for i in range(count):
            where = int(rng.integers(len(original) + 1)) if i % 2 else int(rng.choice(spots))
            kind, value = KINDS[int(rng.integers(3))], int(rng.integers(1, 256))
            accepted += subject.accepted(target, mutate(original, kind, where, value))
        done += count
    assert done == MUTATIONS and accepted == 0
