"""Start-up benchmark: whole-process time of ``python -m engine inspect`` on every model, beside what any Python
program that reads a model with numpy pays.

Usage::

    python benchmarks/startup.py [--json PATH] [--runs N]

Each command runs as users run it, in a fresh process (through the harness launcher, which reads its peak RSS);
rows are the median of ``--runs`` interleaved rounds after a warm-up round (files in the page cache).  Models: the
14 MediaPipe models and the 268 MB synthetic model of benchmarks/roundtrip.py.  Baselines in the same rounds:
``python -c pass`` (the interpreter), ``python -c 'import numpy'`` (the floor for anything that reads tensors
with numpy), ``python -c 'import engine'``, and ``python -m engine --help`` (every command's module imported).
Goal (issue 17): ``inspect`` of any model in at most 0.3 s whole process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, markdown_table, results_argument, run_process, save
from roundtrip import LARGE_NAME, build_large_model

from engine import write_model
from engine.zoo import mediapipe_models

MB = 1e6
GOAL_S = 0.3


def commands(models: dict[str, Path]) -> dict[str, list[str]]:
    """Each measured command by label: the baselines, then inspect of every model."""
    python = sys.executable
    plan = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import numpy'": [python, "-c", "import numpy"],
        "python -c 'import engine'": [python, "-c", "import engine"],
        "python -m engine --help": [python, "-m", "engine", "--help"],
    }
    for name, path in models.items():
        plan[f"inspect {name}"] = [python, "-m", "engine", "inspect", str(path)]
    return plan


def measure(models: dict[str, Path], runs: int, tmp: Path) -> list[dict[str, Any]]:
    """Interleaved rounds of every command: one row per command (median wall and CPU, peak RSS)."""
    plan = commands(models)
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label in plan}
    for round_ in range(runs + 1):
        for label, command in plan.items():
            done = run_process(command, tmp / "none", tmp)
            if done["error"]:
                raise RuntimeError(f"{label} failed: {done['error']}")
            if round_:
                samples[label].append(done)
    sizes = {f"inspect {name}": path.stat().st_size for name, path in models.items()}
    return [
        {
            "command": label,
            "file_bytes": sizes.get(label),
            "wall_s": statistics.median(s["wall_s"] for s in runs_of),
            "cpu_s": statistics.median(s["cpu_s"] for s in runs_of),
            "peak_rss_bytes": max(s["peak_rss_bytes"] for s in runs_of),
            "goal": label in sizes,
        }
        for label, runs_of in samples.items()
    ]


def markdown(rows: list[dict[str, Any]], runs: int) -> str:
    header = ["command", "model MB", "wall s", "CPU s", "peak RSS MB", f"goal <= {GOAL_S:g} s"]
    table = [
        [
            r["command"],
            "" if r["file_bytes"] is None else f"{r['file_bytes'] / MB:.1f}",
            f"{r['wall_s']:.3f}",
            f"{r['cpu_s']:.3f}",
            f"{r['peak_rss_bytes'] / MB:.0f}",
            ("met" if r["wall_s"] <= GOAL_S else "NOT met") if r["goal"] else "",
        ]
        for r in rows
    ]
    inspected = [r for r in rows if r["goal"]]
    missed = [r["command"].removeprefix("inspect ") for r in inspected if r["wall_s"] > GOAL_S]
    slowest = max(r["wall_s"] for r in inspected)
    verdict = f"not met on {', '.join(missed)}" if missed else f"met on every model (slowest {slowest:.3f} s)"
    return (
        f"# Start-up: whole process, median of {runs} interleaved rounds after a warm-up; MB = 10^6 bytes\n\n"
        + markdown_table(header, table)
        + f"\n\nGoal: `python -m engine inspect` of any model in at most {GOAL_S:g} s: {verdict}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "startup")
    parser.add_argument("--runs", type=int, default=9, help="measured rounds (default 9)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(), "settings": vars(args) | {"json": str(args.json)}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as name:
        tmp = Path(name)
        models = dict(sorted(mediapipe_models().items()))  # all 14: inspect reads custom ops too
        models[LARGE_NAME] = tmp / f"{LARGE_NAME}.tflite"
        write_model(build_large_model(), models[LARGE_NAME])
        rows = measure(models, args.runs, tmp)
    results["rows"] = rows
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(rows, args.runs), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
