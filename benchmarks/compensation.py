"""Error compensation from the float model (``--rounding``) side by side with nearest rounding, on the real models.

Usage::

    python benchmarks/compensation.py [--json PATH] [--models a,b] [--samples N]

For each MediaPipe model LiteRT runs and the MobileNet-sized net of benchmarks/full_integer.py, ``--samples``
photo crops (``engine.zoo.calibration_photos``, default 32) are split once as the budgeted search splits them
(engine.accuracy.candidates: seeded, 75% to fit on, 25% held out): the weights are fitted (and full int8
calibrated) on the first part, and every form is judged on the held-out part, pooled over its samples, worst
output, in the default runtime (engine.accuracy.candidates.Judge).  Rows: weight-int4 and full int8, each with
nearest, gptq and adaround rounding (weight-int4 gptq also sequential, --gradual in its default 4 stages; int8
also with --bias-correction), and weight-int8 per tensor with and without cross-layer equalization (--equalize;
refused with per-channel weights and in int8, docs/cli.md).
Each compress runs as ``python -m engine compress`` in a fresh process: whole-process wall time and peak RSS.
Writes benchmarks/results/compensation.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (puts the worktree's engine first)
import numpy as np
from harness import db, environment, markdown_table, results_argument, run_process, save
from models import judged_models

from engine.accuracy.candidates import Judge, load_data
from engine.format.reader import read_model
from engine.zoo import calibration_photos

FORMS: dict[str, list[str]] = {
    "weight-int4 nearest": ["--quantize", "weight-int4"],
    "weight-int4 gptq": ["--quantize", "weight-int4", "--rounding", "gptq"],
    "weight-int4 gptq+gradual": ["--quantize", "weight-int4", "--rounding", "gptq", "--gradual"],
    "weight-int4 adaround": ["--quantize", "weight-int4", "--rounding", "adaround"],
    "int8 nearest": ["--quantize", "int8"],
    "int8 bias correction": ["--quantize", "int8", "--bias-correction"],
    "int8 gptq": ["--quantize", "int8", "--rounding", "gptq"],
    "int8 adaround": ["--quantize", "int8", "--rounding", "adaround"],
    "weight-int8 per-tensor": ["--quantize", "weight-int8", "--granularity", "tensor"],
    "weight-int8 per-tensor + equalize": ["--quantize", "weight-int8", "--granularity", "tensor", "--equalize"],
}


def measure(name: str, path: Path, value_range: tuple[float, float], samples: int, tmp: Path) -> dict[str, Any]:
    """Every form of one model: held-out SQNR, size, whole-process time and peak RSS."""
    model = read_model(path)
    photos = calibration_photos(model.main.inputs[0].shape, samples, value_range=value_range, seed=1)
    data = load_data(model, photos, None, 0.25, True, "benchmark")
    fit = tmp / f"{name}.fit.npy"
    np.save(fit, next(iter(data.calibration.values())))
    judge = Judge(path.read_bytes(), data)
    rows: dict[str, Any] = {}
    for form, flags in FORMS.items():
        out, logs = tmp / f"{name}.{form.replace(' ', '_')}.tflite", tmp / "logs"
        logs.mkdir(exist_ok=True)
        needs_data = "int8" in flags or "--rounding" in flags
        command = [sys.executable, "-m", "engine", "compress", str(path), "-o", str(out), *flags]
        command += ["--calibration", str(fit)] if needs_data else []
        run = run_process(command, out, logs, require_output=True)
        row = {"wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"], "error": run["error"]}
        if run["error"] is None:
            measured = judge.measure(out.read_bytes())
            row.update(sqnr_db=measured.sqnr_db, bytes=out.stat().st_size, error=measured.error)
        rows[form] = row
        print(f"{name} {form}: {db(row.get('sqnr_db'))} dB, {run['wall_s']:.1f} s", file=sys.stderr)
    return {"fit_samples": data.calibration_count, "held_out": len(data.held_out), "forms": rows}


def render(results: dict[str, Any]) -> str:
    header = ["model", *FORMS]
    sqnr = [[name, *(db(r["forms"][f].get("sqnr_db")) for f in FORMS)] for name, r in results["models"].items()]
    seconds = [[name, *(f"{r['forms'][f]['wall_s']:.1f}" for f in FORMS)] for name, r in results["models"].items()]
    memory = [
        [name, *(f"{r['forms'][f]['peak_rss_bytes'] / 1e6:.0f}" for f in FORMS)]
        for name, r in results["models"].items()
    ]
    errors = [
        f"- {name}, {form}: {row['error']}"
        for name, r in results["models"].items()
        for form, row in r["forms"].items()
        if row.get("error")
    ]
    gains = [
        r["forms"][f"{mode} {method}"]["sqnr_db"] - r["forms"][f"{mode} nearest"]["sqnr_db"]
        for r in results["models"].values()
        for mode in ("weight-int4", "int8")
        for method in ("gptq", "adaround")
        if r["forms"][f"{mode} {method}"].get("sqnr_db") is not None
        and r["forms"][f"{mode} nearest"].get("sqnr_db") is not None
    ]
    parts = [
        "### Held-out output SQNR (dB, worst output pooled over the held-out samples, default runtime)",
        markdown_table(header, sqnr),
        "### Whole-process time (s)",
        markdown_table(header, seconds),
        "### Peak RSS (MB)",
        markdown_table(header, memory),
    ]
    if gains:
        parts.append(f"Gain over nearest rounding, all rows: median {np.median(gains):+.1f} dB, range "
                     f"{min(gains):+.1f} to {max(gains):+.1f} dB.")  # fmt: skip
    if errors:
        parts.append("Failures:\n" + "\n".join(errors))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "compensation")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--samples", type=int, default=32, help="photo crops per model (default 32)")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(), "samples": args.samples, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, value_range) in judged_models(
            args.models.split(",") if args.models else None, Path(tmp)
        ).items():
            results["models"][name] = measure(name, path, value_range, args.samples, Path(tmp))
    results["total_s"] = time.perf_counter() - started
    save(results, render(results), args.json)


if __name__ == "__main__":
    main()
