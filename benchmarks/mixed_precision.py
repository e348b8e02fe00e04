"""Mixed precision under a budget (engine.accuracy.search) side by side with the uniform modes and the common hand
recipe, on the real models.

Usage::

    python benchmarks/mixed_precision.py [--json PATH] [--models a,b] [--targets 25,30,35] [--families F,...]
                                         [--samples N] [--quick] [--plot PNG]

For each model (the MediaPipe models LiteRT runs, and ``mobilenet_v1_224`` from benchmarks/full_integer.py),
``--samples`` crops (``engine.zoo.calibration_photos``, default 32) are the data.  Every form is judged as the
search judges (engine.accuracy.candidates.Judge: worst output SQNR pooled over the held-out samples, default
runtime, 1 thread): the full-integer forms calibrate on the same 75% the search calibrates on and are judged on the
held-out 25%, and so are the searches with data-aware rounding (``weight-int4+gptq``); the other weight forms are
judged on every sample.  Rows:

* the uniform modes int8, int16x8, weight-int8, weight-int4, and int8 calibrated gradually (``gradual=4``, against
  one-shot int8);
* the hand recipe "first and last layer float": weight-int4 (and int8) with the first and the last weighted op left
  float;
* ``--target-sqnr`` searches for each target and family (weight-int4, weight-int4 with ``--rounding gptq``, int8):
  size, default-runtime latency, the re-measured SQNR, search time and candidates judged.

Search time against a plain int8 run (issue 13's goal, at most 10x), two ways, in one table: in process (the
search's own seconds against the ``int8`` row's warm ``engine.compress``), and whole process: the int8 searches run
as the command a user types (``python -m engine compress M -o OUT --quantize int8 --calibration crops.npy
--target-sqnr T``, start to exit) against the same command without ``--target-sqnr`` (median of 3).

Latency: every form of a model timed together with the float model (engine.runtime.latency.measure_latency: 1
thread, interleaved, median of 20), as a ratio to float.  Writes benchmarks/results/mixed_precision.json and .md;
``--plot PNG`` draws one size/SQNR panel per model with its Pareto front (docs/mixed-precision.png, which the README
shows, comes from the full run with ``--plot docs/mixed-precision.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (puts the worktree's engine first)
import numpy as np
from harness import db, environment, markdown_table, results_argument, run_process, save
from models import judged_models

import engine
from engine.accuracy.candidates import Judge, anchored, load_data
from engine.format.reader import read_model
from engine.graph.weights import find_weights
from engine.runtime.latency import median_latency_ms
from engine.zoo import calibration_photos

UNIFORM = {"int8": {"quantize": "int8"}, "int8 gradual (4 stages)": {"quantize": "int8", "gradual": 4},
           "int16x8": {"quantize": "int16x8"}, "weight-int8": {"quantize": "weight-int8"},
           "weight-int4": {"quantize": "weight-int4"}}  # fmt: skip


def _first_last(path: Path) -> tuple[list[str], list[str]]:
    """The hand recipe's exclusions: the first and the last weighted layer (graph order), as weight names (weight
    modes) and as their ops' output names (full integer, where an op is left float by its output)."""
    model = read_model(path)
    position = {id(op): i for i, op in enumerate(model.main.operators)}
    weighted = sorted(
        (w for w in find_weights(model) if w.subgraph_index == 0 and w.weighted_uses()),
        key=lambda w: min(position[id(op)] for op, _ in w.weighted_uses()),
    )
    ends = weighted[:1] + weighted[-1:] if len(weighted) > 1 else weighted
    ops = [min(w.weighted_uses(), key=lambda use: position[id(use[0])])[0] for w in ends]
    return [anchored(w.name) for w in ends], [anchored(op.outputs[0].name) for op in ops]


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
        fi = options["quantize"] in ("int8", "int16x8")
        out = tmp / f"{name}.{label.split()[0]}{'.gradual' if 'gradual' in options else ''}.tflite"
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
            weights, outputs = _first_last(path)
            if fi:  # the first and last weighted ops left float islands
                engine.compress(path, output=out, quantize="int8", exclude=outputs,
                                calibration=judges[1].data.calibration)  # fmt: skip
            else:
                engine.compress(path, output=out, quantize=family, exclude=weights)
            record(f"{family}, first+last float", out, fi, {})
        except engine.EngineError as exc:
            rows.append({"form": f"{family}, first+last float", "error": str(exc)})
    crops_file = tmp / f"{name}.crops.npy"
    np.save(crops_file, crops)
    plain_command = [sys.executable, "-m", "engine", "compress", str(path), "-o", str(tmp / f"{name}.plain.tflite"),
                     "--quantize", "int8", "--calibration", str(crops_file)]  # fmt: skip
    plain_runs = [_process(plain_command, tmp / f"{name}.plain.tflite", tmp) for _ in range(3)]
    if any(ran["error"] for ran in plain_runs):
        raise RuntimeError(f"{name}: the plain int8 command failed: {plain_runs[0]['error']}")
    plain_process = [ran["wall_s"] for ran in plain_runs]
    for family in args.families:
        mode, _, rounding = family.partition("+")  # weight-int4+gptq: the family with data-aware rounding
        fi = mode == "int8" or bool(rounding)  # fitted to the calibration part: judged on the held-out one
        options = {"quantize": mode, **({"rounding": rounding} if rounding else {})}
        for target in args.targets:
            out = tmp / f"{name}.{family}.{target:g}.tflite"
            if mode == "int8":  # the command a user runs, whole process, against the plain int8 command
                report_file = tmp / f"{name}.{target:g}.report.json"
                command = [*plain_command[:5], "-o", str(out), *plain_command[7:], "--target-sqnr", f"{target:g}",
                           "--report", str(report_file)]  # fmt: skip
                ran = _process(command, out, tmp)
                if ran["error"] is not None:
                    rows.append({"form": f"{family} -> {target:g} dB", "error": ran["error"]})
                    continue
                s = json.loads(report_file.read_text())["search"]
                figures = {
                    "seconds": s["seconds"],
                    "process_seconds": ran["wall_s"],
                    "runs": s["runs"],
                    "met": s["met"],
                    "chosen": s["chosen"],
                    "searched_sqnr_db": s["final"]["sqnr_db"],
                }
                record(f"{family} -> {target:g} dB", out, fi, figures)
                continue
            t = time.perf_counter()
            try:
                _, report = engine.compress(path, **options, calibration=crops, target_sqnr=target, output=out)
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
    return {"float_ms": times[0], "bytes": path.stat().st_size, "rows": rows,
            "plain_int8_process_s": float(np.median(plain_process))}  # fmt: skip


def markdown(results: dict[str, Any], targets: list[float]) -> str:
    """The goals, the search costs, then one table per model."""
    lines = ["### Goals (issue 13)", "", _goals_table(results), ""]
    lines += ["### Search time against a plain int8 run", "", _cost_table(results, targets), ""]
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
    return "\n".join(lines)


def _goals_table(results: dict[str, Any]) -> str:
    """Per model, issue 13's goals read off the rows: the smallest weight-mode form (uniform or searched) and the
    fastest full-integer form measuring at least 30 dB, and the slowest int8 search as the commands a user types
    against the plain int8 command."""

    def best(rows: list[dict[str, Any]], prefixes: tuple[str, ...], figure: str) -> dict[str, Any] | None:
        good = [r for r in rows if r["form"].startswith(prefixes) and figure in r and _at_least(r.get("sqnr_db"), 30)]
        return min(good, key=lambda r: r[figure], default=None)

    table, misses = [], {"size": 0, "latency": 0, "time": 0}
    for name, r in results["models"].items():
        small = best(r["rows"], ("weight-",), "ratio")
        fast = best(r["rows"], ("int8", "int16x8"), "latency_ratio")
        ratios = [row["process_seconds"] / r["plain_int8_process_s"]
                  for row in r["rows"] if row["form"].startswith("int8 ->") and "process_seconds" in row]  # fmt: skip
        slowest = max(ratios, default=None)
        marks = {"size": small is not None and small["ratio"] <= 0.6,
                 "latency": fast is not None and fast["latency_ratio"] <= 1.0,
                 "time": slowest is not None and slowest <= 10}  # fmt: skip
        for goal, met in marks.items():
            misses[goal] += not met
        cells = ["-" if small is None else f"{small['ratio']:.2f}x ({small['form']})",
                 "-" if fast is None else f"{fast['latency_ratio']:.3f}x ({fast['form']})",
                 "-" if slowest is None else f"{slowest:.1f}x"]  # fmt: skip
        verdicts = ["met" if met else "NOT met" for met in marks.values()]
        table.append([name, cells[0], verdicts[0], cells[1], verdicts[1], cells[2], verdicts[2]])
    header = ["model", "smallest weight form >= 30 dB", "<= 0.6x", "fastest full-integer form >= 30 dB", "<= 1.0x",
              "slowest int8 search, whole process", "<= 10x"]  # fmt: skip
    count = len(results["models"])
    summary = (f"Met on {count - misses['size']} of {count} models (size), {count - misses['latency']} of {count} "
               f"(latency), {count - misses['time']} of {count} (search time).")  # fmt: skip
    return markdown_table(header, table) + "\n\n" + summary


def _non_finite(value: Any) -> Any:
    """A results file read back: the non-finite floats it holds as strings ("inf", ...) as floats again."""
    if isinstance(value, dict):
        return {k: _non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_non_finite(v) for v in value]
    return float(value) if value in ("inf", "-inf", "nan") else value


def _at_least(value: Any, floor: float) -> bool:
    return isinstance(value, int | float) and value >= floor


def _cost_table(results: dict[str, Any], targets: list[float]) -> str:
    """Per model: the int8 searches' time over the plain int8 run's, in process (the engine's own seconds: the
    search's against a warm ``compress``) and whole process (the two commands a user runs, start to exit)."""
    table = []
    for name, r in results["models"].items():
        rows = {row["form"]: row for row in r["rows"]}
        plain = rows.get("int8", {}).get("seconds")
        cells = [name, f"{plain:.2f} / {r['plain_int8_process_s']:.2f}" if plain else "-"]
        for target in targets:
            row = rows.get(f"int8 -> {target:g} dB", {})
            if "process_seconds" not in row or not plain:
                cells.append("-")
                continue
            whole = row["process_seconds"] / r["plain_int8_process_s"]
            cells.append(
                f"{row['seconds']:.1f} / {row['process_seconds']:.1f} s: {row['seconds'] / plain:.1f}x / {whole:.1f}x"
            )
        table.append(cells)
    header = ["model", "plain int8 s (in process / whole process)", *(f"int8 -> {t:g} dB" for t in targets)]
    return markdown_table(header, table)


def _process(command: list[str], output: Path, tmp: Path) -> dict[str, Any]:
    """``command`` in a fresh process (harness.run_process); exit code 4 (a budget not met, the best model
    written) is a result, not an error."""
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    ran = run_process(command, output, logs, require_output=True)
    if ran["returncode"] == 4 and output.is_file():
        ran["error"] = None
    return ran


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per model: file size (x the float file) against worst-output SQNR, every form a point, the
    searches of each family joined in target order, the Pareto front (smaller and better) drawn in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    columns = 3
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, models.items(), strict=False):
        points = [(row["ratio"], float(row["sqnr_db"]), row["form"]) for row in r["rows"] if "ratio" in row]
        points = [(x, y if np.isfinite(y) else 60.0, label) for x, y, label in points]
        for x, y, label in points:
            searched = "->" in label
            ax.scatter(x, y, s=18, marker="o" if searched else "s", c="tab:blue" if searched else "tab:gray")
            if not searched:
                short = label.replace(" (4 stages)", "").replace(", first+last float", " 1st+last float")
                ax.annotate(short, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        front, best = [], -np.inf
        for x, y, _ in sorted(points, key=lambda p: (p[0], -p[1])):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front, strict=True), color="tab:red", lw=1, drawstyle="steps-post")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("size (x float file)", fontsize=8)
        ax.set_ylabel("worst output SQNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    figure.suptitle("Mixed precision under a budget (circles: searches at 25/30/35 dB) against uniform modes (squares)",
                    fontsize=10)  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results_argument(parser, "mixed_precision")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--targets", default="25,30,35", help="target SQNRs in dB (default 25,30,35)")
    parser.add_argument(
        "--families",
        default="weight-int4,weight-int4+gptq,int8",
        help="modes to search from, MODE or MODE+ROUNDING (default weight-int4,weight-int4+gptq,int8)",
    )
    parser.add_argument("--samples", type=int, default=32, help="crops per model (default 32)")
    parser.add_argument("--quick", action="store_true", help="2 models, target 30, weight-int4 only")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw every model's size/SQNR Pareto plot here")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: the tables (and --plot) again from the --json results")  # fmt: skip
    args = parser.parse_args()
    args.targets = [30.0] if args.quick else [float(t) for t in args.targets.split(",")]
    args.families = ["weight-int4"] if args.quick else args.families.split(",")
    names = ["face_detection_short_range", "palm_detection_lite"] if args.quick else None
    names = args.models.split(",") if args.models else names
    if args.render:
        results = _non_finite(json.loads(args.json.read_text()))
        args.json.with_suffix(".md").write_text(markdown(results, args.targets) + "\n")
        if args.plot:
            plot(results, args.plot)
        return
    results: dict[str, Any] = {"environment": environment(), "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for name, (path, value_range) in judged_models(names, tmp).items():
            print(f"{name} ...", file=sys.stderr)
            results["models"][name] = bench_model(name, path, value_range, args, tmp)
    save(results, markdown(results, args.targets), args.json)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
