"""The search's candidates are what ``engine.compress`` makes of their recipes: the Builder parses the input once and
remembers each weight's scale search (engine/accuracy/candidates.py), which must change no byte of any candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine
from engine.accuracy.candidates import LADDERS, Builder, anchored, integer_units, load_data, weight_units
from engine.api import _recipe
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from engine.recipe import is_full_integer
from engine.zoo import mediapipe_model, model_calibration
from tests.accuracy.models import small_net


def _candidates_match_fresh_compress(source: bytes, samples: np.ndarray, mode: str) -> None:
    base = _recipe(None, None, {"quantize": mode, "min_elements": 0})
    fitted = is_full_integer(mode)
    data = load_data(read_model(source), samples, None, 0.25, fitted, "test")
    builder = Builder(source, base, LADDERS[mode], data.calibration)
    if fitted:
        uniform, _ = builder.build(base)
        names = [u.name for u in integer_units(builder, uniform)]
    else:
        names = [u.name for u in weight_units(builder)[0]]
    top = len(LADDERS[mode]) - 1
    recipes = [
        base,
        builder.recipe_for({name: 1 + i % top for i, name in enumerate(names[::2])}),
        builder.recipe_for({}, exclude=[f"^(?!(?:{anchored(names[-1])[1:-1]})$)"]),  # a ranking candidate
        base,  # again, every scale search now remembered
    ]
    for recipe in recipes:
        fresh, _ = engine.compress(read_model(source), recipe, calibration=data.calibration if fitted else None)
        assert builder.candidate(recipe) == bytes(model_to_bytes(fresh))


@pytest.mark.parametrize("mode", ["weight-int4", "int8"])
def test_small_net_candidates_are_fresh_compress_bytes(mode: str, tmp_path: Path) -> None:
    path, x = small_net(tmp_path)
    _candidates_match_fresh_compress(path.read_bytes(), x, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["weight-int4", "int8"])
def test_mediapipe_candidates_are_fresh_compress_bytes(mode: str) -> None:
    """hand_landmark_lite keeps its weights as float16 behind DEQUANTIZE: folded, requantized and restored."""
    name = "hand_landmark_lite"
    _candidates_match_fresh_compress(mediapipe_model(name).read_bytes(), model_calibration(name, 8), mode)
