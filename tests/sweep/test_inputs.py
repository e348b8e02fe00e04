"""engine.sweep.inputs: manifests, grids and presets are read and checked before any run, each mistake one error
naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.recipes import STANDARD_MODES
from engine.sweep import PRESETS, load_configs, load_models
from tests.sweep.zoo import GRID, make_zoo


@pytest.fixture
def zoo(tmp_path: Path) -> tuple[Path, Path]:
    return make_zoo(tmp_path)


def test_manifest_paths_are_relative_to_it(zoo: tuple[Path, Path]) -> None:
    manifest, _ = zoo
    models = load_models([manifest])
    assert [m.name for m in models] == ["net0", "net1", "net2"]
    assert models[0].path == str(manifest.parent / "net0" / "small.tflite")
    assert set(models[0].files()) == {"path", "calibration", "data", "labels"}
    assert models[2].calibration is None and models[2].labels is not None


def test_tflite_paths_are_named_by_their_stem(zoo: tuple[Path, Path]) -> None:
    path = zoo[0].parent / "net1" / "small.tflite"
    (entry,) = load_models([path])
    assert entry.name == "small" and entry.files() == {"path": str(path)}
    with pytest.raises(EngineError, match="two models are named 'small'"):
        load_models([path, zoo[0].parent / "net0" / "small.tflite"])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"a": {"path": "missing.tflite"}}, "model 'a': path .*missing.tflite: file not found"),
        ({"a": {"path": "net0/small.tflite", "label": "x.npy"}}, "unknown key\\(s\\) label"),
        ({"a": {"calibration": "net0/data.npy"}}, 'at least "path"'),
        ({"a": {"path": "net0/small.tflite", "labels": "net0/labels.npy"}}, "labels need data"),
        ({"a b": {"path": "net0/small.tflite"}}, "model name 'a b'"),
        ([], "expected an object"),
    ],
)
def test_bad_manifests(zoo: tuple[Path, Path], manifest: object, message: str) -> None:
    path = zoo[0].parent / "bad.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=message):
        load_models([path])


def test_grid_and_preset(zoo: tuple[Path, Path]) -> None:
    configs = load_configs(zoo[1])
    assert {c.name: c.options for c in configs} == GRID
    assert [c.name for c in configs if c.needs_calibration] == ["int8"]
    standard = {c.name: c for c in load_configs(preset="standard")}
    assert set(STANDARD_MODES) <= set(standard) and standard.keys() == PRESETS["standard"].keys()
    assert standard["weight-int4-target-30dB"].needs_calibration  # the accuracy-aware search judges on data
    assert not standard["cluster-64"].needs_calibration and standard["int16x8"].needs_calibration


def test_grid_recipe_files_are_read_relative_to_the_grid(tmp_path: Path) -> None:
    (tmp_path / "mixed.json").write_text(
        json.dumps({"quantize": "weight-int8", "ops": {"CONV_2D": {"quantize": None}}})
    )
    (tmp_path / "grid.json").write_text(json.dumps({"mixed": {"recipe": "mixed.json", "granularity": "tensor"}}))
    (config,) = load_configs(tmp_path / "grid.json")
    assert config.options == {
        "recipe": {"quantize": "weight-int8", "ops": {"CONV_2D": {"quantize": None}}},
        "granularity": "tensor",
    }


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"int8": {"quantise": "int8"}}, "configuration 'int8': .*unknown option 'quantise'"),
        ({"x": {"quantize": "float16", "bits": 4}}, "configuration 'x': .*bits"),
        ({"x/y": {"quantize": "float16"}}, "configuration name 'x/y'"),
        ({"x": "float16"}, "configuration 'x': expected an object"),
        ({}, "expected an object"),
    ],
)
def test_bad_grids(tmp_path: Path, grid: object, message: str) -> None:
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    with pytest.raises(EngineError, match=message):
        load_configs(tmp_path / "grid.json")


def test_one_source_of_configurations() -> None:
    with pytest.raises(EngineError, match="either a grid"):
        load_configs()
    with pytest.raises(EngineError, match="unknown preset 'huge'"):
        load_configs(preset="huge")
