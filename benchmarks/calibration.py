"""Full-integer quantization on the MediaPipe models: every observer, with and without bias correction, and 16x8.

For each of the 11 models LiteRT runs, calibrate on ``--samples`` crops of real pictures (engine.zoo), quantize,
and compare with the float model in LiteRT on the held-out photo (astronaut, which calibration never sees):
worst output SQNR, and the SQNR of the largest output (the landmarks or boxes; the worst is often a presence
score deep in a sigmoid's tail).  Prints a markdown table and the median over the models per configuration.

    python benchmarks/calibration.py [--samples 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import engine
from engine.runtime.validate import validate
from engine.zoo import CUSTOM_OP_MODELS, MODEL_SHA256, mediapipe_model, model_calibration, model_photo

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


def measure(name: str, options: dict[str, object], samples: int, folder: Path) -> dict[str, float]:
    """Quantize one model with one configuration; its time and output SQNRs on the held-out photo."""
    out = folder / f"{name}.tflite"
    start = time.perf_counter()
    engine.compress(mediapipe_model(name), output=out, calibration=model_calibration(name, samples), **options)
    seconds = time.perf_counter() - start
    result = validate(mediapipe_model(name), out, model_photo(name), intermediates=False)
    largest = max(result.outputs, key=lambda o: int(np.prod(o.shape)))
    return {"seconds": seconds, "worst_db": result.worst_sqnr_db, "main_db": largest.sqnr_db}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models = sorted(set(MODEL_SHA256) - CUSTOM_OP_MODELS)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            results[name] = {
                config: measure(name, options, args.samples, Path(tmp)) for config, options in CONFIGS.items()
            }
            print(name, {c: round(r["worst_db"], 1) for c, r in results[name].items()}, flush=True)
    header = "| model | " + " | ".join(CONFIGS) + " |"
    print(f"\nworst output SQNR / largest output SQNR (dB), held-out photo, {args.samples} calibration samples\n")
    print(header + "\n|" + "---|" * (len(CONFIGS) + 1))
    for name in models:
        cells = [f"{r['worst_db']:.1f} / {r['main_db']:.1f}" for r in results[name].values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    medians = [
        f"{statistics.median(results[m][c]['worst_db'] for m in models):.1f} / "
        f"{statistics.median(results[m][c]['main_db'] for m in models):.1f}"
        for c in CONFIGS
    ]
    print("| **median** | " + " | ".join(medians) + " |")
    seconds = [f"{statistics.median(results[m][c]['seconds'] for m in models):.2f}" for c in CONFIGS]
    print("| median time (s) | " + " | ".join(seconds) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
