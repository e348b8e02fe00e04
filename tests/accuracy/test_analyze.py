"""``analyze`` (engine.accuracy.sensitivity): one row per unit, sorted by harm, figures that match candidates built
and judged independently, JSON and the table on the command line, and the bar chart."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.accuracy.candidates import split_samples
from engine.accuracy.plot import plot_sensitivity
from engine.accuracy.sensitivity import Sensitivity
from engine.cli import main
from engine.errors import EngineError
from tests.accuracy.models import small_net
from tests.accuracy.test_mixed_precision import pooled_sqnr_db


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return small_net(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def int8_analysis(small: tuple[Path, np.ndarray]) -> Sensitivity:
    path, x = small
    return engine.analyze(path, x, quantize="int8")


def test_rows_cover_every_integer_op_sorted_by_harm(int8_analysis: Sensitivity) -> None:
    result = int8_analysis
    ops = ["CONV_2D", "CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX"]
    assert sorted(r.op for r in result.rows) == ops  # the SOFTMAX writing the graph's output included
    assert len(result.rows) == 6
    alone = [r.alone_sqnr_db for r in result.rows]
    assert alone == sorted(alone)
    assert math.isclose(sum(r.noise_share for r in result.rows), 1.0)
    assert result.rows[0].alone_sqnr_db > result.uniform_sqnr_db  # one op alone hurts less than all of them
    assert result.worst_k and result.worst_k[0]["k"] == 1
    assert result.runs == 2 * 6 + 1 + len(result.worst_k)


def test_alone_figure_matches_a_model_built_and_judged_independently(
    small: tuple[Path, np.ndarray], int8_analysis: Sensitivity, tmp_path: Path
) -> None:
    path, x = small
    worst = int8_analysis.rows[0]
    cal, held = split_samples(len(x), 0.25, True)
    out = tmp_path / "alone.tflite"
    engine.compress(path, quantize="int8", calibration=x[cal], exclude=[f"^(?!{worst.unit}$)"], output=out)
    assert pooled_sqnr_db(path, out, x[held]) == pytest.approx(worst.alone_sqnr_db, abs=1e-6)


def test_weight_mode_units_are_weights(small: tuple[Path, np.ndarray]) -> None:
    path, x = small
    result = engine.analyze(path, x, quantize="weight-int4", min_elements=0)
    assert {r.unit for r in result.rows} == {
        "conv2d_1/weights", "conv2d_2/weights", "fully_connected_1/weights", "fully_connected_2/weights"
    }  # fmt: skip
    assert result.held_out_samples == len(x)  # nothing is fitted in weight modes
    assert result.rows[0].all_but_sqnr_db > result.uniform_sqnr_db  # the most harmful, left float, buys back


def test_cli_table_json_and_plot(
    small: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, x = small
    data = tmp_path / "x.npy"
    np.save(data, x)
    assert main(["analyze", str(path), "--calibration", str(data), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert len(parsed["rows"]) == 6 and parsed["mode"] == "int8"
    png = tmp_path / "harm.png"
    assert main(["analyze", str(path), "--calibration", str(data), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "alone dB" in text and "worst 1:" in text and "inferences" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_one_clear_error(
    int8_analysis: Sensitivity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(EngineError, match=r"pip install 'litert-engine\[plots\]'"):
        plot_sensitivity(int8_analysis, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_bad_mode_is_one_line(
    small: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, x = small
    data = tmp_path / "x.npy"
    np.save(data, x)
    assert main(["analyze", str(path), "--calibration", str(data), "--quantize", "int3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "int3" in err[0]
