"""Round-trip benchmark: how long the engine takes to read and write a model, and how much memory it needs.

Usage::

    python benchmarks/roundtrip.py [--json PATH] [--large-only | --real-only]

Measures the 14 real MediaPipe models and a large synthetic one (four chained 4096x4096 float32
FULLY_CONNECTED layers, about 268 MB), written once to a temporary directory and then read back like
any other file.  For each model:

* read, write and round-trip time: the median of 5 runs (3 for the large model), after a warm-up run, of
  ``read_model`` (memory-maps the file and decodes the flatbuffer) and ``write_model`` (builds the output
  flatbuffer in memory, then streams it to a temporary file renamed into place, as a new file).  The write
  ends in the page cache: the engine does not fsync.
* peak memory, each in a fresh interpreter so that nothing from earlier models is counted:
  the Python heap peak seen by ``tracemalloc`` (the output bytearray and Python objects, not the mapped
  input), and the growth of the peak resident set (VmHWM, reset just before reading) over the RSS before
  reading.  RSS counts the pages of the memory-mapped input once they are touched, although they are page
  cache the kernel can drop, so the share of the growth that is input-file pages is reported too.
* correctness: ``structural_diff`` of the original and the written model is empty, and writing the
  re-read model again gives the same bytes (the writer reaches a fixed point after one pass).

Sizes are in MB = 10^6 bytes.  Writes benchmarks/results/roundtrip.json and .md (``--json``: elsewhere); exits
with status 1 if any model fails verification.
"""

from __future__ import annotations

import argparse
import filecmp
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, markdown_table, results_argument, run_json, save  # puts the worktree's engine first

from engine import Model, Operator, Subgraph, Table, Tensor, read_model, structural_diff, write_model
from engine.zoo import mediapipe_models

REAL_RUNS = 5
LARGE_RUNS = 3
LARGE_NAME = "synthetic_fc_4x4096"
_WIDTH = 4096
_LAYERS = 4
MB = 1e6
# The goal for the large model: the round trip in under this many seconds, with a peak RSS growth under this
# multiple of the file size.
GOAL_S = 1.0
GOAL_RSS_TO_FILE = 1.5


def build_large_model() -> Model:
    """Four chained FULLY_CONNECTED layers with random float32 weights, so that no two buffers are alike."""
    rng = np.random.default_rng(0)
    model = Model(description="roundtrip benchmark: 4 x FULLY_CONNECTED 4096x4096 float32")
    fc = model.opcode("FULLY_CONNECTED")
    x = Tensor(name="input", shape=(1, _WIDTH))
    sg = Subgraph(name="main", inputs=[x])
    sg.add_tensor(x)
    for i in range(_LAYERS):
        weights = sg.add_tensor(Tensor(name=f"fc{i}/weights"))
        weights.data = rng.standard_normal((_WIDTH, _WIDTH), dtype=np.float32)
        bias = sg.add_tensor(Tensor(name=f"fc{i}/bias"))
        bias.data = rng.standard_normal(_WIDTH, dtype=np.float32)
        y = sg.add_tensor(Tensor(name=f"fc{i}/output", shape=(1, _WIDTH)))
        sg.operators.append(Operator(fc, [x, weights, bias], [y], Table("FullyConnectedOptions", {})))
        x = y
    sg.outputs = [x]
    model.subgraphs.append(sg)
    return model


def time_round_trip(path: Path, out: Path, runs: int) -> dict[str, float]:
    """Median read, write and total time in ms over ``runs`` runs after one unmeasured warm-up run.

    The warm-up keeps first-touch costs of the machine (fresh memory, cold caches) out of the numbers, and
    the destination is deleted before each run so its time is writing a new file, not the kernel freeing
    the previous run's output (replacing an existing 268 MB file costs another ~0.1 s).
    """
    reads, writes = [], []
    for run in range(runs + 1):
        out.unlink(missing_ok=True)
        gc.collect()
        start = time.perf_counter()
        model = read_model(path)
        middle = time.perf_counter()
        write_model(model, out)
        end = time.perf_counter()
        del model
        if run:
            reads.append(middle - start)
            writes.append(end - middle)
    totals = [r + w for r, w in zip(reads, writes, strict=True)]
    return {
        "read_ms": 1e3 * statistics.median(reads),
        "write_ms": 1e3 * statistics.median(writes),
        "roundtrip_ms": 1e3 * statistics.median(totals),
    }


def verify(path: Path, tmp: Path) -> dict[str, Any]:
    """Check the round trip loses nothing and that writing the written model again changes no byte."""
    first, second = tmp / "first.tflite", tmp / "second.tflite"
    original = read_model(path)
    write_model(original, first)
    written = read_model(first)
    diff = structural_diff(original, written)
    write_model(written, second)
    same_size = first.stat().st_size == second.stat().st_size
    same_bytes = same_size and filecmp.cmp(first, second, shallow=False)
    del original, written
    return {
        "written_bytes": first.stat().st_size,
        "structural_diff": diff,
        "second_write_same_size": same_size,
        "second_write_same_bytes": same_bytes,
        "ok": not diff and same_bytes,
    }


def _status_kb() -> dict[str, int]:
    """The memory lines of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...) in kB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child_rss(path: Path, out: Path) -> dict[str, Any]:
    """Peak RSS growth of one round trip, in this (fresh) process; run without tracemalloc's overhead."""
    gc.collect()
    reset = _reset_peak_rss()
    before = _status_kb()
    model = read_model(path)
    write_model(model, out)
    after = _status_kb()  # the model is still alive, so its touched input pages are still mapped
    peak_kb = after["VmHWM"] if reset else max(after["VmHWM"], before["VmHWM"])
    return {
        "peak_rss_growth_bytes": 1024 * (peak_kb - before["VmRSS"]),
        "input_pages_in_rss_bytes": 1024 * (after["RssFile"] - before["RssFile"]),
        "peak_reset": reset,
    }


def child_tracemalloc(path: Path, out: Path) -> dict[str, Any]:
    """Peak of Python-allocated memory during one round trip (mapped input pages are not allocations)."""
    gc.collect()
    tracemalloc.start()
    model = read_model(path)
    write_model(model, out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del model
    return {"tracemalloc_peak_bytes": peak}


_CHILDREN = {"rss": child_rss, "tracemalloc": child_tracemalloc}


def in_fresh_process(kind: str, path: Path, out: Path) -> dict[str, Any]:
    """Run one memory measurement in a new interpreter, so its peaks reflect only this model."""
    return run_json([sys.executable, str(Path(__file__).resolve()), "--child", kind, str(path), str(out)])


def measure(name: str, path: Path, tmp: Path, runs: int) -> dict[str, Any]:
    """Every number of one table row, and its verification."""
    out = tmp / f"{name}.out.tflite"
    row: dict[str, Any] = {"model": name, "file_bytes": path.stat().st_size, "runs": runs}
    row.update(verify(path, tmp))
    row.update(time_round_trip(path, out, runs))
    row.update(in_fresh_process("tracemalloc", path, out))
    row.update(in_fresh_process("rss", path, out))
    row["rss_growth_to_file"] = row["peak_rss_growth_bytes"] / row["file_bytes"]
    print(f"measured {name}", file=sys.stderr)
    return row


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The table, then the goal for the large model when it was measured."""
    header = ["model", "file MB", "read ms", "write ms", "round trip ms", "tracemalloc peak MB", "peak RSS growth MB",
              "of which input pages MB", "RSS growth / file", "verified"]  # fmt: skip
    table = [[r["model"], f"{r['file_bytes'] / MB:.2f}", f"{r['read_ms']:.1f}", f"{r['write_ms']:.1f}",
              f"{r['roundtrip_ms']:.1f}", f"{r['tracemalloc_peak_bytes'] / MB:.2f}",
              f"{r['peak_rss_growth_bytes'] / MB:.2f}", f"{r['input_pages_in_rss_bytes'] / MB:.2f}",
              f"{r['rss_growth_to_file']:.2f}", "yes" if r["ok"] else "NO"] for r in rows]  # fmt: skip
    text = (f"# Read/write round trip: median of {settings['real_runs']} runs ({settings['large_runs']} for "
            f"{LARGE_NAME}) after a warm-up; memory in a fresh process per model; MB = 10^6 bytes\n\n"
            + markdown_table(header, table))  # fmt: skip
    large = next((r for r in rows if r["model"] == LARGE_NAME), None)
    if large:
        seconds, ratio = large["roundtrip_ms"] / 1e3, large["rss_growth_to_file"]
        met = seconds < GOAL_S and ratio < GOAL_RSS_TO_FILE
        text += (f"\n\nGoal for {LARGE_NAME} ({large['file_bytes'] / MB:.1f} MB): round trip under {GOAL_S:g} s with "
                 f"peak RSS growth under {GOAL_RSS_TO_FILE:g}x the file: {seconds:.2f} s, {ratio:.2f}x, "
                 f"{'met' if met else 'not met'}.")  # fmt: skip
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "roundtrip")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--large-only", action="store_true", help="only the large synthetic model")
    which.add_argument("--real-only", action="store_true", help="only the 14 real MediaPipe models")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, path, out = args.child
        print(json.dumps(_CHILDREN[kind](Path(path), Path(out))))
        return 0

    settings = {"real_runs": REAL_RUNS, "large_runs": LARGE_RUNS, "real": not args.large_only,
                "large": not args.real_only}  # fmt: skip
    results: dict[str, Any] = {"environment": environment(), "settings": settings, "rows": []}
    started = time.perf_counter()
    rows = results["rows"]
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as name:
        tmp = Path(name)
        if settings["real"]:
            for model, path in sorted(mediapipe_models().items()):
                rows.append(measure(model, path, tmp, REAL_RUNS))
        if settings["large"]:
            large = tmp / f"{LARGE_NAME}.tflite"
            write_model(build_large_model(), large)
            gc.collect()
            rows.append(measure(LARGE_NAME, large, tmp, LARGE_RUNS))
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(rows, settings), args.json)
    failed = [r["model"] for r in rows if not r["ok"]]
    if failed:
        print(f"verification failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
