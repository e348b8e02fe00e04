"""What a sweep runs over: models (``.tflite`` files, or a ``models.json`` manifest giving each its calibration and
evaluation data) and configurations (a grid file, or a preset).

Everything is read and checked before the first run, so a typo in a manifest or a grid is one error naming it,
not a sweep that fails run after run.

Manifest (paths relative to the manifest's folder; only ``path`` is required)::

    {"mobilenet": {"path": "mobilenet.tflite", "calibration": "calibration.npy",
                   "data": "validation.npz", "labels": "validation_labels.npy"}}

Grid: a JSON object, configuration name -> ``engine.compress`` keyword options; ``recipe`` is a recipe (its JSON
form, or a file relative to the grid's folder) under the options::

    {"int8": {"quantize": "int8"}, "mixed": {"recipe": "mixed.json", "granularity": "tensor"},
     "int4-30dB": {"quantize": "weight-int4", "target_sqnr": 30}}
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.accuracy import BUDGET_KEYWORDS
from engine.errors import EngineError
from engine.recipe import Origin, Recipe, is_full_integer
from engine.recipes import STANDARD_MODES

MANIFEST_KEYS = ("path", "calibration", "data", "labels")
# engine.compress keywords that are not recipe options.
_COMPRESS_KEYWORDS = ("recipe", "exclude", "share_identical_buffers", *BUDGET_KEYWORDS)
# Errors name an option as a grid spells it (the configuration is named before them).
_AS_WRITTEN = Origin(lambda option: option)
# Names become file names (RESULTS/models/MODEL/CONFIG.tflite).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# The standard preset: one configuration per compression mode (engine.recipes.STANDARD_MODES), more pruning and
# clustering levels, and the accuracy-aware search at one target.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "standard": {
        **STANDARD_MODES,
        "prune-0.75-sparse": {"prune": 0.75},
        "cluster-64": {"cluster": 64},
        "cluster-256": {"cluster": 256},
        "weight-int4-target-30dB": {"quantize": "weight-int4", "target_sqnr": 30.0},
    }
}


@dataclass(frozen=True)
class ModelEntry:
    """One model of a sweep: its name (unique), its file, and optional data files (absolute paths)."""

    name: str
    path: str
    calibration: str | None = None
    data: str | None = None
    labels: str | None = None

    def files(self) -> dict[str, str]:
        """The files the runs read, by role."""
        return {key: getattr(self, key) for key in MANIFEST_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class Config:
    """One configuration: its name and the ``engine.compress`` keyword options (``recipe`` resolved to a dict)."""

    name: str
    options: dict[str, Any]

    @property
    def needs_calibration(self) -> bool:
        """Whether compress reads calibration data in this configuration (and refuses it otherwise)."""
        if self.options.keys() & set(BUDGET_KEYWORDS):
            return True
        recipe = recipe_of(self.options)
        return is_full_integer(recipe.options.get("quantize")) or recipe.fits_to_data()


def recipe_of(options: dict[str, Any]) -> Recipe:
    """The recipe ``engine.compress`` builds from these keyword options (checked: an unknown or useless option is
    an error)."""
    base = Recipe.from_dict(options.get("recipe") or {})
    recipe_options = {k: v for k, v in options.items() if k not in _COMPRESS_KEYWORDS}
    return base.with_options(options.get("exclude"), origin=_AS_WRITTEN, **recipe_options)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise EngineError(f"{what} {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise EngineError(f"{what} {path}: not valid JSON ({exc})") from None


def _name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise EngineError(f"{what} name {name!r}: use letters, digits and . _ + - (it names files)")
    return name


def load_models(sources: list[str | os.PathLike[str]]) -> list[ModelEntry]:
    """Models from ``.tflite`` paths (named by their stem) and ``.json`` manifests, in the order given."""
    entries: list[ModelEntry] = []
    for source in sources:
        path = Path(source)
        if path.suffix == ".json":
            entries += _manifest(path)
        else:
            entries.append(ModelEntry(_name(path.stem, "model"), _existing(path, "model")))
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise EngineError(f"two models are named {entry.name!r}; names must be unique (rename one in a manifest)")
        seen.add(entry.name)
    if not entries:
        raise EngineError("no models to sweep")
    return entries


def _manifest(path: Path) -> list[ModelEntry]:
    manifest = _read_json(path, "manifest")
    if not isinstance(manifest, dict) or not manifest:
        raise EngineError(f'manifest {path}: expected an object of model name -> {{"path": ..., ...}}')
    entries = []
    for name, entry in manifest.items():
        where = f"manifest {path}: model {name!r}"
        if not isinstance(entry, dict) or "path" not in entry:
            raise EngineError(f'{where}: expected an object with at least "path"')
        unknown = sorted(set(entry) - set(MANIFEST_KEYS))
        if unknown:
            raise EngineError(f"{where}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(MANIFEST_KEYS)})")
        files = {key: _existing(path.parent / str(entry[key]), f"{where}: {key}") for key in entry}
        if "labels" in files and "data" not in files:
            raise EngineError(f"{where}: labels need data (one class per data sample)")
        entries.append(ModelEntry(_name(name, "model"), **files))
    return entries


def _existing(path: Path, what: str) -> str:
    if not path.is_file():
        raise EngineError(f"{what} {path}: file not found")
    return str(path.resolve())


def load_configs(grid: str | os.PathLike[str] | None = None, preset: str | None = None) -> list[Config]:
    """The configurations of a grid file or a preset (exactly one), each checked as ``engine.compress`` checks
    its options."""
    if (grid is None) == (preset is None):
        raise EngineError("give either a grid of configurations (--configs GRID.json) or a preset (--preset)")
    if preset is not None:
        if preset not in PRESETS:
            raise EngineError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
        return [_config(name, options, f"preset {preset}") for name, options in PRESETS[preset].items()]
    assert grid is not None
    path = Path(grid)
    configs = _read_json(path, "grid")
    if not isinstance(configs, dict) or not configs:
        raise EngineError(f"grid {path}: expected an object of configuration name -> engine.compress options")
    return [_config(name, options, f"grid {path}", path.parent) for name, options in configs.items()]


def _config(name: str, options: Any, where: str, folder: Path | None = None) -> Config:
    where = f"{where}: configuration {name!r}"
    if not isinstance(options, dict):
        raise EngineError(f"{where}: expected an object of engine.compress options")
    options = dict(options)
    if isinstance(options.get("recipe"), str) and folder is not None:
        recipe_path = folder / options["recipe"]
        options["recipe"] = Recipe.load(recipe_path).to_dict()
    try:
        recipe_of(options)
    except EngineError as exc:
        raise EngineError(f"{where}: {exc}") from None
    return Config(_name(name, "configuration"), options)
