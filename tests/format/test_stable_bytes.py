"""The writer's bytes are pinned.  An embedded signature signs the writer's serialization of a model in its
canonical layout (engine.secure.embedded: equal vectors each written on its own, ``share_equal_vectors=False``),
so a change in that layout, however harmless to LiteRT, would make every model signed before fail verification;
speed-ups of the writer must keep these digests.  A deliberate change of that layout updates them and says so
(docs/cli.md's canonical form then needs a version).  The default layout shares equal small vectors: pinned
too, and always the same model as the canonical one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import model_to_bytes, read_model, structural_diff
from engine.format.flatbuf import decode, encode
from tests.secure.conftest import small_model

SMALL_MODEL_SHA256 = "7bd6a29000537ea9cf0851554a158a9d9911e9adc327ce9dcc6522e8d5c88658"
SMALL_MODEL_SHARED_SHA256 = "9e42d71751ec563128d6668a5a00563f5ea2c91848b4c123446e8478713ce964"
# sha256 of model_to_bytes(read_model(file), share_equal_vectors=False) for each MediaPipe model (2026-12-03: the
# same before and after that day's writer speed-up; the writer's only layout until 2026-12-04).
REWRITTEN_SHA256 = {
    "face_detection_full_range_sparse": "20beb1b0d8ea2cefbda3f37ddc14465a8025edaf525cd43c5a0e3b11f06495fb",
    "face_detection_short_range": "1f91db7db3b286255ab320e508340459a87838f8f5cdfff2015eb54597d1c8ff",
    "face_landmark": "bd12ecd56a74f0d4fc3f2b013a2505fa9df99bc813ae093c33e71ec40ce00e0b",
    "face_landmark_with_attention": "7f0dff1cc85b0e9403c241d7968e31dd6804061186b79e33a511b574bc491d97",
    "hand_landmark_full": "5e0a1729f4cb7e6409d46d602586c6172f7a5436d732dd0bc5c6fde2a8de00b0",
    "hand_landmark_lite": "c991e9a9e0b6a4716f412f11933aa5808c7118cf1c111dcc14702c7fa12e5876",
    "hand_recrop": "1c1569e6b4b0a6e1817ab6864a2a88dc22d6dac621c55d20a4a8c6d4dce11d84",
    "iris_landmark": "dc1349d344924f904c3f7bbb33bb37530da18006c321ce7c1e9a885bce852de7",
    "palm_detection_full": "9b295caa2294dce845e8ce2706408a1cb60d71cf7c1bc2a02f59da43bf596c2b",
    "palm_detection_lite": "a4ab7b872cc363feabde5abdc0b8645b65f69819e6d78f6487a7e35bfd233b15",
    "pose_detection": "50660e037c9036055b2cce7d1804b0eb16065ff50f91a2a6df6e274ecec646f2",
    "pose_landmark_full": "60bab2a5972fc23ebac6d5c294eaf3c3366c3f6f3e72885c0d924d591b5dc1d1",
    "selfie_segmentation": "c2ce18d3997234fb860d91b2c60c4445ba0502ccbd13f92fa5fc8a2ed674781c",
    "selfie_segmentation_landscape": "f127f6fc1954276585043fedba4717e2c88284ff7b8ff4401284056e1d222a66",
}


def test_a_built_model_serializes_to_the_pinned_bytes() -> None:
    canonical = model_to_bytes(small_model(), share_equal_vectors=False)
    shared = model_to_bytes(small_model())
    assert hashlib.sha256(canonical).hexdigest() == SMALL_MODEL_SHA256
    assert hashlib.sha256(shared).hexdigest() == SMALL_MODEL_SHARED_SHA256
    assert len(shared) <= len(canonical) and structural_diff(read_model(shared), read_model(canonical)) == []


def test_every_mediapipe_model_rewrites_to_the_pinned_bytes(mediapipe: dict[str, Path]) -> None:
    got = {
        name: hashlib.sha256(model_to_bytes(read_model(path), share_equal_vectors=False)).hexdigest()
        for name, path in mediapipe.items()
    }
    assert got == REWRITTEN_SHA256


def test_a_buffer_grown_while_encoding_gives_the_same_bytes() -> None:
    """The encoder writes into memory sized by a hint and grows it when a table does not fit: offsets count from
    the end and padding from the written length, so a buffer grown several times from 1 KB gives the same bytes."""
    tree = decode(model_to_bytes(small_model()))
    grown = encode(tree, size_hint=1024)
    assert len(grown) > 4 * 1024 and grown == encode(tree, size_hint=1 << 24)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=80), st.sampled_from([1024, 1 << 16]))
def test_integer_vectors_given_as_lists_encode_as_arrays_do(values: list[int], hint: int) -> None:
    """Short integer lists (shapes, operator inputs) are packed by struct, longer ones go through numpy: the bytes
    are the ones an int32 array gives, in a buffer grown on the way or not."""
    array = np.array(values, np.int32)
    as_list = encode({"name": "t", "shape": values, "shape_signature": tuple(values)}, "Tensor", size_hint=hint)
    assert as_list == encode({"name": "t", "shape": array, "shape_signature": array}, "Tensor", size_hint=hint)


def test_an_integer_list_out_of_range_is_refused_as_an_array_would_be() -> None:
    with pytest.raises(OverflowError):
        encode({"shape": [1, 2**31]}, root="Tensor")
