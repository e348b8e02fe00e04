"""Error compensation from the float model (``--rounding``) side by side with nearest rounding, on the real models.

Usage::

    python benchmarks/compensation.py [--json PATH] [--models a,b] [--samples N] [--seed S] [--draws N]

For each MediaPipe model LiteRT runs and the MobileNet-sized net of benchmarks/full_integer.py, ``--samples``
photo crops (``engine.zoo.calibration_photos``, default 64: 48 to fit on and 16 held out; at 32 the MobileNet's
one FULLY_CONNECTED layer, which sees one pooled vector a crop, was fitted on 24 vectors of 1024 and judged on 8,
and its weight-int4 gptq figure moved by 4.6 dB between 32 and 64) are split once as the budgeted search splits them
(engine.accuracy.candidates: seeded, 75% to fit on, 25% held out): the weights are fitted (and full int8
calibrated) on the first part, and every form is judged on the held-out part, pooled over its samples, worst
output, in the default runtime (engine.accuracy.candidates.Judge).  Rows: weight-int4 and full int8, each with
nearest, gptq and adaround rounding (weight-int4 gptq also sequential, --gradual in its default 4 stages; int8
also with --bias-correction, and with activation equalization, --equalize, alone and with gptq), and weight-int8
per tensor with and without cross-layer equalization (--equalize; refused with per-channel weights, docs/cli.md).
Each compress runs as ``python -m engine compress`` in a fresh process: whole-process wall time and peak RSS.

Against ai-edge-quantizer (PyPI ``litert-quantizer``) at equal size: both tools quantize the same float32 copy of
each model (``models.float32_copy``: the quantizer reads float32 weights only) and quantize the same weights, so
the files are the same size to a few hundred bytes, and are judged as above (the copy computes what the original
does):

* weight-int8, every weight (``weight_only_wi8_afp32``; ours ``--min-elements 0``): nearest and gptq;
* weight-int4, every weight but the depthwise filters, which the quantizer's int4 recipe leaves float32
  (``weight_only_wi4_afp32``; ours the recipe ``W4_AS_QUANTIZER``): nearest, gptq and gptq+gradual (the default
  4 stages, and 8);
* its GPTQ (the same recipes with ``AlgorithmName.GPTQ``, calibrated on the same fitting samples), which quantizes
  FULLY_CONNECTED weights only and fails on a model without one: ours with gptq on the FULLY_CONNECTED weights.

The quantizer runs as its documented Python API in a child of this script (``--child-quantizer``).

Full int8 against TensorFlow's converter's method (minmax activation ranges, per-channel weights, nearest rounding:
the engine's defaults, row "int8 nearest") with compensation (``--rounding gptq``, with percentile activation
ranges as well; activation equalization, ``--equalize``): on the MobileNet-sized net (rows above) and on the
two numpy-trained digits classifiers of the tests (``tests/digits.py``, ``tests/digits_attention.py``: calibrated
on 128 training digits, judged on the 540 test digits: output SQNR against float and accuracy, default runtime).

The MobileNet-sized net is measured on ``--draws`` crop draws (default 3: seeds ``--seed``, 1 by default, and the
next two), every row above each time, and its goals are judged on each draw and on their mean: its weights are
random, so its softmax output is nearly one-hot and its SQNR on 16 held-out crops mostly counts the crops whose top
class changed; its margins moved by up to 4 dB between draws (2026-12-04), where the MediaPipe models' did not
come near their goals' edges.  The main tables show the first draw.

Writes benchmarks/results/compensation.json and .md.
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
from models import float32_copy, judged_models

import engine
from engine.accuracy.candidates import Judge, load_data
from engine.format.reader import read_model
from engine.quant.metrics import sqnr_db
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
    "int8 percentile+gptq": ["--quantize", "int8", "--observer", "percentile", "--rounding", "gptq"],
    "int8 equalize": ["--quantize", "int8", "--equalize"],
    "int8 equalize+gptq": ["--quantize", "int8", "--equalize", "--rounding", "gptq"],
    "weight-int8 per-tensor": ["--quantize", "weight-int8", "--granularity", "tensor"],
    "weight-int8 per-tensor + equalize": ["--quantize", "weight-int8", "--granularity", "tensor", "--equalize"],
}
# Full int8 of the digits classifiers: the converter's method (the engine's defaults) and compensation.
DIGITS_FORMS: dict[str, dict[str, Any]] = {
    "int8 nearest": {},
    "int8 gptq": {"rounding": "gptq"},
    "int8 percentile+gptq": {"observer": "percentile", "rounding": "gptq"},
    "int8 adaround": {"rounding": "adaround"},
    "int8 equalize": {"equalize": True},
    "int8 equalize+gptq": {"equalize": True, "rounding": "gptq"},
}

# ai-edge-quantizer's int4 recipe leaves DEPTHWISE_CONV_2D filters float32: this recipe quantizes the same weights.
W4_AS_QUANTIZER = {"quantize": "weight-int4", "min_elements": 0, "ops": {"DEPTHWISE_CONV_2D": {"quantize": None}}}
# Its GPTQ quantizes FULLY_CONNECTED weights only.
FC_ONLY = {bits: {"min_elements": 0, "ops": {"FULLY_CONNECTED": {"quantize": f"weight-int{bits}"}}} for bits in (4, 8)}
# Comparison at equal size -> (the quantizer's recipe, our recipe, our roundings, the gain over the quantizer our
# best rounding is to reach: issue 14's goals).
EQUAL_SIZE: dict[str, tuple[str, dict[str, Any], tuple[str, ...], float]] = {
    "weight-int8": ("wi8", {"quantize": "weight-int8", "min_elements": 0}, ("nearest", "gptq"), 3.0),
    "weight-int4": ("wi4", W4_AS_QUANTIZER, ("nearest", "gptq", "gptq+gradual", "gptq+gradual 8"), 6.0),
    "FULLY_CONNECTED int4": ("wi4 GPTQ", FC_ONLY[4], ("gptq",), 3.0),
    "FULLY_CONNECTED int8": ("wi8 GPTQ", FC_ONLY[8], ("gptq",), 3.0),
}
# Models measured on several crop draws (``--draws``): the MobileNet-sized net's random weights make its softmax
# output SQNR on 16 held-out crops count top-1 flips, so its margins move by several dB from one draw to the next.
DRAWN = ("mobilenet_v1_224",)
ROUNDING_FLAGS = {
    "nearest": [],
    "gptq": ["--rounding", "gptq"],
    "gptq+gradual": ["--rounding", "gptq", "--gradual"],
    "gptq+gradual 8": ["--rounding", "gptq", "--gradual", "8"],
}
SIGNATURE = "serving_default"


def judged(command: list[str], out: Path, logs: Path, judge: Judge) -> dict[str, Any]:
    """Run one compress command in a fresh process: whole-process time and peak RSS, and, when it wrote ``out``,
    its held-out SQNR and size."""
    run = run_process(command, out, logs, require_output=True)
    row = {"wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"], "error": run["error"]}
    if run["error"] is None:
        measured = judge.measure(out.read_bytes())
        row.update(sqnr_db=measured.sqnr_db, bytes=out.stat().st_size, error=measured.error)
    return row


def measure(
    name: str, path: Path, value_range: tuple[float, float], samples: int, seed: int, tmp: Path, quantizer: bool
) -> dict[str, Any]:
    """Every form of one model: held-out SQNR, size, whole-process time and peak RSS; with ``quantizer``, the
    comparisons with ai-edge-quantizer too."""
    model = read_model(path)
    photos = calibration_photos(model.main.inputs[0].shape, samples, value_range=value_range, seed=seed)
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
        rows[form] = row = judged(command, out, logs, judge)
        print(f"{name} {form}: {db(row.get('sqnr_db'))} dB, {row['wall_s']:.1f} s", file=sys.stderr)
    return {
        "fit_samples": data.calibration_count,
        "held_out": len(data.held_out),
        "forms": rows,
        "against_quantizer": against_quantizer(name, path, data, judge, fit, tmp) if quantizer else None,
    }


def quantizer_child(model: str, data: str, output: str, recipe_name: str) -> int:
    """What the quantizer's process runs: its weight-only recipe ``wi8``/``wi4`` (with `` GPTQ``: that algorithm,
    calibrated on ``data``) through its documented API; the first error line on failure."""
    try:
        from litert_quantizer import algorithm_manager, quantizer, recipe

        names = algorithm_manager.AlgorithmName
        algorithm = names.GPTQ if recipe_name.endswith(" GPTQ") else names.MIN_MAX_UNIFORM_QUANT
        make = recipe.weight_only_wi8_afp32 if recipe_name.startswith("wi8") else recipe.weight_only_wi4_afp32
        qt = quantizer.Quantizer(model)
        qt.load_quantization_recipe(make(algorithm))
        result = None
        if qt.need_calibration:
            with np.load(data) as loaded:
                arrays = {name: loaded[name] for name in loaded.files}
            count = len(next(iter(arrays.values())))
            result = qt.calibrate({SIGNATURE: [{n: a[i : i + 1] for n, a in arrays.items()} for i in range(count)]})
        quantized = qt.quantize(result, enable_progress_report=False) if result else qt.quantize(
            enable_progress_report=False)  # fmt: skip
        quantized.export_model(output, overwrite=True)
    except Exception as exc:  # any failure is a result to record, with its first line
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


def against_quantizer(name: str, path: Path, data: Any, judge: Judge, npy: Path, tmp: Path) -> dict[str, Any]:
    """Each ``EQUAL_SIZE`` comparison on the float32 copy: the quantizer's form and ours (fitted on ``npy``, the
    fitting samples ``measure`` saved), held-out SQNR, bytes, whole-process time."""
    copy = tmp / f"{name}.float32.tflite"
    float32_copy(path, copy, SIGNATURE)
    fit = next(iter(data.calibration.values()))
    npz = tmp / f"{name}.fit.npz"
    np.savez(npz, **{read_model(copy).main.inputs[0].name: fit})
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)

    results: dict[str, Any] = {}
    for comparison, (quantizer_recipe, ours, roundings, _) in EQUAL_SIZE.items():
        slug = comparison.replace(" ", "_")
        out = tmp / f"{name}.quantizer.{slug}.tflite"
        child = [sys.executable, str(Path(__file__).resolve()), "--child-quantizer", str(copy), str(npz), str(out)]
        rows = {"quantizer": judged([*child, quantizer_recipe], out, logs, judge)}
        recipe_file = tmp / f"{slug}.json"
        recipe_file.write_text(json.dumps(ours))
        for rounding in roundings:
            out = tmp / f"{name}.ours.{slug}.{rounding}.tflite"
            command = [sys.executable, "-m", "engine", "compress", str(copy), "-o", str(out)]
            command += ["--recipe", str(recipe_file), *ROUNDING_FLAGS[rounding]]
            command += ["--calibration", str(npy)] if rounding != "nearest" else []
            rows[rounding] = judged(command, out, logs, judge)
        results[comparison] = rows
        print(f"{name} {comparison}: " + ", ".join(f"{k} {db(r.get('sqnr_db'))}" for k, r in rows.items()),
              file=sys.stderr)  # fmt: skip
    return results


def digits_int8(tmp: Path) -> dict[str, Any]:
    """Full int8 of the tests' digits classifiers, the converter's method against compensation: output SQNR against
    float and accuracy on the test digits, default runtime."""
    from tests.digits import accuracy, digits_data, digits_model_path, litert_outputs
    from tests.digits_attention import attention_model_path

    x_train, _, x_test, y_test = digits_data()
    results: dict[str, Any] = {}
    for net, source in (("digits conv", digits_model_path(tmp)), ("digits attention", attention_model_path(tmp))):
        reference = litert_outputs(source, x_test, "default")
        rows: dict[str, Any] = {"float": {"accuracy": accuracy(source, x_test, y_test, "default")}}
        for form, options in DIGITS_FORMS.items():
            out = tmp / f"{source.stem}.{form.replace(' ', '_')}.tflite"
            started = time.perf_counter()
            engine.compress(source, output=out, quantize="int8", calibration=x_train[:128], **options)
            rows[form] = {
                "seconds": time.perf_counter() - started,
                "sqnr_db": sqnr_db(reference, litert_outputs(out, x_test, "default")),
                "accuracy": accuracy(out, x_test, y_test, "default"),
            }
        results[net] = rows
    return results


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
        f"{results['samples']} photo crops a model (seed {results.get('seed', 1)}): 75% to fit on, 25% held out.",
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
    compared = {n: r["against_quantizer"] for n, r in results["models"].items() if r.get("against_quantizer")}
    if compared:
        parts.append(render_against_quantizer(compared))
    if results.get("digits"):
        parts.append(render_digits(results["digits"], results["models"].get("mobilenet_v1_224")))
    for name, draws in results.get("draws", {}).items():
        parts.append(render_draws(name, {str(results.get("seed", 1)): results["models"][name], **draws}))
    return "\n\n".join(parts)


def int8_gain(sqnr: dict[str, float | None]) -> tuple[float | None, str | None]:
    """The best full-int8 form's held-out SQNR (``sqnr`` by ``DIGITS_FORMS`` form) minus the converter's method's
    (int8 nearest), and which form."""
    base = sqnr["int8 nearest"]
    ours = [(v, f) for f, v in sqnr.items() if f != "int8 nearest" and v is not None]
    if base is None or not ours:
        return None, None
    value, form = max(ours)
    return value - base, form


def render_draws(name: str, draws: dict[str, dict[str, Any]]) -> str:
    """Each goal's gain on every crop draw of ``name`` (seed: its ``measure``), with the mean and the worst: a goal
    met on one draw only is not met."""
    goals = {comparison: spec[3] for comparison, spec in EQUAL_SIZE.items()}
    goals["full int8 vs converter"] = 3.0
    gains: dict[str, list[float | None]] = {goal: [] for goal in goals}
    rows = []
    for seed, measured in draws.items():
        compared = measured.get("against_quantizer") or {}
        row = [seed]
        for goal in goals:
            if goal in EQUAL_SIZE:
                rows_of = compared.get(goal)
                gain, best = best_gain(rows_of, EQUAL_SIZE[goal][2]) if rows_of else (None, None)
            else:
                gain, best = int8_gain({f: measured["forms"][f].get("sqnr_db") for f in DIGITS_FORMS})
            gains[goal].append(gain)
            row.append(f"{gain:+.1f} ({best})" if gain is not None else "-")
        rows.append(row)
    summary = []
    for goal, target in goals.items():
        known = [g for g in gains[goal] if g is not None]
        if not known:
            continue
        mean = sum(known) / len(known)
        hits = sum(g >= target for g in known)
        summary.append(f"- {goal}: +{target:g} dB met on {hits} of {len(known)} draws; mean {mean:+.1f}, worst "
                       f"{min(known):+.1f}; held on every draw: {'yes' if min(known) >= target else 'no'}")  # fmt: skip
    return "\n\n".join([
        f"### {name} on {len(draws)} crop draws (held-out SQNR gain, dB, over the quantizer or the converter's method)",
        markdown_table(["seed", *goals], rows),
        "\n".join(summary),
    ])  # fmt: skip


def best_gain(rows: dict[str, Any], roundings: tuple[str, ...]) -> tuple[float | None, str | None]:
    """Our best rounding's held-out SQNR minus the quantizer's, and which rounding; None when either failed."""
    theirs = rows["quantizer"].get("sqnr_db")
    ours = [(rows[r]["sqnr_db"], r) for r in roundings if rows[r].get("sqnr_db") is not None]
    if theirs is None or not ours:
        return None, None
    value, rounding = max(ours)
    return value - theirs, rounding


def render_against_quantizer(compared: dict[str, Any]) -> str:
    parts = ["### Against ai-edge-quantizer at equal size (held-out SQNR dB; size ours / quantizer)"]
    met: list[str] = []
    for comparison, (recipe, _, roundings, goal) in EQUAL_SIZE.items():
        header = ["model", f"quantizer {recipe}", *(f"ours {r}" for r in roundings), "size", "gain", f"+{goal:g} dB"]
        rows, hits, applies = [], 0, 0
        for name, results in compared.items():
            r = results[comparison]
            theirs = r["quantizer"]
            if theirs.get("error"):
                rows.append([name, f"fails: {theirs['error'][:70]}", *("-" for _ in roundings), "-", "-", "-"])
                continue
            gain, best = best_gain(r, roundings)
            ours_bytes = [r[x]["bytes"] for x in roundings if r[x].get("bytes")]
            size = f"{ours_bytes[0] / theirs['bytes']:.3f}x" if ours_bytes and theirs.get("bytes") else "-"
            applies += 1
            hits += gain is not None and gain >= goal
            rows.append([name, db(theirs.get("sqnr_db")), *(db(r[x].get("sqnr_db")) for x in roundings), size,
                         f"{gain:+.1f} ({best})" if gain is not None else "-",
                         "yes" if gain is not None and gain >= goal else "no"])  # fmt: skip
        parts += [f"#### {comparison}", markdown_table(header, rows)]
        met.append(f"{comparison}: +{goal:g} dB met on {hits} of {applies} models where the quantizer's recipe runs")

    def seconds(rows: dict[str, Any], roundings: tuple[str, ...]) -> str:
        return f"{rows['quantizer']['wall_s']:.1f} / {max(rows[x]['wall_s'] for x in roundings):.1f}"

    times = [[name, *(seconds(r[c], EQUAL_SIZE[c][2]) for c in EQUAL_SIZE)] for name, r in compared.items()]
    parts += ["Goals: " + "; ".join(met) + ".", "#### Whole-process time, quantizer / ours slowest rounding (s)",
              markdown_table(["model", *EQUAL_SIZE], times)]  # fmt: skip
    return "\n\n".join(parts)


def render_digits(digits: dict[str, Any], mobilenet: dict[str, Any] | None) -> str:
    header = ["model", "float accuracy", *(f"{form}: SQNR dB / accuracy" for form in DIGITS_FORMS)]
    rows = [
        [net, f"{r['float']['accuracy']:.1%}", *(f"{db(r[f]['sqnr_db'])} / {r[f]['accuracy']:.1%}"
                                                  for f in DIGITS_FORMS)]
        for net, r in digits.items()
    ]  # fmt: skip
    lines = []
    tables = {net: {f: r[f]["sqnr_db"] for f in DIGITS_FORMS} for net, r in digits.items()}
    if mobilenet:
        tables["mobilenet_v1_224"] = {f: mobilenet["forms"][f].get("sqnr_db") for f in DIGITS_FORMS}
    for net, sqnr in tables.items():
        gain, form = int8_gain(sqnr)
        if gain is not None:
            lines.append(f"- {net}: {form} {gain:+.1f} dB over the converter's method "
                         f"({'met' if gain >= 3 else 'not met'})")  # fmt: skip
    return "\n\n".join([
        "### Full int8 against the converter's method (minmax ranges, per-channel, nearest: row int8 nearest)",
        markdown_table(header, rows),
        "Goal +3 dB (digits on the 540 test digits, MobileNet on its held-out crops):\n" + "\n".join(lines),
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "compensation")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--samples", type=int, default=64, help="photo crops per model (default 64)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the photo crops (default 1)")
    parser.add_argument("--draws", type=int, default=3,
                        help=f"crop draws (seeds SEED, SEED+1, ...) for {', '.join(DRAWN)} (default 3)")  # fmt: skip
    parser.add_argument("--no-quantizer", action="store_true", help="skip the ai-edge-quantizer comparisons")
    parser.add_argument(
        "--child-quantizer", nargs=4, metavar=("MODEL", "DATA", "OUT", "RECIPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_quantizer:
        return quantizer_child(*args.child_quantizer)
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(), "samples": args.samples, "seed": args.seed, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, value_range) in judged_models(
            args.models.split(",") if args.models else None, Path(tmp)
        ).items():
            results["models"][name] = measure(
                name, path, value_range, args.samples, args.seed, Path(tmp), not args.no_quantizer
            )
            if name in DRAWN and args.draws > 1:
                results.setdefault("draws", {})[name] = {
                    str(seed): measure(name, path, value_range, args.samples, seed, Path(tmp), not args.no_quantizer)
                    for seed in range(args.seed + 1, args.seed + args.draws)
                }
        results["digits"] = digits_int8(Path(tmp))
    results["total_s"] = time.perf_counter() - started
    save(results, render(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
