"""Quantization benchmark: the engine side by side with ai-edge-quantizer (PyPI ``litert-quantizer``).

Usage::

    pip install -e ".[bench]"
    python benchmarks/quantize.py [--json PATH] [--part real|synthetic|defaults] [--quick] [--runs N]

Three parts, each printed as a markdown table (sizes in MB/KB = 10^6/10^3 bytes):

* ``real``: the 11 MediaPipe models LiteRT runs, each of our modes against the matching quantizer recipe
  (``PAIRS``).  Each tool runs in a fresh process, so a row's time is what a user waits for: interpreter
  start, imports, read, quantize, write.  Ours is the command line (``python -m engine compress IN -o OUT
  --quantize MODE``, default granularity/scale/min-elements); the quantizer is its Python API
  (``Quantizer(model, recipe).quantize(serialize_to_path=OUT)``, see ``quantizer_child``).  The quantizer also
  runs on a float32 copy of each model (same graph, float16/sparse weights decoded to dense float32 constants,
  ``builtin_code`` filled in): it leaves the original files as they are, and the copy shows what it does on
  weights it can read (``models.float32_copy`` says why).
* ``synthetic``: four chained 4096x4096 float32 FULLY_CONNECTED layers (268 MB, built as in
  ``roundtrip.py``, plus a signature def), weight-int8, dynamic-int8 and weight-int4 for both tools.  Goals for
  ours: at most 0.5x the quantizer's time, peak RSS at most 1.5x the file size.
* ``defaults``: ours only, ``--scale mse|minmax`` x ``--min-elements 0|1024|4096`` on the real models, for
  choosing the defaults (run in this process: the figures are sizes and SQNR, the times are indicative).

Every output is checked in LiteRT against the input model, in the default runtime (XNNPACK applied, as users load
models: the SQNR shown) and with the builtin kernels (a file either cannot run is an error; their worst SQNR is in
the JSON), ``engine.runtime.litert.run``: real models on 3 photos (``engine.zoo.photo_input`` in each model's
input range), the synthetic one on 3 seeded standard-normal inputs.  The tables show "worst / median": each
output's SQNR is its worst over the inputs, then the worst output and the median output (MediaPipe models have
small score outputs, e.g. a hand-presence score near 0 on photos without a hand, whose SQNR is far below the
landmarks').  Peak RSS is the child's
``ru_maxrss``, read by a small launcher process (``harness.LAUNCHER``): the whole process, the touched pages of the
memory-mapped input included.  Times are measured by the launcher around the child, and they and peak RSS
are medians over ``--runs`` fresh processes (default 1 for the real models, 3 for the synthetic
one; a run over ``LONG_RUN_S`` is not repeated), after one unmeasured warm-up run of each tool.

About 6 minutes on the 2-core CI machine, ``--quick`` about 2.  Writes benchmarks/results/quantize.json and .md
(``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import db, environment, markdown_table, results_argument, run_process, save  # worktree's engine first
from models import PHOTOS, float32_copy, photo_inputs, real_models

# The runtimes outputs are scored in (``engine.runtime.litert.run``'s xnnpack flag): the default one is the judge.
RUNTIMES = {"default": True, "builtin": False}
# (our mode, our extra options, quantizer recipe): the pairs of the real and synthetic parts.
PAIRS: list[tuple[str, dict[str, str], str]] = [
    ("float16", {}, "fp16_float_casting"),
    ("weight-int8", {}, "weight_only_wi8_afp32"),
    ("dynamic-int8", {}, "dynamic_wi8_afp32"),
    ("weight-int4", {}, "weight_only_wi4_afp32"),
    ("dynamic-int4", {}, "dynamic_wi4_afp32"),
    ("dynamic-int4", {"granularity": "block:32"}, "dynamic_wi4b32_afp32"),
]
QUICK_PAIRS = ("weight-int8", "dynamic-int8", "weight-int4")
SYNTHETIC_MODES = ("weight-int8", "dynamic-int8", "weight-int4")
QUICK_MODELS = ("face_detection_short_range", "iris_landmark", "palm_detection_lite")
DEFAULTS_MODES = ("weight-int8", "dynamic-int8", "weight-int4")
QUICK_DEFAULTS_MODES = ("weight-int8", "weight-int4")
SCALES = ("mse", "minmax")
MIN_ELEMENTS = (0, 1024, 4096)
LONG_RUN_S = 10.0
SYNTHETIC_NAME = "synthetic_fc_4x4096"
MB, KB = 1e6, 1e3


# ------------------------------------------------------------------------------------------ children


def quantizer_recipe(name: str) -> Any:
    """The quantizer's recipe for ``name``: a function of ``litert_quantizer.recipe``, or float16 casting."""
    from litert_quantizer import algorithm_manager, qtyping, recipe, recipe_manager

    if name == "fp16_float_casting":  # no named recipe: weight-only, 16-bit float, the FLOAT_CASTING algorithm
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
        return manager.get_quantization_recipe()
    return getattr(recipe, name)()


def quantizer_child(model: str, output: str, recipe: str) -> None:
    """What the quantizer's process runs: its documented Python API, writing the result to ``output``."""
    from litert_quantizer import quantizer

    quantizer.Quantizer(model, quantizer_recipe(recipe)).quantize(
        serialize_to_path=output, enable_progress_report=False
    )


def ours_command(model: Path, output: Path, mode: str, extra: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "engine", "compress", str(model), "-o", str(output), "--quantize", mode]
    for option, value in extra.items():
        command += [f"--{option.replace('_', '-')}", str(value)]
    return command


def quantizer_command(model: Path, output: Path, recipe: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child-quantizer", str(model), str(output), recipe]


def timed(command: list[str], output: Path, logs: Path, runs: int) -> dict[str, Any]:
    """Medians over up to ``runs`` fresh processes (one only when it fails or takes over ``LONG_RUN_S``)."""
    results = [run_process(command, output, logs)]
    while len(results) < runs and not results[0]["returncode"] and results[0]["wall_s"] < LONG_RUN_S:
        results.append(run_process(command, output, logs))
    return {
        "runs": len(results),
        "wall_s": statistics.median(r["wall_s"] for r in results),
        "wall_s_all": [r["wall_s"] for r in results],
        "peak_rss_bytes": int(statistics.median(r["peak_rss_bytes"] for r in results)),
        "returncode": results[-1]["returncode"],
        "error": results[-1]["error"],
    }


# -------------------------------------------------------------------------------------- evaluation


class Reference:
    """A model's outputs on fixed inputs, run once in each runtime, to score candidates against (worst SQNR)."""

    def __init__(self, path: Path, inputs: list[np.ndarray]):
        from engine.runtime.litert import run

        self.path = path
        self.bytes = path.stat().st_size
        self.inputs = inputs
        self.outputs = {
            runtime: [list(run(path, x, xnnpack=xnnpack).items()) for x in inputs]
            for runtime, xnnpack in RUNTIMES.items()
        }
        self.summary = file_summary(path)

    def score(self, candidate: Path) -> dict[str, Any]:
        """SQNR of each output (its worst over the inputs) in the default runtime, the worst and the median of
        those, the worst in the builtin kernels, or why none (a candidate either runtime cannot run has none).

        Outputs are matched by name when both models have the same names, else by position.
        """
        from engine.errors import EngineError
        from engine.quant.metrics import sqnr_db
        from engine.runtime.litert import run

        per_runtime = {}
        for runtime, xnnpack in RUNTIMES.items():
            outputs = self.outputs[runtime]
            per_output = {name: math.inf for name, _ in outputs[0]}
            for x, reference in zip(self.inputs, outputs, strict=True):
                try:
                    got = list(run(candidate, x, xnnpack=xnnpack).items())
                except EngineError as exc:
                    return {"worst_sqnr_db": None, "median_sqnr_db": None, "sqnr_error": f"LiteRT {runtime}: {exc}"}
                if len(got) != len(reference):
                    error = f"{len(got)} outputs instead of {len(reference)}"
                    return {"worst_sqnr_db": None, "median_sqnr_db": None, "sqnr_error": error}
                by_name = dict(got) if {n for n, _ in reference} == {n for n, _ in got} else None
                for (name, ref), (_, cand) in zip(reference, got, strict=True):
                    value = by_name[name] if by_name is not None else cand
                    sqnr = sqnr_db(ref.astype(np.float64), value.astype(np.float64))
                    per_output[name] = min(per_output[name], sqnr)
            per_runtime[runtime] = per_output
        default = per_runtime["default"]
        return {
            "worst_sqnr_db": min(default.values()),
            "median_sqnr_db": statistics.median(default.values()),
            "output_sqnr_db": default,
            "builtin_worst_sqnr_db": min(per_runtime["builtin"].values()),
            "sqnr_error": None,
        }


def file_summary(path: Path) -> dict[str, Any]:
    """Op histogram and constant bytes by dtype, read with the ``tflite`` package's unchecked readers.

    Used on every output because the engine's reader refuses some of the quantizer's (``metadata_buffer``
    indices left pointing at buffers it dropped), which LiteRT loads anyway.
    """
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    types = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    opcodes = [names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "?") for c in codes]
    ops: Counter[str] = Counter()
    constants: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        ops.update(opcodes[sg.Operators(i).OpcodeIndex()] for i in range(sg.OperatorsLength()))
        for i in range(sg.TensorsLength()):
            tensor = sg.Tensors(i)
            buffer = model.Buffers(tensor.Buffer())
            size = buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0)
            if size:
                constants[types.get(tensor.Type(), "?")] += size
    return {"ops": dict(ops), "constants_by_dtype": dict(constants)}


def describe_output(reference: Reference, output: Path) -> dict[str, Any]:
    """Size, whether anything changed, ops and constants by dtype, and the worst SQNR in LiteRT.

    "Unchanged" is an empty ``structural_diff`` (every schema field and buffer equal) when the engine reads the
    output, else the same op histogram and constant bytes by dtype.
    """
    from engine import read_model, structural_diff
    from engine.errors import EngineError

    summary = file_summary(output)
    row: dict[str, Any] = {
        "output_bytes": output.stat().st_size,
        "x_smaller": reference.bytes / output.stat().st_size,
        **summary,
        "engine_read_error": None,
    }
    try:
        row["unchanged"] = not structural_diff(read_model(reference.path), read_model(output), limit=1)
    except EngineError as exc:
        row["engine_read_error"] = str(exc)
        row["unchanged"] = summary == reference.summary
    row.update(reference.score(output))
    return row


def measure(command: list[str], output: Path, reference: Reference, tmp: Path, runs: int) -> dict[str, Any]:
    row = timed(command, output, tmp, runs)
    if not row["returncode"] and output.is_file():
        row.update(describe_output(reference, output))
        row["outcome"] = "unchanged" if row["unchanged"] else "changed"
        if row["engine_read_error"]:
            row["outcome"] += f" (engine reader refuses it: {row['engine_read_error']})"
    else:
        row["outcome"] = f"error: {row['error']}"
    output.unlink(missing_ok=True)
    return row


def model_facts(path: Path) -> dict[str, Any]:
    from engine import read_model
    from engine.summary import summarize

    model = read_model(path)
    return {
        "file_bytes": path.stat().st_size,
        "constants_by_dtype": {k: v["bytes"] for k, v in summarize(model)["constants_by_dtype"].items()},
        "opcodes_without_builtin_code": sum(c.builtin_code < c.deprecated_builtin_code for c in model.operator_codes),
        "operator_codes": len(model.operator_codes),
        "signature_defs": len(model.signature_defs or []),
    }


# ------------------------------------------------------------------------------------------- parts


def warm_up(model: Path, tmp: Path) -> None:
    """One unmeasured run of each tool, so the first measured one does not pay for cold file caches."""
    out = tmp / "warmup.tflite"
    run_process(ours_command(model, out, "weight-int8", {}), out, tmp)
    run_process(quantizer_command(model, out, "weight_only_wi8_afp32"), out, tmp)
    out.unlink(missing_ok=True)


def part_real(models: dict[str, Path], pairs: list[tuple[str, dict[str, str], str]], tmp: Path, runs: int) -> dict:
    warm_up(next(iter(models.values())), tmp)
    inputs, rows = [], []
    for name, path in models.items():
        reference = Reference(path, photo_inputs(name, path))
        copy = tmp / f"{name}.float32.tflite"
        facts = {"model": name, **model_facts(path), **float32_copy(path, copy)}
        facts["float32_copy_bytes"] = copy.stat().st_size
        facts["float32_copy_sqnr_db"] = reference.score(copy)["worst_sqnr_db"]
        inputs.append(facts)
        out = tmp / "out.tflite"
        for mode, extra, recipe in pairs:
            row: dict[str, Any] = {"model": name, "input_bytes": reference.bytes, "mode": mode, **extra}
            row["recipe"] = recipe
            row["ours"] = measure(ours_command(path, out, mode, extra), out, reference, tmp, runs)
            row["quantizer"] = measure(quantizer_command(path, out, recipe), out, reference, tmp, runs)
            row["quantizer_float32_copy"] = measure(quantizer_command(copy, out, recipe), out, reference, tmp, runs)
            rows.append(row)
            print(f"real: {name} {mode} {recipe}", file=sys.stderr)
        copy.unlink()
    return {"inputs": inputs, "rows": rows}


def build_synthetic(path: Path) -> None:
    """``roundtrip.py``'s four 4096x4096 FULLY_CONNECTED layers, with a signature def."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from roundtrip import build_large_model

    from engine import SignatureDef, TensorMap, write_model

    model = build_large_model()
    sg = model.main
    model.signature_defs = [
        SignatureDef(sg, [TensorMap("input", sg.inputs[0])], [TensorMap("output", sg.outputs[0])], "serving_default")
    ]
    write_model(model, path)


def part_synthetic(modes: list[str], tmp: Path, runs: int) -> dict:
    path = tmp / f"{SYNTHETIC_NAME}.tflite"
    build_synthetic(path)
    rng = np.random.default_rng(0)
    reference = Reference(path, [rng.standard_normal((1, 4096), dtype=np.float32) for _ in range(PHOTOS)])
    recipes = {mode: recipe for mode, extra, recipe in PAIRS if not extra}
    warm_up(path, tmp)
    out = tmp / "out.tflite"
    rows = []
    for mode in modes:
        row: dict[str, Any] = {"model": SYNTHETIC_NAME, "input_bytes": reference.bytes, "mode": mode}
        row["recipe"] = recipes[mode]
        row["ours"] = measure(ours_command(path, out, mode, {}), out, reference, tmp, runs)
        row["quantizer"] = measure(quantizer_command(path, out, recipes[mode]), out, reference, tmp, runs)
        ours, theirs = row["ours"], row["quantizer"]
        row["time_ours_to_quantizer"] = ours["wall_s"] / theirs["wall_s"]
        row["peak_rss_ours_to_file"] = ours["peak_rss_bytes"] / reference.bytes
        row["peak_rss_quantizer_to_file"] = theirs["peak_rss_bytes"] / reference.bytes
        row["goals_met"] = row["time_ours_to_quantizer"] <= 0.5 and row["peak_rss_ours_to_file"] <= 1.5
        rows.append(row)
        print(f"synthetic: {mode}", file=sys.stderr)
    path.unlink()
    return {"file_bytes": reference.bytes, "rows": rows}


def part_defaults(models: dict[str, Path], modes: list[str], tmp: Path) -> dict:
    from engine.api import compress

    out = tmp / "out.tflite"
    rows = []
    for name, path in models.items():
        reference = Reference(path, photo_inputs(name, path))
        for mode in modes:
            row: dict[str, Any] = {"model": name, "input_bytes": reference.bytes, "mode": mode, "configs": []}
            for scale in SCALES:
                for min_elements in MIN_ELEMENTS:
                    start = time.perf_counter()
                    _, report = compress(path, output=out, quantize=mode, scale=scale, min_elements=min_elements)
                    seconds = time.perf_counter() - start
                    score = reference.score(out)
                    row["configs"].append(
                        {
                            "scale": scale,
                            "min_elements": min_elements,
                            "output_bytes": out.stat().st_size,
                            "weights_compressed": len(report.compressed),
                            "weights_left": len(report.skipped),
                            **score,
                            "in_process_s": seconds,
                        }
                    )
                    out.unlink()
            rows.append(row)
            print(f"defaults: {name} {mode}", file=sys.stderr)
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- tables


def _size(r: dict[str, Any], unit: float = KB) -> str:
    if "output_bytes" not in r:
        return "-"
    return f"{r['output_bytes'] / unit:,.0f} ({r['x_smaller']:.2f}x)"


def _sqnr(r: dict[str, Any], median: bool = True) -> str:
    """Worst output SQNR (and the median output's), the error if LiteRT could not run it, "-" if no output."""
    if "sqnr_error" not in r:
        return "-"
    if r["sqnr_error"] is not None:
        return r["sqnr_error"][:60]
    return f"{db(r['worst_sqnr_db'])} / {db(r['median_sqnr_db'])}" if median else db(r["worst_sqnr_db"])


def _outcome(r: dict[str, Any], notes: list[str]) -> str:
    """The outcome cell; long error messages and reader refusals go to numbered notes below the table."""
    if r["outcome"].startswith("error: "):
        text = r["outcome"]
    elif r.get("engine_read_error"):
        text = f"{r['outcome'].split(' (')[0]}; the engine's reader refuses it: {r['engine_read_error']}"
    else:
        return r["outcome"]
    if text not in notes:
        notes.append(text)
    return f"{text.split(':')[0].split(';')[0]} [{notes.index(text) + 1}]"


def _notes(notes: list[str]) -> str:
    return "".join(f"\n\n[{i}] {text}" for i, text in enumerate(notes, 1))


def markdown_inputs(inputs: list[dict[str, Any]]) -> str:
    header = ["model", "file KB", "weights stored as", "opcodes with builtin_code unset", "signature defs",
              "float32 copy KB", "copy vs original SQNR dB"]  # fmt: skip
    rows = []
    for r in inputs:
        dtypes = ", ".join(f"{d} {b / KB:,.0f} KB" for d, b in r["constants_by_dtype"].items() if b > 1024)
        rows.append([r["model"], f"{r['file_bytes'] / KB:,.0f}", dtypes,
                     f"{r['opcodes_without_builtin_code']} of {r['operator_codes']}", r["signature_defs"],
                     f"{r['float32_copy_bytes'] / KB:,.0f}", db(r["float32_copy_sqnr_db"])])  # fmt: skip
    return markdown_table(header, rows)


def markdown_real(rows: list[dict[str, Any]]) -> str:
    header = ["model", "ours", "quantizer recipe", "ours s", "quantizer s", "ours peak RSS MB",
              "quantizer peak RSS MB", "ours KB (x smaller)", "quantizer KB (x smaller)",
              "ours SQNR dB (worst / median)", "quantizer SQNR dB", "quantizer did",
              "quantizer on float32 copy: KB (x smaller)", "float32 copy: SQNR dB"]  # fmt: skip
    table = []
    notes: list[str] = []
    for r in rows:
        ours, theirs, copy = r["ours"], r["quantizer"], r["quantizer_float32_copy"]
        mode = r["mode"] + (f" {r['granularity']}" if "granularity" in r else "")
        ours_size = _size(ours) if "output_bytes" in ours else _outcome(ours, notes)
        copy_size = _size(copy) if "output_bytes" in copy else _outcome(copy, notes)
        table.append([r["model"], mode, r["recipe"], f"{ours['wall_s']:.2f}", f"{theirs['wall_s']:.2f}",
                      f"{ours['peak_rss_bytes'] / MB:.0f}", f"{theirs['peak_rss_bytes'] / MB:.0f}",
                      ours_size, _size(theirs), _sqnr(ours), _sqnr(theirs), _outcome(theirs, notes),
                      copy_size, _sqnr(copy)])  # fmt: skip
    return markdown_table(header, table) + _notes(notes)


def markdown_synthetic(part: dict[str, Any]) -> str:
    header = ["mode / recipe", "tool", "runs", "wall s", "peak RSS MB", "peak RSS / file", "output MB (x smaller)",
              "worst SQNR dB", "ours / quantizer time", "goals met"]  # fmt: skip
    table = []
    notes: list[str] = []
    for r in part["rows"]:
        for tool, label in (("ours", r["mode"]), ("quantizer", r["recipe"])):
            m = r[tool]
            size = _size(m, MB) if "output_bytes" in m else _outcome(m, notes)
            ratio = f"{r['time_ours_to_quantizer']:.2f}" if tool == "ours" else ""
            goals = ("yes" if r["goals_met"] else "no") if tool == "ours" else ""
            table.append([label, tool, m["runs"], f"{m['wall_s']:.2f}", f"{m['peak_rss_bytes'] / MB:.0f}",
                          f"{m['peak_rss_bytes'] / part['file_bytes']:.2f}", size, _sqnr(m, median=False),
                          ratio, goals])  # fmt: skip
    return markdown_table(header, table) + _notes(notes)


def markdown_defaults(rows: list[dict[str, Any]]) -> str:
    configs = [(s, n) for s in SCALES for n in MIN_ELEMENTS]
    header = ["model", "mode", *(f"{s}, min {n}: SQNR worst / median, KB" for s, n in configs)]
    table = []
    by_mode: dict[str, list[list[dict[str, Any]]]] = {}
    for r in rows:
        by_mode.setdefault(r["mode"], []).append(r["configs"])
        cells = [f"{_sqnr(c)}, {c['output_bytes'] / KB:,.0f}" for c in r["configs"]]
        table.append([r["model"], r["mode"], *cells])
    for mode, groups in by_mode.items():
        cells = []
        for i in range(len(configs)):
            worst = [g[i]["worst_sqnr_db"] for g in groups if g[i]["sqnr_error"] is None]
            medians = [g[i]["median_sqnr_db"] for g in groups if g[i]["sqnr_error"] is None]
            total = sum(g[i]["output_bytes"] for g in groups)
            seconds = sum(g[i]["in_process_s"] for g in groups)
            sqnr = f"{db(statistics.median(worst))} / {db(statistics.median(medians))}" if worst else "n/a"
            cells.append(f"{sqnr}, {total / KB:,.0f} ({seconds:.1f} s)")
        table.append([f"**all {len(groups)} models**", mode, *cells])
    return markdown_table(header, table)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "quantize")
    parser.add_argument("--part", choices=("real", "synthetic", "defaults"), action="append",
                        help="run only this part (repeatable; default: all three)")  # fmt: skip
    quick = f"3 models ({', '.join(QUICK_MODELS)}), fewer modes, 1 run"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--runs", type=int, help="fresh processes per timing (default: 1 real, 3 synthetic)")
    parser.add_argument("--models", help="comma-separated MediaPipe models for the real and defaults parts")
    parser.add_argument("--child-quantizer", nargs=3, metavar=("MODEL", "OUT", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_quantizer:
        quantizer_child(*args.child_quantizer)
        return 0

    parts = args.part or ["real", "synthetic", "defaults"]
    names = args.models.split(",") if args.models else list(QUICK_MODELS) if args.quick else None
    pairs = [p for p in PAIRS if not args.quick or (p[0] in QUICK_PAIRS and not p[1])]
    results: dict[str, Any] = {"environment": environment(), "settings": {"quick": args.quick, "runs": args.runs}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantize-bench-") as name:
        tmp = Path(name)
        if "real" in parts:
            results["real"] = part_real(real_models(names), pairs, tmp, args.runs or 1)
        if "synthetic" in parts:
            modes = ["weight-int8"] if args.quick else list(SYNTHETIC_MODES)
            results["synthetic"] = part_synthetic(modes, tmp, args.runs or (1 if args.quick else 3))
        if "defaults" in parts:
            modes = list(QUICK_DEFAULTS_MODES if args.quick else DEFAULTS_MODES)
            results["defaults"] = part_defaults(real_models(names), modes, tmp)
    results["total_s"] = time.perf_counter() - started

    env = results["environment"]
    parts = [f"# Quantization benchmark ({env['date']}, {env['cpus']} CPUs, litert-quantizer "
             f"{env['versions']['litert-quantizer']}, {results['total_s']:.0f} s)"]  # fmt: skip
    if "real" in results:
        parts.append("## Real models: inputs\n\n" + markdown_inputs(results["real"]["inputs"]))
        parts.append("## Real models: ours vs the quantizer\n\n" + markdown_real(results["real"]["rows"]))
    if "synthetic" in results:
        file_mb = results["synthetic"]["file_bytes"] / MB
        parts.append(f"## {SYNTHETIC_NAME} ({file_mb:.1f} MB)\n\n" + markdown_synthetic(results["synthetic"]))
    if "defaults" in results:
        parts.append("## Defaults: ours, --scale / --min-elements\n\n" + markdown_defaults(results["defaults"]["rows"]))
    save(results, "\n\n".join(parts), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
