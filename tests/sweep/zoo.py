"""A small zoo for sweep tests: three random conv nets (tests/accuracy/models.py), each with its data, in a
``models.json`` manifest, and a grid of five configurations.  The third model has no calibration data, so the
grid's int8 configuration fails on it: a failing run the sweep records and goes past."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.accuracy.models import small_net

GRID = {
    "float16": {"quantize": "float16"},
    "weight-int8": {"quantize": "weight-int8"},
    "int8": {"quantize": "int8"},
    "prune-0.5": {"prune": 0.5},
    "cluster-16": {"cluster": 16},
}
MODELS = ("net0", "net1", "net2")
FAILS = ("net2", "int8")  # no calibration data for a full-integer configuration


def make_zoo(folder: Path) -> tuple[Path, Path]:
    """Write the models, their data, ``models.json`` and ``grid.json`` into ``folder``; the manifest and grid."""
    manifest = {}
    for seed, name in enumerate(MODELS):
        (folder / name).mkdir()
        _, samples = small_net(folder / name, seed=seed)
        np.save(folder / name / "calibration.npy", samples[:16])
        np.save(folder / name / "data.npy", samples[16:])
        np.save(folder / name / "labels.npy", np.arange(len(samples) - 16) % 10)
        entry = {"path": f"{name}/small.tflite", "data": f"{name}/data.npy", "labels": f"{name}/labels.npy"}
        if name != FAILS[0]:
            entry["calibration"] = f"{name}/calibration.npy"
        manifest[name] = entry
    (folder / "models.json").write_text(json.dumps(manifest))
    (folder / "grid.json").write_text(json.dumps(GRID))
    return folder / "models.json", folder / "grid.json"
