"""Example recipes shipped with the engine (``--recipe``): load one with ``Recipe.load(EXAMPLES["name"])``; and
``STANDARD_MODES``, one configuration per compression mode, which the tests and benchmarks run on every model."""

from pathlib import Path

EXAMPLES: dict[str, Path] = {p.stem: p for p in sorted(Path(__file__).parent.glob("*.json"))}

# name -> engine.compress options.  The full-integer ones also need calibration data.  "prune-0.5" stores the
# zeros dense; "prune-0.5-sparse" in TFLite's sparse format behind DENSIFY where that is smaller (the default).
STANDARD_MODES: dict[str, dict[str, object]] = {
    "float16": {"quantize": "float16"},
    "weight-int8": {"quantize": "weight-int8"},
    "dynamic-int8": {"quantize": "dynamic-int8"},
    "weight-int4": {"quantize": "weight-int4"},
    "dynamic-int4": {"quantize": "dynamic-int4"},
    "dynamic-int4-block32": {"quantize": "dynamic-int4", "granularity": "block:32"},
    "prune-0.5": {"prune": 0.5, "sparse_format": "dense"},
    "prune-0.5-sparse": {"prune": 0.5, "sparse_format": "tflite"},
    "cluster-16": {"cluster": 16},
    "cluster-16-gather": {"cluster": 16, "cluster_storage": "gather"},
    "int8": {"quantize": "int8"},
    "int16x8": {"quantize": "int16x8"},
    "int8-io-int8": {"quantize": "int8", "io": "int8"},
}
