"""The search's candidates are what ``engine.compress`` makes of their recipes: the Builder parses the input once and
remembers each weight's scale search (engine/accuracy/candidates.py), which must change no byte of any candidate."""

from __future__ import annotations

import functools
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


@pytest.mark.parametrize("mode", ["weight-int4", "int8"])
def test_parallel_judging_gives_the_one_interpreter_figures(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge shares the held-out samples among several one-thread interpreters running at once: every noise
    power and the accuracy are the ones a single interpreter gives, on all samples and on a subset (the ranking's);
    a candidate that cannot load is one error either way."""
    import engine.accuracy.candidates as candidates

    path, x = small_net(tmp_path)
    labels = np.arange(len(x)) % 10
    data = load_data(read_model(path), x, labels, 0.25, is_full_integer(mode), "test")
    compressed, _ = engine.compress(path, quantize=mode, min_elements=0, calibration=data.calibration)
    candidate = bytes(model_to_bytes(compressed))
    figures = {}
    costs_given: list = []

    def fixed(size: int, samples: int, costs: tuple[float, float] | None = None, n: int = 1) -> int:
        costs_given.append(costs)
        return min(n, samples)

    for workers in (1, 3):
        monkeypatch.setattr(candidates, "judge_workers", functools.partial(fixed, n=workers))
        judge = candidates.Judge(path.read_bytes(), data)
        every, some = judge.measure(candidate), judge.measure(candidate, samples=[0, 3, 5, 6, 11])
        broken = judge.measure(candidate[: len(candidate) // 2])
        assert broken.error is not None and broken.sqnr_db == float("-inf")
        figures[workers] = (every.noise.tolist(), every.accuracy, some.noise.tolist(), some.accuracy)
    assert figures[1] == figures[3]
    # Each judge measures its first candidate with nothing known, then hands what building and running cost.
    assert costs_given[0] is None and costs_given[3] is None
    assert all(c is not None and c[0] > 0 and c[1] > 0 for i, c in enumerate(costs_given) if i % 3)
    assert figures[1][1] is not None and figures[1][3] is None  # accuracy on all held-out samples only


def test_judge_workers_follow_cpus_samples_and_model_size() -> None:
    from engine.accuracy.candidates import judge_workers

    assert judge_workers(1 << 20, 1) == 1
    assert 1 <= judge_workers(1 << 20, 8) <= 4
    assert judge_workers(1 << 30, 8) == 1  # each interpreter packs its own copy of the weights
    # Building is sequential: a second interpreter pays only when the runs it takes over cost more than building.
    assert judge_workers(1 << 20, 8, costs=(0.04, 0.008)) == 1  # 0.104 s alone, 0.112 s with two
    assert judge_workers(1 << 20, 2, costs=(0.001, 0.05)) == min(2, judge_workers(1 << 20, 2))
    many = judge_workers(1 << 20, 8)
    assert judge_workers(1 << 20, 8, costs=(0.0, 0.05)) == many
