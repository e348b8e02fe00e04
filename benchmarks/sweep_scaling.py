"""Sweep scaling: the standard preset on the MediaPipe models, with 1 and 2 local workers and on a local Ray instance.

Usage::

    python benchmarks/sweep_scaling.py [--json PATH] [--quick] [--runs N] [--repeats N] [--plot PNG]

Each model LiteRT runs (``--quick``: ``QUICK_MODELS``) gets a manifest entry: its 16 calibration crops
(``engine.zoo.model_calibration``) and its three photos as evaluation data (``engine.zoo.model_photo``).  The same
sweep (``python -m engine sweep models.json --preset standard``, ``--quick``: the configurations of
``QUICK_CONFIGS``) then runs three times, each in a fresh process and a fresh results folder, one after the other:
``--workers 1``, ``--workers 2``, and ``--ray --workers 2`` (a local Ray instance of 2 CPUs, started and stopped
by the sweep); all three again ``--repeats`` times in the same turns, each keeping its fastest repeat, the one
least disturbed by other processes.  Wall time is the whole command (interpreter start, Ray start-up, every run,
the reports); the speed-up is 1-worker wall time over 2-worker wall time, the Ray overhead is the Ray sweep's wall
time minus the 2-worker one.  The rows of the three sweeps are compared without their timings
(``engine.sweep.MEASURED_KEYS``): they must be identical.  Failed runs are counted: a failing configuration is
recorded and the sweep goes on.

Every run also times latency (on 1 thread, the sweep's default): in a parallel sweep those timed invokes share the
CPUs with the other worker's run, which is part of what the speed-up measures.

``--quick``: 3 models x 8 configurations, latency over 5 rounds, about 4 minutes on the 2-core machine with 2
repeats; the full preset on 11 models about an hour.  ``--plot PNG`` copies the first model's plot of the 2-worker
sweep there (docs/sweep-plot.png, which the README shows, comes from ``--quick --plot docs/sweep-plot.png``).
Writes benchmarks/results/sweep_scaling.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, markdown_table, results_argument, run_process, save  # the worktree's engine first
from models import real_models

from engine.sweep import MEASURED_KEYS, PRESETS
from engine.zoo import model_calibration, model_photo

QUICK_MODELS = ("hand_recrop", "iris_landmark", "palm_detection_lite")
QUICK_CONFIGS = ("float16", "weight-int8", "dynamic-int8", "weight-int4", "int8", "prune-0.5-sparse", "cluster-16",
                 "weight-int4-target-30dB")  # fmt: skip
SWEEPS = (
    ("1 worker", ["--workers", "1"]),
    ("2 workers", ["--workers", "2"]),
    ("Ray, 2 CPUs", ["--ray", "--workers", "2"]),
)
GOAL_SPEEDUP = 1.7
PHOTOS = 3


def write_inputs(folder: Path, names: list[str], configs: tuple[str, ...] | None) -> tuple[Path, list[str]]:
    """The manifest (models, calibration crops, photos) and the grid arguments of the sweep."""
    manifest = {}
    for name, path in real_models(names).items():
        np.save(folder / f"{name}.calibration.npy", model_calibration(name))
        np.save(folder / f"{name}.photos.npy", np.concatenate([model_photo(name, i) for i in range(PHOTOS)]))
        manifest[name] = {"path": str(path), "calibration": f"{name}.calibration.npy", "data": f"{name}.photos.npy"}
    (folder / "models.json").write_text(json.dumps(manifest, indent=2))
    if configs is None:
        return folder / "models.json", ["--preset", "standard"]
    (folder / "grid.json").write_text(json.dumps({name: PRESETS["standard"][name] for name in configs}, indent=2))
    return folder / "models.json", ["--configs", str(folder / "grid.json")]


def _rows(results: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in rows), key=lambda r: r["key"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "sweep_scaling")
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK_MODELS)} models, {len(QUICK_CONFIGS)} "
                        "configurations, 5 latency rounds")  # fmt: skip
    parser.add_argument("--runs", type=int, help="latency rounds per setting (default 20; --quick: 5)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="copy the first model's plot (2-worker sweep) here")
    parser.add_argument("--repeats", type=int, default=2, metavar="N", help="run the three sweeps N times in turn "
                        "and keep each one's fastest (default 2)")  # fmt: skip
    args = parser.parse_args()
    env = environment()
    started = time.perf_counter()
    names = list(QUICK_MODELS) if args.quick else list(real_models())
    runs = args.runs or (5 if args.quick else 20)
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        folder = Path(tmp)
        manifest, grid = write_inputs(folder, names, QUICK_CONFIGS if args.quick else None)
        measured: dict[str, dict[str, Any]] = {label: {"repeats": []} for label, _ in SWEEPS}
        rows: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for label, flags in SWEEPS:
                out = folder / f"{label.replace(' ', '-').replace(',', '')}-{repeat}"
                (logs := folder / f"{out.name}.logs").mkdir()
                command = [sys.executable, "-m", "engine", "sweep", str(manifest), *grid, "-o", str(out),
                           "--runs", str(runs), *flags]  # fmt: skip
                print(f"{label}, repeat {repeat + 1}: {' '.join(command[3:])}", file=sys.stderr)
                timed = run_process(command, out / "report.html", logs, require_output=True)
                if timed["error"]:
                    raise SystemExit(f"{label}: the sweep failed: {timed['error']}")
                measured[label]["repeats"].append(timed)
                rows.setdefault(label, _rows(out))
                if args.plot and label == "2 workers" and repeat == 0:
                    args.plot.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out / "plots" / f"{names[0]}.png", args.plot)
    first = SWEEPS[0][0]
    for label, entry in measured.items():
        entry.update(min(entry["repeats"], key=lambda timed: timed["wall_s"]))  # the least disturbed repeat
        entry["runs"] = len(rows[label])
        entry["failed_runs"] = sorted(f"{r['model']}/{r['config']}: {r['error']}" for r in rows[label]
                                      if r["status"] != "ok")  # fmt: skip
        differ = [f"{a['model']}/{a['config']}" for a, b in zip(rows[label], rows[first], strict=True) if a != b]
        entry["rows_differing_from_1_worker"] = differ
    results = {
        "environment": env,
        "models": names,
        "configurations": list(QUICK_CONFIGS if args.quick else PRESETS["standard"]),
        "latency_runs": runs,
        "sweeps": measured,
        "total_s": time.perf_counter() - started,
    }
    save(results, report(results), args.json)
    return 0


def report(results: dict[str, Any]) -> str:
    sweeps = results["sweeps"]
    one, two, ray = (sweeps[label] for label, _ in SWEEPS)
    table = markdown_table(
        ["sweep", "wall s", "speed-up vs 1 worker", "CPU s", "peak RSS MB", "runs", "failed runs",
         "rows = 1 worker's (timings aside)"],
        [
            [label, f"{s['wall_s']:.1f}", f"{one['wall_s'] / s['wall_s']:.2f}x",
             "n/a" if s is ray else f"{s['cpu_s']:.0f}", f"{s['peak_rss_bytes'] / 1e6:.0f}", s["runs"],
             len(s["failed_runs"]),
             "**no**: " + ", ".join(s["rows_differing_from_1_worker"]) if s["rows_differing_from_1_worker"] else "yes"]
            for label, s in sweeps.items()
        ],
    )  # fmt: skip
    speedup = one["wall_s"] / two["wall_s"]
    verdict = "met" if speedup >= GOAL_SPEEDUP else "**not met**"
    overhead = ray["wall_s"] - two["wall_s"]
    failures = sorted({f for s in sweeps.values() for f in s["failed_runs"]})
    lines = [
        f"### Standard preset{' (quick subset)' if len(results['configurations']) < len(PRESETS['standard']) else ''}"
        f": {len(results['models'])} models x {len(results['configurations'])} configurations",
        "",
        f"Models: {', '.join(results['models'])}. Configurations: {', '.join(results['configurations'])}. Latency "
        f"over {results['latency_runs']} rounds per setting.",
        "",
        table,
        "",
        f"- 2 workers: {speedup:.2f}x one worker (goal >= {GOAL_SPEEDUP}x: {verdict}).",
        f"- Ray overhead against 2 local workers: {overhead:+.1f} s ({ray['wall_s'] / two['wall_s'] - 1:+.0%} wall "
        "time), Ray's start-up and shut-down included.",
        f"- Failed runs (recorded, the sweep went on): {'; '.join(failures) if failures else 'none'}.",
        "- CPU s: user + system time of the sweep's processes; Ray's workers run under its own daemons, outside them.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
