"""Pruning and clustering sweep: size and output quality on the real models, and what gather storage costs at run time.

Usage::

    python benchmarks/sweep.py [--json PATH] [--part size|latency] [--quick] [--invokes N] [--repeats N] [--jobs N]

Two parts, each printed as markdown tables (KB/MB = 10^3/10^6 bytes):

* ``size``: the 11 MediaPipe models LiteRT runs (``engine.zoo.mediapipe_models()`` minus
  ``CUSTOM_OP_MODELS``), each compressed with every configuration of ``CONFIGS`` through
  ``engine.compress(path, output=..., **options)``: pruning at 50/75/90% in each pattern (unstructured per
  layer and global, 2:4 at 50% only, block:4x1, channel at 25/50%), clustering to K=16/64/256 (values
  storage), the combinations with weight-int8, and weight-int8 alone as the reference point.  Each output is
  the compressed file's gzip size (``report.gzip_bytes_after``, zlib level 6) and "x smaller" against the
  input file's gzip size, and output SQNR in LiteRT (builtin kernels, ``engine.runtime.litert.run``) against the
  input model on 3 real photos (``engine.zoo.photo_input`` in the model's input range): per output, the
  3 photos' outputs are concatenated and scored with ``engine.quant.metrics.sqnr_db``; the tables show the worst
  and the median output.  Models run in a pool of ``--jobs`` processes (sizes and SQNR do not depend on
  timing).  Then the goal of the issue for the float32 models (``FLOAT32_MODELS``): the smallest gzip size
  over all configurations whose worst output reaches ``GOAL_DB``, against ``GOAL_RATIO`` of the input's gzip.
* ``latency``: clustered weights stored as values (a float or int8 weight with K distinct values) against gather
  storage (uint8 indices + a float codebook, rebuilt at run time by CAST + GATHER), for K=16 and 256 (tensor
  granularity), against the original model and weight-int8, on ``LATENCY_MODELS``. File size (not gzip) and the
  median time of ``--invokes`` invokes after ``WARMUP`` unmeasured ones, each model and interpreter set-up in a
  fresh process (``--child-latency``), median over ``--repeats`` such processes: LiteRT with 1 thread and the
  builtin kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), and with the default options (1 thread, XNNPACK). The
  child also saves its outputs, and the table shows their worst-output SQNR against the original model on the
  builtin kernels, so a runtime that computes a form wrong shows up.

About 3 minutes on the 2-core CI machine (``--quick``: 3 models, fewer configurations, under a minute).  Writes
benchmarks/results/sweep.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, child_env, db, environment, results_argument, save  # puts the worktree's engine first
from models import photo_inputs, real_models

INT8 = {"quantize": "weight-int8"}


def _prune(amount: float, pattern: str = "unstructured", scope: str = "layer") -> tuple[str, dict[str, Any]]:
    label = {"unstructured": "global" if scope == "global" else "layer"}.get(pattern, pattern)
    options: dict[str, Any] = {"prune": amount, "prune_pattern": pattern}
    if scope != "layer":
        options["prune_scope"] = scope
    return f"prune {round(100 * amount)}% {label}", options


# (label, compress options): the configurations of the size part, in table order.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("weight-int8", dict(INT8)),
    *[_prune(a) for a in (0.5, 0.75, 0.9)],
    *[_prune(a, scope="global") for a in (0.5, 0.75, 0.9)],
    _prune(0.5, "2:4"),
    *[_prune(a, "block:4x1") for a in (0.5, 0.75, 0.9)],
    *[_prune(a, "channel") for a in (0.25, 0.5)],
    *[(f"cluster {k}", {"cluster": k, "cluster_storage": "values"}) for k in (16, 64, 256)],
    ("prune 50% layer + int8", {"prune": 0.5, **INT8}),
    ("cluster 16 + int8", {"cluster": 16, **INT8}),
    ("cluster 256 + int8", {"cluster": 256, **INT8}),
    ("prune 50% + cluster 16 + int8", {"prune": 0.5, "cluster": 16, **INT8}),
    # beyond the list: the step between 16 and 256 levels, stored as int8
    ("cluster 64 + int8", {"cluster": 64, **INT8}),
]
QUICK_CONFIGS = (
    "weight-int8", "prune 50% layer", "prune 50% global", "prune 50% 2:4", "prune 50% block:4x1",
    "prune 25% channel", "cluster 16", "cluster 256", "cluster 16 + int8", "prune 50% + cluster 16 + int8",
)  # fmt: skip
QUICK_MODELS = ("hand_recrop", "iris_landmark", "palm_detection_lite")
FLOAT32_MODELS = ("hand_recrop", "iris_landmark")
GOAL_DB = 30.0
GOAL_RATIO = 0.25

# (label, compress options or None for the input file): the forms the latency part times.
LATENCY_FORMS: list[tuple[str, dict[str, Any] | None]] = [
    ("original", None),
    ("weight-int8", dict(INT8)),
    *[
        form
        for k in (16, 256)
        for form in (
            (f"cluster {k} values", {"cluster": k, "cluster_granularity": "tensor", "cluster_storage": "values"}),
            (f"cluster {k} values + int8", {"cluster": k, "cluster_granularity": "tensor", **INT8}),
            (f"cluster {k} gather", {"cluster": k, "cluster_granularity": "tensor", "cluster_storage": "gather"}),
        )
    ],
]
LATENCY_MODELS = ("iris_landmark", "hand_recrop", "palm_detection_lite")
RUNTIMES = ("builtin", "default")
WARMUP = 5
KB, MB = 1e3, 1e6


# -------------------------------------------------------------------------------------------- shared


def score(reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """SQNR of each output over the concatenated photos, then the worst and the median output."""
    from engine.quant.metrics import sqnr_db

    names = list(reference[0])
    if any(list(c) != names for c in candidate):  # same output names in the same order, else by position
        candidate = [dict(zip(names, c.values(), strict=True)) for c in candidate]
    per_output = {}
    for name in names:
        ref = np.concatenate([r[name].astype(np.float64).ravel() for r in reference])
        got = np.concatenate([c[name].astype(np.float64).ravel() for c in candidate])
        per_output[name] = sqnr_db(ref, got)
    values = list(per_output.values())
    return {"worst_sqnr_db": min(values), "median_sqnr_db": statistics.median(values), "output_sqnr_db": per_output}


# --------------------------------------------------------------------------------------- size part


def size_model(name: str, path: str, configs: list[tuple[str, dict[str, Any]]], tmp: str) -> dict[str, Any]:
    """One model, every configuration: gzip sizes and SQNR (runs in a pool worker)."""
    import engine
    from engine.errors import EngineError
    from engine.report import gzip_size
    from engine.runtime.litert import run

    source = Path(path)
    inputs = photo_inputs(name, source)
    reference = [run(source, x) for x in inputs]
    out = Path(tmp) / f"{name}.tflite"
    result: dict[str, Any] = {
        "file_bytes": source.stat().st_size,
        "gzip_bytes": gzip_size(source),
        "outputs": len(reference[0]),
        "rows": {},
    }
    for label, options in configs:
        row: dict[str, Any] = {"options": options, "error": None}
        started = time.perf_counter()
        try:
            _, report = engine.compress(source, output=out, **options)
        except EngineError as exc:
            row["error"] = f"compress: {exc}"
            result["rows"][label] = row
            continue
        row["compress_s"] = time.perf_counter() - started
        row["file_bytes"] = report.file_bytes_after
        row["gzip_bytes"] = report.gzip_bytes_after if report.gzip_bytes_after is not None else gzip_size(out)
        row["x_smaller_gzip"] = result["gzip_bytes"] / row["gzip_bytes"]
        try:
            row.update(score(reference, [run(out, x) for x in inputs]))
        except EngineError as exc:
            row["error"] = f"LiteRT: {exc}"
        out.unlink(missing_ok=True)
        result["rows"][label] = row
    return result


def part_size(models: dict[str, Path], configs: list[tuple[str, dict[str, Any]]], jobs: int) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sweep-size-") as tmp, ProcessPoolExecutor(jobs) as pool:
        futures = {name: pool.submit(size_model, name, str(path), configs, tmp) for name, path in models.items()}
        per_model = {name: future.result() for name, future in futures.items()}
    totals = {}
    gzip_in = sum(m["gzip_bytes"] for m in per_model.values())
    for label, _ in configs:
        rows = [m["rows"][label] for m in per_model.values()]
        ok = [r for r in rows if not r["error"]]
        gz = sum(r["gzip_bytes"] for r in rows if r.get("gzip_bytes") is not None)
        totals[label] = {
            "gzip_bytes": gz,
            "x_smaller_gzip": gzip_in / gz if gz else None,
            "worst_sqnr_db": min((r["worst_sqnr_db"] for r in ok), default=None),
            "median_worst_sqnr_db": statistics.median(r["worst_sqnr_db"] for r in ok) if ok else None,
            "models_at_goal_db": sum(r["worst_sqnr_db"] >= GOAL_DB for r in ok),
            "errors": len(rows) - len(ok),
        }
    goal = {}
    for name in FLOAT32_MODELS:
        if name not in per_model:
            continue
        model = per_model[name]
        passing = [(r["gzip_bytes"], label) for label, r in model["rows"].items()
                   if not r["error"] and r["worst_sqnr_db"] >= GOAL_DB]  # fmt: skip
        best = min(passing, default=None)
        ratio = best[0] / model["gzip_bytes"] if best else None
        goal[name] = {
            "input_gzip_bytes": model["gzip_bytes"],
            "best_config": best[1] if best else None,
            "best_gzip_bytes": best[0] if best else None,
            "ratio": ratio,
            "worst_sqnr_db": model["rows"][best[1]]["worst_sqnr_db"] if best else None,
            "met": ratio is not None and ratio <= GOAL_RATIO,
        }
    return {
        "models": per_model,
        "input_gzip_bytes": gzip_in,
        "totals": totals,
        "goal": goal,
        "seconds": time.perf_counter() - started,
    }


def markdown_size_model(model: dict[str, Any]) -> str:
    lines = [
        "| configuration | gzip KB | x smaller (gzip) | SQNR worst / median dB | file KB |",
        "|---|---|---|---|---|",
        f"| input | {model['gzip_bytes'] / KB:.1f} | 1.00x | - | {model['file_bytes'] / KB:.1f} |",
    ]
    for label, r in model["rows"].items():
        if r["error"] and "gzip_bytes" not in r:
            lines.append(f"| {label} | - | - | {r['error']} | - |")
            continue
        quality = r["error"] or f"{db(r['worst_sqnr_db'])} / {db(r['median_sqnr_db'])}"
        lines.append(f"| {label} | {r['gzip_bytes'] / KB:.1f} | {r['x_smaller_gzip']:.2f}x | {quality} | "
                     f"{r['file_bytes'] / KB:.1f} |")  # fmt: skip
    return "\n".join(lines)


def markdown_size_totals(result: dict[str, Any]) -> str:
    count = len(result["models"])
    lines = [
        f"| configuration | total gzip MB | x smaller (gzip) | worst-output SQNR: worst model / median model dB "
        f"| models >= {GOAL_DB:.0f} dB (of {count}) |",
        "|---|---|---|---|---|",
        f"| input | {result['input_gzip_bytes'] / MB:.3f} | 1.00x | - | - |",
    ]
    for label, t in result["totals"].items():
        errors = f" ({t['errors']} failed)" if t["errors"] else ""
        x = f"{t['x_smaller_gzip']:.2f}x" if t["x_smaller_gzip"] else "-"
        lines.append(f"| {label} | {t['gzip_bytes'] / MB:.3f} | {x} | {db(t['worst_sqnr_db'])} / "
                     f"{db(t['median_worst_sqnr_db'])} | {t['models_at_goal_db']}{errors} |")  # fmt: skip
    return "\n".join(lines)


def markdown_goal(result: dict[str, Any]) -> str:
    lines = [
        f"| float32 model | input gzip KB | smallest gzip at >= {GOAL_DB:.0f} dB worst output | configuration "
        f"| worst SQNR dB | of input gzip | goal <= {GOAL_RATIO:.2f}x |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in result["goal"].items():
        if g["best_config"] is None:
            lines.append(f"| {name} | {g['input_gzip_bytes'] / KB:.1f} | none | - | - | - | not met |")
            continue
        lines.append(f"| {name} | {g['input_gzip_bytes'] / KB:.1f} | {g['best_gzip_bytes'] / KB:.1f} KB | "
                     f"{g['best_config']} | {db(g['worst_sqnr_db'])} | {g['ratio']:.3f}x | "
                     f"{'met' if g['met'] else 'not met'} |")  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ latency part


def latency_child(model: str, runtime: str, invokes: int, outputs: str, input_file: str) -> None:
    """What a latency process runs: load, warm up, time ``invokes`` invokes, print JSON, save the outputs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs: dict[str, Any] = {"model_path": model, "num_threads": 1}
    if runtime == "builtin":
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    started = time.perf_counter()
    interp = Interpreter(**kwargs)
    interp.allocate_tensors()
    load_s = time.perf_counter() - started
    inputs = np.load(input_file)
    detail = interp.get_input_details()[0]
    saved = {}
    for i in range(inputs.shape[0]):  # one invoke per photo, whose outputs are kept for the SQNR check
        interp.set_tensor(detail["index"], inputs[i : i + 1].astype(detail["dtype"]))
        interp.invoke()
        for d in interp.get_output_details():
            saved[f"{i}:{d['name']}"] = interp.get_tensor(d["index"]).copy()
    for _ in range(WARMUP):
        interp.invoke()
    times = []
    for _ in range(invokes):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    np.savez(outputs, **saved)
    print(json.dumps({"load_s": load_s, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}))


def _unpack(path: Path) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        photos: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            index, name = key.split(":", 1)
            photos.setdefault(int(index), {})[name] = data[key]
    return [photos[i] for i in sorted(photos)]


def part_latency(
    models: dict[str, Path], forms: list[tuple[str, dict[str, Any] | None]], invokes: int, repeats: int
) -> dict[str, Any]:
    """Each model's forms written once, then ``repeats`` rounds over forms and runtimes, one process each.

    Rounds go over every form before the next, so a slow spell of the machine hits the forms alike; the
    table shows the median over the rounds of each process's median invoke time.
    """
    import engine
    from engine.runtime.litert import run

    started = time.perf_counter()
    env = child_env()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-latency-") as name:
        tmp = Path(name)
        for model_name, source in models.items():
            inputs = photo_inputs(model_name, source)
            reference = [run(source, x) for x in inputs]
            input_file = tmp / "inputs.npy"
            np.save(input_file, np.concatenate(inputs))
            rows: dict[str, dict[str, Any]] = {}
            paths = {}
            for index, (label, options) in enumerate(forms):
                paths[label] = source
                if options is not None:
                    paths[label] = tmp / f"{model_name}-{index}.tflite"
                    engine.compress(source, output=paths[label], **options)
                rows[label] = {"options": options, "file_bytes": paths[label].stat().st_size}
                rows[label].update({runtime: {"error": None, "median_ms_all": []} for runtime in RUNTIMES})
            for _ in range(repeats):
                for label, _options in forms:
                    for runtime in RUNTIMES:
                        row = rows[label][runtime]
                        if row["error"]:
                            continue
                        saved = tmp / "outputs.npz"
                        command = [sys.executable, str(Path(__file__).resolve()), "--child-latency", str(paths[label]),
                                   runtime, str(invokes), str(saved), str(input_file)]  # fmt: skip
                        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
                        if done.returncode:
                            lines = [line for line in done.stderr.splitlines() if line.strip()]
                            row["error"] = lines[-1] if lines else f"exit code {done.returncode}"
                            continue
                        measured = json.loads(done.stdout.strip().splitlines()[-1])
                        row["median_ms_all"].append(measured["median_ms"])
                        row["median_ms"] = statistics.median(row["median_ms_all"])
                        row.update(score(reference, _unpack(saved)))
            result[model_name] = rows
    return {"models": result, "invokes": invokes, "repeats": repeats, "seconds": time.perf_counter() - started}


def markdown_latency(result: dict[str, Any]) -> str:
    lines = [
        "| model | form | file KB | builtin ms | default (XNNPACK) ms | worst SQNR builtin / default dB |",
        "|---|---|---|---|---|---|",
    ]
    for model_name, rows in result["models"].items():
        for label, row in rows.items():
            cells = []
            for runtime in RUNTIMES:
                r = row[runtime]
                cells.append(f"error: {r['error']}" if r["error"] else f"{r['median_ms']:.2f}")
            sqnr = " / ".join("-" if row[rt]["error"] else db(row[rt]["worst_sqnr_db"]) for rt in RUNTIMES)
            lines.append(f"| {model_name} | {label} | {row['file_bytes'] / KB:.1f} | {' | '.join(cells)} | {sqnr} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "sweep")
    parser.add_argument("--part", choices=("size", "latency"), action="append",
                        help="run only this part (repeatable; default: both)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"models {', '.join(QUICK_MODELS)}, fewer configurations")
    parser.add_argument("--models", help="comma-separated MediaPipe models for the size part")
    parser.add_argument("--invokes", type=int, default=50, help="timed invokes per latency measurement (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per latency measurement (default 3)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes for the size part")
    parser.add_argument("--child-latency", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_latency:
        model, runtime, invokes, outputs, input_file = args.child_latency
        latency_child(model, runtime, int(invokes), outputs, input_file)
        return 0

    parts = args.part or ["size", "latency"]
    names = args.models.split(",") if args.models else list(QUICK_MODELS) if args.quick else None
    configs = [c for c in CONFIGS if not args.quick or c[0] in QUICK_CONFIGS]
    settings = {"quick": args.quick, "invokes": args.invokes, "repeats": args.repeats, "jobs": args.jobs}
    results: dict[str, Any] = {"environment": environment(), "settings": settings}
    started = time.perf_counter()
    if "size" in parts:
        results["size"] = part_size(real_models(names), configs, args.jobs)
    if "latency" in parts:
        latency_models = real_models(LATENCY_MODELS[:1] if args.quick else LATENCY_MODELS)
        forms = [f for f in LATENCY_FORMS if not args.quick or "256" not in f[0]]
        invokes, repeats = (20, 1) if args.quick else (args.invokes, args.repeats)
        results["latency"] = part_latency(latency_models, forms, invokes, repeats)
    results["total_s"] = time.perf_counter() - started

    env = results["environment"]
    parts = [f"# Pruning and clustering sweep ({env['date']}, {env['cpus']} CPUs, ai-edge-litert "
             f"{env['versions']['ai-edge-litert']}, {results['total_s']:.0f} s)"]  # fmt: skip
    if "size" in results:
        size = results["size"]
        parts += [f"## Size and quality: all {len(size['models'])} models ({size['seconds']:.0f} s)",
                  markdown_size_totals(size)]  # fmt: skip
        if size["goal"]:
            parts += [f"## Goal: >= {GOAL_DB:.0f} dB at <= {GOAL_RATIO:.2f}x the input's gzip (float32 models)",
                      markdown_goal(size)]  # fmt: skip
        for name, model in size["models"].items():
            parts.append(f"### {name} ({model['outputs']} outputs)\n\n" + markdown_size_model(model))
    if "latency" in results:
        latency = results["latency"]
        parts += [f"## Gather vs values storage: latency, 1 thread, median of {latency['invokes']} invokes, "
                  f"median over {latency['repeats']} processes ({latency['seconds']:.0f} s)",
                  markdown_latency(latency)]  # fmt: skip
    save(results, "\n\n".join(parts), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
