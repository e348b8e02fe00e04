"""Latency benchmark: what every compression mode does to inference time on the real models, in LiteRT.

Usage::

    python benchmarks/latency.py [--json PATH] [--models a,b] [--modes x,y] [--runs N] [--quick]

Each of the 11 MediaPipe models LiteRT runs is compressed with every mode of ``MODES`` through
``engine.compress(path, output=..., **options)`` into a temporary folder (the full-integer modes calibrated on
``engine.zoo.model_calibration(name)``).  Then, in each runtime of ``engine.runtime.latency.RUNTIMES`` (``default``:
the interpreter as a user loads it, XNNPACK applied; ``builtin``: the builtin kernels alone), the input model
and all its compressed forms are timed together by ``engine.runtime.latency.measure_latency``: 1 thread, on the model's
photo (``engine.zoo.model_photo``), ``WARMUP`` rounds then ``--runs`` rounds that invoke every form once each,
in rotating order, so the input and its forms share whatever the machine does meanwhile.  A cell is a form's
median over the input's median in the same rounds (below 1: faster), "default / builtin"; the input's own
median ms is the second column.  Each model's timing in one runtime runs in a child process, so a form that
crashes LiteRT is found (each form then probed alone) and recorded instead of ending the benchmark.

On a busy machine an invoke that loses the CPU takes a time slice longer, so a form's times can be bimodal and
its median jump between the two; the ``roundtrip`` control column (the input rewritten losslessly) shows how far.

A mode that fails to compress, or a form that fails to load or run in a runtime, shows as "FAIL: reason" (the
error without the model's path, cut short; the JSON keeps it whole).  Latency only: whether a runtime computes a form
right is the tests' and ``validate``'s business.

About 4 minutes on the 2-core machine (``--quick``: 3 models, 10 runs, under a minute).  Writes
benchmarks/results/latency.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, environment, markdown_table, results_argument, save  # puts the worktree's engine first
from models import real_models

from engine.recipes import STANDARD_MODES

# name -> engine.compress options, in table order: every standard mode, after "roundtrip" (no option: the engine's
# lossless rewrite), the control: it computes what the input does, so its distance from 1.00 is the noise.
MODES: dict[str, dict[str, Any]] = {"roundtrip": {}, **STANDARD_MODES}
QUICK_MODELS = ("hand_recrop", "iris_landmark", "palm_detection_lite")
RUNS, QUICK_RUNS = 30, 10
WARMUP = 3
REASON_CHARS = 60
# LiteRT's error reporter glues its messages together: "failed to delegate CONV_2D node #81Node number 155 ...".
# engine.runtime.latency's label of a model that failed to load or run ("model PATH (RUNTIME runtime)").
_LABEL = re.compile(r"^model \S+ \(\w+ runtime\):? (interpreter error: )?")
_GLUED = re.compile(r"(?<=\S)(?=Node number \d|failed to delegate )")


# -------------------------------------------------------------------------------------------- child


def child(spec_file: str) -> None:
    """Time one model's input and forms in one runtime; forms that raise an EngineError are dropped and named.

    Prints {"input": {...} | {"error": ...}, "forms": {mode: {...} | {"error": ...}}} as JSON.
    """
    from engine.errors import EngineError
    from engine.runtime.latency import measure_latency

    spec = json.loads(Path(spec_file).read_text())
    photo = np.load(spec["photo"])
    live: dict[str, str] = dict(spec["forms"])
    result: dict[str, Any] = {"forms": {}}
    while True:
        try:
            measured = measure_latency([spec["source"], *live.values()], photo, runtime=spec["runtime"],
                                       runs=spec["runs"], warmup=spec["warmup"])  # fmt: skip
        except EngineError as exc:
            culprit = next((mode for mode, path in live.items() if f"model {path} (" in str(exc)), None)
            if culprit is None:  # the input itself
                result["input"] = {"error": str(exc)}
                result["forms"].update({mode: {"error": "input failed"} for mode in live})
                break
            result["forms"][culprit] = {"error": str(exc)}
            del live[culprit]
            continue
        result["input"] = {"median_ms": measured[0].median_ms, "p90_ms": measured[0].p90_ms}
        for mode, m in zip(live, measured[1:], strict=True):
            result["forms"][mode] = {"median_ms": m.median_ms, "p90_ms": m.p90_ms}
        break
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------- parent


def compress_modes(name: str, source: Path, modes: list[str], tmp: Path) -> dict[str, dict[str, Any]]:
    """Each mode's output file, or why it could not be made (any exception: a benchmark records, never stops)."""
    import engine
    from engine.recipe import is_full_integer
    from engine.zoo import model_calibration

    rows: dict[str, dict[str, Any]] = {}
    for mode in modes:
        options = MODES[mode]
        out = tmp / f"{name}.{mode}.tflite"
        calibration = model_calibration(name) if is_full_integer(options.get("quantize")) else None
        started = time.perf_counter()
        try:
            engine.compress(source, output=out, calibration=calibration, **options)
        except Exception as exc:
            rows[mode] = {"options": options, "path": None, "error": f"compress: {type(exc).__name__}: {exc}"}
            continue
        rows[mode] = {"options": options, "path": str(out), "error": None, "file_bytes": out.stat().st_size,
                      "compress_s": time.perf_counter() - started}  # fmt: skip
    return rows


def run_child(source: Path, forms: dict[str, str], photo: Path, runtime: str, runs: int, warmup: int) -> dict[str, Any]:
    """One child process: its result, or {"crashed": why} when it died (a crash in LiteRT, or an exception)."""
    spec = photo.with_suffix(".json")
    spec.write_text(json.dumps({"source": str(source), "forms": forms, "photo": str(photo), "runtime": runtime,
                                "runs": runs, "warmup": warmup}))  # fmt: skip
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if done.returncode:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
        return {"crashed": f"timing process died (exit code {done.returncode})" + (f": {lines[-1]}" if lines else "")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_runtime(source: Path, forms: dict[str, str], photo: Path, runtime: str, runs: int) -> dict[str, Any]:
    """The input and its forms timed together in ``runtime``; a form that crashes the process is probed out."""
    result = run_child(source, forms, photo, runtime, runs, WARMUP)
    if "crashed" not in result:
        return result
    crashed = {}
    for mode, path in forms.items():  # one invoke each, alone, to find which forms take the process down
        probe = run_child(source, {mode: path}, photo, runtime, 1, 0)
        if "crashed" in probe:
            crashed[mode] = {"error": probe["crashed"]}
    survivors = {mode: path for mode, path in forms.items() if mode not in crashed}
    result = run_child(source, survivors, photo, runtime, runs, WARMUP)
    if "crashed" in result:  # the input alone, or only together: nothing to time
        error = {"error": result["crashed"]}
        return {"input": error, "forms": {mode: error for mode in forms}}
    result["forms"].update(crashed)
    return result


def measure_model(name: str, source: Path, modes: list[str], runs: int, tmp: Path) -> dict[str, Any]:
    """One model: every mode compressed, then timed against the input in each runtime, ratios added."""
    from engine.runtime.latency import RUNTIMES
    from engine.zoo import model_photo

    rows = compress_modes(name, source, modes, tmp)
    photo = tmp / f"{name}.photo.npy"
    np.save(photo, model_photo(name))
    forms = {mode: row["path"] for mode, row in rows.items() if row["path"]}
    inputs = {}
    for runtime in RUNTIMES:
        timed = time_runtime(source, forms, photo, runtime, runs)
        inputs[runtime] = timed["input"]
        for mode, measured in timed["forms"].items():
            if "median_ms" in measured and "median_ms" in timed["input"]:
                measured["ratio"] = measured["median_ms"] / timed["input"]["median_ms"]
            rows[mode][runtime] = measured
    for row in rows.values():
        path = row.pop("path")
        if path:
            Path(path).unlink()
    return {"file_bytes": source.stat().st_size, "input": inputs, "modes": rows}


# -------------------------------------------------------------------------------------------- table


def reason(error: str) -> str:
    """What a table cell shows of an error: no model path, the first of LiteRT's glued messages, short, and no
    table separators."""
    first, *more = _GLUED.split(_LABEL.sub("", error).replace("EngineError: ", ""))
    text = (first + (" ..." if more else "")).replace("|", "/").strip()
    return "FAIL: " + (text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "...")


def cell(row: dict[str, Any], runtimes: tuple[str, ...]) -> str:
    if row["error"]:
        return reason(row["error"])
    parts = []
    for runtime in runtimes:
        measured = row[runtime]
        parts.append(f"{measured['ratio']:.2f}" if "ratio" in measured else reason(measured["error"]))
    return " / ".join(parts)


def markdown(results: dict[str, Any]) -> str:
    from engine.runtime.latency import RUNTIMES

    modes = results["settings"]["modes"]
    table = []
    for name, model in results["models"].items():
        ms = " / ".join(
            f"{model['input'][rt]['median_ms']:.2f}" if "median_ms" in model["input"][rt] else "FAIL" for rt in RUNTIMES
        )
        table.append([name, ms, *(cell(model["modes"][m], RUNTIMES) for m in modes)])
    medians = []  # over the models where the form ran, with how many it failed on
    for mode in modes:
        parts = []
        for runtime in RUNTIMES:
            rows = [m["modes"][mode].get(runtime, {}) for m in results["models"].values()]
            ratios = [r["ratio"] for r in rows if "ratio" in r]
            failed = f" ({len(rows) - len(ratios)} FAIL)" if len(ratios) < len(rows) else ""
            parts.append((f"{statistics.median(ratios):.2f}" if ratios else "-") + failed)
        medians.append(" / ".join(parts))
    table.append(["**median**", "", *medians])
    return markdown_table(["model", "input ms (default / builtin)", *modes], table)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "latency")
    parser.add_argument("--models", help="comma-separated MediaPipe models (default: the 11 LiteRT runs)")
    parser.add_argument("--modes", help=f"comma-separated modes (default: all of {', '.join(MODES)})")
    parser.add_argument("--runs", type=int, help=f"timed rounds per model and runtime (default {RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"models {', '.join(QUICK_MODELS)}, {QUICK_RUNS} runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    names = args.models.split(",") if args.models else list(QUICK_MODELS) if args.quick else None
    modes = args.modes.split(",") if args.modes else list(MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(unknown)} (choose from {', '.join(MODES)})")
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    models = real_models(names)
    results: dict[str, Any] = {
        "environment": environment(),
        "settings": {"runs": runs, "warmup": WARMUP, "num_threads": 1, "modes": {m: MODES[m] for m in modes}},
        "models": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as name:
        for model_name, source in models.items():
            results["models"][model_name] = measure_model(model_name, source, modes, runs, Path(name))
            print(f"{model_name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    results["total_s"] = time.perf_counter() - started

    env = results["environment"]
    title = (f"# Latency: compressed / input median, default (XNNPACK) / builtin kernels, 1 thread, {runs} interleaved "
             f"rounds ({env['date']}, {env['cpus']} CPUs, ai-edge-litert {env['versions']['ai-edge-litert']}, "
             f"{results['total_s']:.0f} s)")  # fmt: skip
    save(results, title + "\n\n" + markdown(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
