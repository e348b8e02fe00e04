"""Full-integer quantization on the MediaPipe models: every observer, with and without bias correction, and 16x8.

Usage::

    python benchmarks/calibration.py [--samples 16] [--json PATH]

For each of the 11 models LiteRT runs, calibrate on ``--samples`` crops of real pictures (engine.zoo), quantize,
and compare with the float model in LiteRT (builtin kernels) on the held-out photo (astronaut, which calibration
never sees): worst output SQNR, and the SQNR of the largest output (the landmarks or boxes; the worst is often a
presence score deep in a sigmoid's tail).  The table ends with the median over the models per configuration and the
median time ``engine.compress`` took.  Writes benchmarks/results/calibration.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, markdown_table, results_argument, save  # puts the worktree's engine first
from models import real_models

import engine
from engine.runtime.validate import validate
from engine.zoo import model_calibration, model_photo

CONFIGS: dict[str, dict[str, object]] = {
    "minmax": {"quantize": "int8", "observer": "minmax"},
    "minmax+bc": {"quantize": "int8", "observer": "minmax", "bias_correction": True},
    "percentile": {"quantize": "int8", "observer": "percentile"},
    "percentile+bc": {"quantize": "int8", "observer": "percentile", "bias_correction": True},
    "mse": {"quantize": "int8", "observer": "mse"},
    "mse+bc": {"quantize": "int8", "observer": "mse", "bias_correction": True},
    "entropy": {"quantize": "int8", "observer": "entropy"},
    "entropy+bc": {"quantize": "int8", "observer": "entropy", "bias_correction": True},
    "int16x8": {"quantize": "int16x8"},
}


def measure(name: str, source: Path, options: dict[str, object], samples: int, folder: Path) -> dict[str, float]:
    """Quantize one model with one configuration; its time and output SQNRs on the held-out photo."""
    out = folder / f"{name}.tflite"
    start = time.perf_counter()
    engine.compress(source, output=out, calibration=model_calibration(name, samples), **options)
    seconds = time.perf_counter() - start
    result = validate(source, out, model_photo(name), intermediates=False, runtime="builtin")
    largest = max(result.outputs, key=lambda o: int(np.prod(o.shape)))
    return {"seconds": seconds, "worst_db": result.worst_sqnr_db, "main_db": largest.sqnr_db}


def markdown(results: dict[str, Any]) -> str:
    """One row per model ("worst / largest output" dB per configuration), then the medians over the models."""
    models = results["models"]
    rows = [[name, *(f"{r['worst_db']:.1f} / {r['main_db']:.1f}" for r in configs.values())]
            for name, configs in models.items()]  # fmt: skip

    def median(config: str, key: str) -> float:
        return statistics.median(models[m][config][key] for m in models)

    rows.append(["**median**", *(f"{median(c, 'worst_db'):.1f} / {median(c, 'main_db'):.1f}" for c in CONFIGS)])
    rows.append(["median time (s)", *(f"{median(c, 'seconds'):.2f}" for c in CONFIGS)])
    title = (f"# Worst output SQNR / largest output SQNR (dB), held-out photo, {results['settings']['samples']} "
             "calibration samples")  # fmt: skip
    return title + "\n\n" + markdown_table(["model", *CONFIGS], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    results_argument(parser, "calibration")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(), "settings": {"samples": args.samples, "configs": CONFIGS}}
    results["models"] = models = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in real_models(None).items():
            models[name] = {c: measure(name, source, opts, args.samples, Path(tmp)) for c, opts in CONFIGS.items()}
            print(name, {c: round(r["worst_db"], 1) for c, r in models[name].items()}, file=sys.stderr, flush=True)
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
