"""Mixed precision under a budget (engine.accuracy.search): the budget holds on held-out samples, re-measured here
independently of the search's own judge; an impossible budget says so; the saved recipe reproduces the model byte
for byte; bad input is one clear error.  The fast tier uses a small random net built in the test; the digits
classifiers (trained) and the MediaPipe models are in the slow tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.accuracy.candidates import split_samples
from engine.cli import main
from engine.errors import EngineError
from engine.zoo import mediapipe_model, model_calibration
from tests.accuracy.models import small_net
from tests.digits import accuracy, digits_data, digits_model_path
from tests.digits_attention import attention_model_path
from tests.runtimes import make_interpreter


def pooled_sqnr_db(reference: str | Path, candidate: str | Path, samples: np.ndarray) -> float:
    """Worst output's SQNR over ``samples`` (powers summed over the samples), both models run here in the default
    runtime with tests/runtimes.py: the search's figure, recomputed without its code."""
    powers = []
    for path in (reference, candidate):
        interp = make_interpreter(path, "default")
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        outs = []
        for sample in samples:
            interp.set_tensor(inp["index"], sample.reshape(inp["shape"]).astype(np.float32))
            interp.invoke()
            outs.append([interp.get_tensor(d["index"]).astype(np.float64) for d in interp.get_output_details()])
        powers.append(outs)
    ref, cand = powers
    worst = np.inf
    for k in range(len(ref[0])):
        signal = sum(float(np.sum(r[k] ** 2)) for r in ref)
        noise = sum(float(np.sum((r[k] - c[k]) ** 2)) for r, c in zip(ref, cand, strict=True))
        worst = min(worst, np.inf if noise == 0 else 10 * np.log10(signal / noise))
    return worst


# ------------------------------------------------------------------------------------------- fast tier


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return small_net(tmp_path_factory.mktemp("small"))


def test_weight_budget_holds_and_recipe_reproduces_bytes(small: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, x = small
    out, recipe = tmp_path / "mixed.tflite", tmp_path / "mixed.json"
    _, report = engine.compress(
        path, quantize="weight-int4", min_elements=0, calibration=x, target_sqnr=30, output=out, save_recipe=recipe
    )
    search = report.search
    assert search.uniform["sqnr_db"] < 30  # the uniform mode fails: the search had work to do
    assert search.met and search.final["sqnr_db"] >= 30
    assert search.assignment and search.decisions
    assert pooled_sqnr_db(path, out, x) >= 30  # weight modes judge on every sample
    assert out.stat().st_size < path.stat().st_size
    saved = json.loads(recipe.read_text())
    assert all(p.startswith("^") and p.endswith("$") for p in saved["tensors"])
    again = tmp_path / "again.tflite"
    engine.compress(path, recipe=recipe, output=again)
    assert again.read_bytes() == out.read_bytes()


def test_the_answer_is_never_larger_than_a_uniform_rung_that_meets_the_budget(
    small: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion path that misleads (each weight in turn all the way to float, as noise that does not add up can
    make the greedy path do) ends above uniform weight-int8; the search then judges that rung, takes it and tries
    demoting from there."""
    from engine.accuracy import search

    def misleading(self: search._Search, rho: np.ndarray, scale: np.ndarray) -> list[tuple[int, int]]:
        return [(i, level) for i in range(len(self.units)) for level in range(1, self.levels)]

    monkeypatch.setattr(search._Search, "path", misleading)
    path, x = small
    uniform8 = tmp_path / "int8.tflite"
    engine.compress(path, quantize="weight-int8", min_elements=0, output=uniform8)
    out = tmp_path / "mixed.tflite"
    _, report = engine.compress(path, quantize="weight-int4", min_elements=0, calibration=x, target_sqnr=30, output=out)
    found = report.search
    path_answers = [s for s in found.steps if s.what.startswith("path prefix") and s.passed]
    assert path_answers and min(s.bytes for s in path_answers) > uniform8.stat().st_size
    assert any(s.what == "uniform weight-int8" and s.passed for s in found.steps)
    assert any("every weight on weight-int8 met the budget" in n for n in found.notes)
    assert found.met and out.stat().st_size <= uniform8.stat().st_size
    assert pooled_sqnr_db(path, out, x) >= 30


@pytest.mark.slow  # a GPTQ fit per candidate: 20 s
def test_weight_budget_with_data_aware_rounding(small: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """--rounding gptq in a weight family: every rung's uniform run takes the options that mean something there
    (float16 has no levels to round), the samples are split, and the saved recipe with its calibration part
    reproduces the model."""
    path, x = small
    out, recipe = tmp_path / "gptq.tflite", tmp_path / "gptq.json"
    _, report = engine.compress(path, quantize="weight-int4", rounding="gptq", min_elements=0, calibration=x,
                                target_sqnr=30, output=out, save_recipe=recipe)  # fmt: skip
    search = report.search
    cal, held = split_samples(len(x), 0.25, True)
    assert (search.calibration_samples, search.held_out_samples) == (len(cal), len(held))
    assert search.met and pooled_sqnr_db(path, out, x[held]) >= 30
    assert any(t.rounding == "gptq" for t in report.tensors)
    again = tmp_path / "again.tflite"
    engine.compress(path, recipe=recipe, calibration=tmp_path / "gptq.calibration.npz", output=again)
    assert again.read_bytes() == out.read_bytes()


def test_full_integer_budget_reproduces_bytes_with_its_calibration_part(
    small: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, x = small
    out, recipe = tmp_path / "int8.tflite", tmp_path / "int8.json"
    _, report = engine.compress(path, quantize="int8", calibration=x, target_sqnr=36, output=out, save_recipe=recipe)
    search = report.search
    cal, held = split_samples(len(x), 0.25, True)
    assert (search.calibration_samples, search.held_out_samples) == (len(cal), len(held)) == (36, 12)
    assert search.met and pooled_sqnr_db(path, out, x[held]) >= 36
    # Gradual calibration of the chosen assignment is judged too, and taken only when it measures better.
    (tried,) = [s for s in search.steps if s.what == "chosen assignment, calibrated gradually"]
    taken = search.recipe.get("gradual") is not None
    assert not taken or (tried.passed and search.final["sqnr_db"] == tried.sqnr_db), (tried, search.final)
    verdict = "taken" if taken else "not taken"
    assert any(n.startswith("calibrated gradually") and n.endswith(f": {verdict}") for n in search.notes)
    part = tmp_path / "int8.calibration.npz"
    assert np.array_equal(np.load(part)["image"].reshape(x[cal].shape), x[cal])
    again = tmp_path / "again.tflite"
    engine.compress(path, recipe=recipe, calibration=part, output=again)
    assert again.read_bytes() == out.read_bytes()


def test_int16x8_alternative_is_judged_on_a_few_samples_first(small: tuple[Path, np.ndarray]) -> None:
    """The uniform int16x8 model (builtin kernels, 15-42x slower than the int8 candidates) is judged on 2 held-out
    samples first: far below the budget there (int16x8 reaches ~35 dB on this net), it is not judged on the rest;
    within reach, it is judged on all of them like any candidate."""
    path, x = small
    _, report = engine.compress(path, quantize="int8", calibration=x, target_sqnr=50)
    search = report.search
    (screen,) = [s for s in search.steps if "int16x8" in s.what]
    assert screen.what == "uniform int16x8 (whole-model alternative) on 2 held-out samples"
    assert screen.sqnr_db < 50 - 6 and not screen.passed
    assert any(n.endswith("more than 6 dB below the budget: not judged further, not taken") for n in search.notes)
    assert search.met and "int16x8" not in search.chosen

    _, report = engine.compress(path, quantize="int8", calibration=x, target_sqnr=36)
    search = report.search
    steps = [s for s in search.steps if "int16x8" in s.what]
    assert [s.what for s in steps] == [screen.what, "uniform int16x8 (whole-model alternative)"]
    assert steps[0].sqnr_db > 36 - 6  # within reach on the 2 samples: judged on all


def test_ranking_says_which_isolated_noises_were_measured_alone(small: tuple[Path, np.ndarray]) -> None:
    """int8 (integer or float island: two rungs) group-tests the ranking: the ops are judged together, then the
    ones the predicted answer hangs on most alone; every ranking row and decision says which its figure is, and the
    ranking's candidates are counted in the runs.  Weight-int4 (several integer rungs) measures each alone."""
    path, x = small
    _, report = engine.compress(path, quantize="int8", calibration=x, target_sqnr=36)
    search = report.search
    assert search.units == len(search.ranking) == 6
    assert search.ranking_samples == 8 < search.held_out_samples == 12  # ranking candidates: 8 held-out samples
    alone = [r for r in search.ranking if r["measured_alone"]]
    assert all(r["how"] == "measured alone" for r in alone)
    assert all(r["how"].startswith("estimated") for r in search.ranking if not r["measured_alone"])
    # One candidate for the group of all six, one per unit measured alone, and one per part of a group the
    # predicted answer leaves quantized (a remainder is a difference): fewer than one per unit.
    assert 1 + len(alone) <= search.ranking_runs < search.units
    assert search.runs == search.ranking_runs + len(search.steps) + 1  # and the final re-measure
    # What the answer hangs on most is measured alone: ops whose rung changes the bytes (here the largest,
    # fully_connected_1); the ops without constants (their rung changes no bytes) never are.
    how = {r["unit"]: r["measured_alone"] for r in search.ranking}
    assert how["fully_connected_1/output"] and not how["reshape_1/output"] and not how["probabilities"]
    text = search.format_text()
    assert f"ranking: {search.ranking_runs} candidates x 8 samples for 6 ops ({len(alone)} measured alone" in text
    for d in search.decisions:
        assert d["isolated_measured_alone"] is how[d["unit"]]
        estimated = "(estimated)" if not how[d["unit"]] else ""
        assert f"alone on int8 it gave {d['isolated_sqnr_db']:.2f} dB{' ' + estimated if estimated else ';'}" in text

    _, report = engine.compress(path, quantize="weight-int4", min_elements=0, calibration=x, target_sqnr=30)
    search = report.search
    assert search.ranking_runs == search.units == 4
    assert all(r["measured_alone"] for r in search.ranking)


def test_impossible_budget_says_so_and_writes_the_best_model(
    small: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An int8 interface quantizes the outputs whatever the search floats, so 80 dB cannot be reached."""
    path, x = small
    data = tmp_path / "x.npy"
    np.save(data, x)
    out = tmp_path / "best.tflite"
    args = ["compress", str(path), "-o", str(out), "--quantize", "int8", "--io", "int8", "--calibration", str(data)]
    code = main([*args, "--target-sqnr", "80"])
    captured = capsys.readouterr()
    assert code == 4
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: wrote {out}; budget not met")
    assert out.is_file()
    assert "budget NOT MET" in captured.out
    _, report = engine.compress(path, quantize="int8", io="int8", calibration=x, target_sqnr=80)
    assert report.search.met is False and report.search.final["sqnr_db"] < 80


def test_latency_optimization_times_finalists(small: tuple[Path, np.ndarray]) -> None:
    path, x = small
    _, report = engine.compress(
        path, quantize="weight-int4", min_elements=0, calibration=x, target_sqnr=30, optimize="latency"
    )
    assert report.search.met
    assert any("latency (default runtime, 1 thread" in note for note in report.search.notes)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--quantize", "int8", "--labels", "y.npy"], "--labels does nothing without --target-sqnr"),
        (["--quantize", "int8", "--save-recipe", "r.json"], "--save-recipe does nothing without"),
        (["--quantize", "weight-int8", "--target-sqnr", "30"], "needs data"),
        (["--quantize", "int8", "--calibration", "x.npy", "--max-accuracy-drop", "1"], "needs labels"),
        (
            ["--quantize", "int8", "--calibration", "x.npy", "--max-accuracy-drop", "-1", "--labels", "y.npy"],
            "0 or more",
        ),
        (
            ["--quantize", "int8", "--calibration", "x.npy", "--max-accuracy-drop", "1", "--labels", "short.npy"],
            "labels hold 3 entries but the data holds 48 samples",
        ),
        (["--target-sqnr", "30", "--calibration", "x.npy"], "needs a quantize mode"),
        (["--quantize", "int8", "--target-sqnr", "30", "--calibration", "x.npy", "--holdout", "1.5"], "holdout"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(
    small: tuple[Path, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    fragment: str,
) -> None:
    path, x = small
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", x)
    np.save("y.npy", np.zeros(len(x), np.int64))
    np.save("short.npy", np.zeros(3, np.int64))
    out = tmp_path / "out.tflite"
    code = main(["compress", str(path), "-o", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_python_api_refuses_unknown_optimize(small: tuple[Path, np.ndarray]) -> None:
    path, x = small
    with pytest.raises(EngineError, match="unknown optimize 'speed'"):
        engine.compress(path, quantize="int8", calibration=x, target_sqnr=30, optimize="speed")


# ------------------------------------------------------------------------------------------- slow tier


@pytest.mark.slow
@pytest.mark.parametrize("net", ["conv", "attention"])
def test_digits_within_half_a_point_of_float(net: str, tmp_path: Path) -> None:
    """``--max-accuracy-drop 0.5`` on int8: within 0.5 point of the float model on the held-out digits, recomputed
    here with tests/digits.py's own LiteRT accuracy, at int8 size +10% at most (issue 13's goal); on the attention
    net the uniform int8 model is not within the budget, and the search meets it by equalizing the activations."""
    path = digits_model_path(tmp_path) if net == "conv" else attention_model_path(tmp_path)
    _, _, x, y = digits_data()
    out = tmp_path / "out.tflite"
    _, report = engine.compress(
        path, quantize="int8", calibration=x, labels=y, max_accuracy_drop=0.5, holdout=0.5, output=out
    )
    search = report.search
    _, held = split_samples(len(x), 0.5, True)
    float_acc, final_acc = (accuracy(p, x[held], y[held], "default") for p in (path, out))
    assert 100 * (float_acc - final_acc) <= 0.5
    assert search.met and abs(search.final["accuracy_drop"] - 100 * (float_acc - final_acc)) < 1e-6
    assert search.final["bytes"] <= 1.1 * search.uniform["bytes"]
    if net == "attention":
        assert search.uniform["accuracy_drop"] > 0.5  # uniform int8 loses more: the search did the work
        assert search.chosen == "uniform int8 with activation equalization (meets the budget as it is)"


# Weight-int4 fails 30 dB on each (pooled over 32 held-out crops: 11.8, 17.0 and 7.0 dB).
_MEDIAPIPE = ("face_detection_short_range", "face_landmark", "palm_detection_lite")


@pytest.mark.slow
@pytest.mark.parametrize("name", _MEDIAPIPE)
def test_mediapipe_reaches_30_db_on_held_out_photos(name: str, tmp_path: Path) -> None:
    source = mediapipe_model(name)
    crops = model_calibration(name, 32)
    out = tmp_path / f"{name}.tflite"
    _, report = engine.compress(source, quantize="weight-int4", calibration=crops, target_sqnr=30, output=out)
    search = report.search
    assert search.uniform["sqnr_db"] < 30
    assert search.met and search.final["sqnr_db"] >= 30
    assert pooled_sqnr_db(source, out, crops) >= 30
    assert out.stat().st_size < source.stat().st_size
