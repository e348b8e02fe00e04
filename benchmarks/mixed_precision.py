"""Mixed precision under a budget (engine.accuracy.search) side by side with the uniform modes and the common hand
recipe, on the real models.

Usage::

    python benchmarks/mixed_precision.py [--json PATH] [--models a,b] [--targets 25,30,35] [--families weight-int4,int8]
                                         [--samples N] [--quick]

For each model (the MediaPipe models LiteRT runs, and ``mobilenet_v1_224`` from benchmarks/full_integer.py),
``--samples`` crops (``engine.zoo.calibration_photos``, default 32) are the data.  Every form is judged as the
search judges (engine.accuracy.candidates.Judge: worst output SQNR pooled over the held-out samples, default
runtime, 1 thread): the full-integer forms calibrate on the same 75% the search calibrates on and are judged on the
held-out 25%; the weight forms are judged on every sample.  Rows:

* the uniform modes int8, int16x8, weight-int8, weight-int4;
* the hand recipe "first and last layer float": weight-int4 (and int8) with the first and the last weighted op left
  float;
* ``--target-sqnr`` searches for each target and family: size, default-runtime latency, the re-measured SQNR,
  search time and candidates judged.

Latency: every form of a model timed together with the float model (engine.runtime.latency.measure_latency: 1
thread, interleaved, median of 20), as a ratio to float.  Writes benchmarks/results/mixed_precision.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (puts the worktree's engine first)
from harness import db, environment, markdown_table, results_argument, save
from models import judged_models

import engine
from engine.accuracy.candidates import Judge, anchored, load_data
from engine.format.reader import read_model
from engine.graph.weights import find_weights
from engine.runtime.latency import median_latency_ms
from engine.zoo import calibration_photos

UNIFORM = {"int8": {"quantize": "int8"}, "int16x8": {"quantize": "int16x8"}, "weight-int8": {"quantize": "weight-int8"},
           "weight-int4": {"quantize": "weight-int4"}}  # fmt: skip


def _first_last(path: Path) -> list[str]:
    weights = [w for w in find_weights(read_model(path)) if w.subgraph_index == 0]
    return [anchored(w.name) for w in (weights[:1] + weights[-1:])] if weights else []


def bench_model(name: str, path: Path, value_range: tuple[float, float], args: argparse.Namespace, tmp: Path) -> dict:
    model = read_model(path)
    crops = calibration_photos(model.main.inputs[0].shape, args.samples, value_range=value_range, seed=1)
    judges = {fi: Judge(path.read_bytes(), load_data(model, crops, None, 0.25, fi, "benchmark")) for fi in (0, 1)}
    rows: list[dict[str, Any]] = []
    forms: list[tuple[str, Path]] = []

    def record(label: str, out: Path, full_integer: bool, extra: dict[str, Any]) -> None:
        m = judges[full_integer].measure(out.read_bytes())
        rows.append({"form": label, "bytes": out.stat().st_size, "ratio": out.stat().st_size / path.stat().st_size,
                     "sqnr_db": m.sqnr_db, **extra})  # fmt: skip
        forms.append((label, out))

    for label, options in UNIFORM.items():
        fi = label in ("int8", "int16x8")
        out = tmp / f"{name}.{label}.tflite"
        try:
            t = time.perf_counter()
            kw = {"calibration": judges[1].data.calibration} if fi else {}
            engine.compress(path, output=out, **options, **kw)
            record(label, out, fi, {"seconds": time.perf_counter() - t})
        except engine.EngineError as exc:
            rows.append({"form": label, "error": str(exc)})
    for family in ("weight-int4", "int8"):
        out = tmp / f"{name}.{family}.firstlast.tflite"
        fi = family == "int8"
        try:
            if fi:  # first and last integer op's outputs left float islands
                ops = [o for o in model.main.operators if o.outputs and o.outputs[0] is not None]
                keep = [anchored(ops[0].outputs[0].name), anchored(ops[-1].outputs[0].name)]
                engine.compress(path, output=out, quantize="int8", exclude=keep, calibration=judges[1].data.calibration)
            else:
                engine.compress(path, output=out, quantize=family, exclude=_first_last(path))
            record(f"{family}, first+last float", out, fi, {})
        except engine.EngineError as exc:
            rows.append({"form": f"{family}, first+last float", "error": str(exc)})
    for family in args.families:
        fi = family == "int8"
        for target in args.targets:
            out = tmp / f"{name}.{family}.{target:g}.tflite"
            t = time.perf_counter()
            try:
                _, report = engine.compress(path, quantize=family, calibration=crops, target_sqnr=target, output=out)
            except engine.EngineError as exc:
                rows.append({"form": f"{family} -> {target:g} dB", "error": str(exc)})
                continue
            s = report.search
            record(f"{family} -> {target:g} dB", out, fi, {"seconds": time.perf_counter() - t, "runs": s.runs,
                   "met": s.met, "chosen": s.chosen, "searched_sqnr_db": s.final["sqnr_db"]})  # fmt: skip
    times = median_latency_ms([path, *(p for _, p in forms)], crops[0][None] if crops.ndim == 4 else None, runs=20)
    by_label = {label: ms / times[0] for (label, _), ms in zip(forms, times[1:], strict=True)}
    for row in rows:
        if row["form"] in by_label:
            row["latency_ratio"] = by_label[row["form"]]
    return {"float_ms": times[0], "bytes": path.stat().st_size, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results_argument(parser, "mixed_precision")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--targets", default="25,30,35", help="target SQNRs in dB (default 25,30,35)")
    parser.add_argument("--families", default="weight-int4,int8", help="modes to search from (default: both)")
    parser.add_argument("--samples", type=int, default=32, help="crops per model (default 32)")
    parser.add_argument("--quick", action="store_true", help="2 models, target 30, weight-int4 only")
    args = parser.parse_args()
    args.targets = [30.0] if args.quick else [float(t) for t in args.targets.split(",")]
    args.families = ["weight-int4"] if args.quick else args.families.split(",")
    names = ["face_detection_short_range", "palm_detection_lite"] if args.quick else None
    names = args.models.split(",") if args.models else names
    results: dict[str, Any] = {"environment": environment(), "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for name, (path, value_range) in judged_models(names, tmp).items():
            print(f"{name} ...", file=sys.stderr)
            results["models"][name] = bench_model(name, path, value_range, args, tmp)
    lines = []
    for name, r in results["models"].items():
        lines += [f"### {name} ({r['bytes']:,} bytes, float {r['float_ms']:.3g} ms)", ""]
        table = [
            [row["form"], f"{row['ratio']:.2f}x" if "ratio" in row else "-", db(row.get("sqnr_db")),
             f"{row['latency_ratio']:.2f}x" if "latency_ratio" in row else "-",
             f"{row['seconds']:.1f}" if "seconds" in row else "-", row.get("runs", "-"),
             ("met" if row["met"] else "NOT MET") if "met" in row else row.get("error", "")[:60]]
            for row in r["rows"]
        ]  # fmt: skip
        lines += [markdown_table(["form", "size", "SQNR dB", "latency", "time s", "candidates", ""], table), ""]
    save(results, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
