"""Memory benchmark: peak RSS and whole-process time of every ``compress`` mode on large models.

Usage::

    python benchmarks/memory.py [--json PATH] [--runs N] [--quick]

* ``synthetic_fc_4x4096`` (268 MB, ``quantize.build_synthetic``: four chained 4096x4096 float32 FULLY_CONNECTED
  layers): a lossless rewrite (no options: reading and writing alone, the floor of every mode), then float16,
  weight-int8, weight-int4, dynamic-int8, dynamic-int4, ``--prune 0.5``, ``--cluster 16`` and int8 with 8
  calibration samples (seeded standard-normal inputs).
* ``fc_5000x5000`` (100 MB: one 5000x5000 float32 FULLY_CONNECTED, 25 M weights): ``--cluster 16``, the 1-D
  k-means on one large tensor.

Each command is what a user runs (``python -m engine compress IN -o OUT ...``), in a fresh process through the
harness launcher (``harness.run_process``): wall time from interpreter start to exit and the whole process's
peak RSS (the touched pages of the memory-mapped input included), medians over ``--runs`` processes (default 3)
after one unmeasured warm-up run (Numba's cache and the file cache warm, as in daily use).  Goals: every mode's
peak RSS at most the input file plus the output file plus ``ROOM_MB`` (the interpreter with numpy and the loaded
Numba kernels, about 150 MB, and working copies of one layer): a pass works tensor by tensor and never holds two
float copies of the model; ``--cluster 16`` on the 100 MB model in at most 2 s with peak RSS at most 3x the file.

About 3 minutes on the 2-core CI machine (``--quick``: one run each).  Writes benchmarks/results/memory.json and
.md (``--json``: elsewhere).
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
from harness import environment, markdown_table, results_argument, run_process, save  # worktree's engine first

MB = 1e6
CALIBRATION_SAMPLES = 8
# (label, options of `compress`) on the 268 MB model; "CALIBRATION" stands for the samples' file.
SYNTHETIC_RUNS: list[tuple[str, list[str]]] = [
    ("lossless rewrite", []),
    ("float16", ["--quantize", "float16"]),
    ("weight-int8", ["--quantize", "weight-int8"]),
    ("weight-int4", ["--quantize", "weight-int4"]),
    ("dynamic-int8", ["--quantize", "dynamic-int8"]),
    ("dynamic-int4", ["--quantize", "dynamic-int4"]),
    ("prune 0.5", ["--prune", "0.5"]),
    ("cluster 16", ["--cluster", "16"]),
    (f"int8, {CALIBRATION_SAMPLES} samples", ["--quantize", "int8", "--calibration", "CALIBRATION"]),
]
ROOM_MB = 300
CLUSTER_GOAL_S, CLUSTER_RSS_GOAL = 2.0, 3.0


def build_fc(path: Path, width: int) -> None:
    """One width x width float32 FULLY_CONNECTED layer with a bias, random normal weights."""
    from engine.format.ir import Model, Operator, Subgraph, Table, Tensor
    from engine.format.writer import write_model

    rng = np.random.default_rng(0)
    model = Model(description=f"memory benchmark: FULLY_CONNECTED {width}x{width} float32")
    x = Tensor(name="input", shape=(1, width))
    sg = Subgraph(name="main", inputs=[x])
    sg.add_tensor(x)
    weights, bias = sg.add_tensor(Tensor(name="fc/weights")), sg.add_tensor(Tensor(name="fc/bias"))
    weights.data = rng.standard_normal((width, width), dtype=np.float32)
    bias.data = rng.standard_normal(width, dtype=np.float32)
    y = sg.add_tensor(Tensor(name="fc/output", shape=(1, width)))
    sg.operators.append(
        Operator(model.opcode("FULLY_CONNECTED"), [x, weights, bias], [y], Table("FullyConnectedOptions", {}))
    )
    sg.outputs = [y]
    model.subgraphs.append(sg)
    write_model(model, path)


def measure(model: Path, options: list[str], tmp: Path, runs: int) -> dict[str, Any]:
    """Medians over ``runs`` fresh processes of ``compress model -o OUT options``, after one warm-up run."""
    out = tmp / "out.tflite"
    command = [sys.executable, "-m", "engine", "compress", str(model), "-o", str(out), *options]
    run_process(command, out, tmp, require_output=True)
    results = [run_process(command, out, tmp, require_output=True) for _ in range(runs)]
    file_bytes = model.stat().st_size
    row = {
        "options": options,
        "file_bytes": file_bytes,
        "wall_s": statistics.median(r["wall_s"] for r in results),
        "wall_s_all": [r["wall_s"] for r in results],
        "cpu_s": statistics.median(r["cpu_s"] for r in results),
        "peak_rss_bytes": int(statistics.median(r["peak_rss_bytes"] for r in results)),
        "output_bytes": out.stat().st_size if out.is_file() else None,
        "error": results[-1]["error"],
    }
    row["peak_rss_to_file"] = row["peak_rss_bytes"] / file_bytes
    return row


def run(tmp: Path, runs: int) -> dict[str, Any]:
    from quantize import SYNTHETIC_NAME, build_synthetic

    synthetic = tmp / f"{SYNTHETIC_NAME}.tflite"
    build_synthetic(synthetic)
    samples = tmp / "calibration.npy"
    np.save(samples, np.random.default_rng(0).standard_normal((CALIBRATION_SAMPLES, 1, 4096), dtype=np.float32))
    rows = []
    for label, options in SYNTHETIC_RUNS:
        options = [str(samples) if o == "CALIBRATION" else o for o in options]
        rows.append({"model": SYNTHETIC_NAME, "label": label, **measure(synthetic, options, tmp, runs)})
        print(f"{SYNTHETIC_NAME}: {label}", file=sys.stderr)
    synthetic.unlink()
    fc = tmp / "fc_5000x5000.tflite"
    build_fc(fc, 5000)
    rows.append({"model": "fc_5000x5000", "label": "cluster 16", **measure(fc, ["--cluster", "16"], tmp, runs)})
    return {"rows": rows}


def markdown(results: dict[str, Any]) -> str:
    header = ["model", "mode", "wall (s)", "CPU (s)", "peak RSS (MB)", "peak RSS / file", "output (MB)",
              "peak RSS - input - output (MB)", "goal"]  # fmt: skip
    table = []
    for r in results["rows"]:
        room = r["peak_rss_bytes"] - r["file_bytes"] - (r["output_bytes"] or 0)
        if r["model"] == "fc_5000x5000":
            met = r["wall_s"] <= CLUSTER_GOAL_S and r["peak_rss_to_file"] <= CLUSTER_RSS_GOAL
            goal = f"<= {CLUSTER_GOAL_S:g} s and <= {CLUSTER_RSS_GOAL:g}x the file: {'met' if met else 'missed'}"
        else:
            goal = f"<= {ROOM_MB} MB: {'met' if room <= ROOM_MB * MB else 'missed'}"
        output = "failed: " + r["error"] if r["error"] else f"{r['output_bytes'] / MB:.1f}"
        table.append([
            f"{r['model']} ({r['file_bytes'] / MB:.0f} MB)", r["label"], f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
            f"{r['peak_rss_bytes'] / MB:.0f}", f"{r['peak_rss_to_file']:.2f}x", output, f"{room / MB:.0f}", goal,
        ])  # fmt: skip
    return (
        "### Peak memory and whole-process time by mode\n\n"
        + markdown_table(header, table)
        + f"\n\nMedians of {results['runs']} fresh processes each; MB = 10^6 bytes."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "memory")
    parser.add_argument("--runs", type=int, default=3, help="measured processes per row (default 3)")
    parser.add_argument("--quick", action="store_true", help="one measured process per row")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(), "runs": 1 if args.quick else args.runs}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        results.update(run(Path(tmp), results["runs"]))
    results["total_s"] = time.perf_counter() - start
    save(results, markdown(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
