"""Full-integer (int8) static quantization: the engine side by side with ai-edge-quantizer's ``static_wi8_ai8``.

Usage::

    pip install -e ".[bench]"
    python benchmarks/full_integer.py [--json PATH] [--quick] [--models a,b] [--runs N] [--invokes N]
        [--samples N] [--observer minmax|percentile|mse|entropy] [--bias-correction]

Both tools quantize the same float32 model with the same calibration samples (``--samples``, default 100:
``engine.zoo.calibration_photos``, seeded crops of real scikit-image pictures in the model's pixel range), saved
once as an .npz keyed by input name that each tool's process loads itself.  Models:

* ``mobilenet_v1_224``: a MobileNetV1-sized network built with ``engine.format.builder.GraphBuilder`` (3x3 stride-2
  stem, 13 depthwise-separable blocks with RELU6, AVERAGE_POOL_2D, FULLY_CONNECTED 1000, SOFTMAX; 4.2 M
  parameters), with a ``serving_default`` signature def.  Weights are He-initialised (seeded), then each layer's
  filters and float32 bias are rescaled from its pre-activation statistics on 8 other crops, as a folded batch
  norm would be (unit std, per-channel mean ~ N(1, 0.5); logits std 2).  Why not raw He init: its softmax is
  nearly uniform over 1000 classes, which int8's fixed 1/256 softmax grid rounds to 0 (about 1.5 dB for any
  tool), and every photo gives the same class; with zero-mean batch norm the net is chaotic (SQNR falls 1.3 dB
  per layer).  This one keeps ~20 dB to the last conv and gives different, confident classes per photo.
* the 11 MediaPipe models LiteRT runs (``engine.zoo``).  Neither tool gets the original file: they store
  weights as float16 behind DEQUANTIZE, have no signature defs (the quantizer calibrates by signature) and leave
  ``builtin_code`` at 0 for older ops (the quantizer reads only that field, so it would see ADD everywhere).
  Both get one float32 copy (``models.float32_copy``): constant decoders folded, ``builtin_code`` filled in, a
  ``serving_default`` signature over all inputs and outputs (named as the tensors).  The copy computes what the
  original does; its SQNR against the original is reported.

Measured per model and tool:

* time: wall time of a fresh process from interpreter start (imports included) to the written file, median of
  ``--runs`` runs interleaved engine / quantizer, after one unmeasured warm-up of each tool.  The engine runs as
  its command line (``python -m engine compress IN -o OUT --quantize int8 --calibration DATA.npz``), the
  quantizer as its documented Python API in a child of this script (``--child-quantizer``: ``Quantizer(model)``,
  ``load_quantization_recipe(static_wi8_ai8())``, ``calibrate({"serving_default": [{name: sample}, ...]})``
  with its defaults, ``quantize(result).export_model(OUT)``);
* CPU time (user + system, every thread) and peak RSS (``ru_maxrss``) of the child, read by a bare launcher
  process (a child of this process would inherit this process's high-water mark), medians over the runs;
* SQNR: each output of the int8 model against the float32 model in LiteRT, the worse of the default runtime and the
  builtin kernels (``engine.runtime.validate.validate(ref, cand, photo, intermediates=False, runtime="both")``; a
  model either runtime cannot run is an error) on ``--photos`` photos
  (``engine.zoo.photo_input`` indices 0.., in the model's range): per photo the worst output, then the minimum
  and mean of that over the photos; also the median output (each output's mean over the photos), as the worst
  is often a presence score near 0 on a photo without a hand or body, whose SQNR says little.  Only photo 0
  (astronaut) is a picture calibration never sees; photos 1-3 (coffee, chelsea, rocket) are full frames of
  pictures calibration takes random crops of;
* top-1 agreement (``mobilenet_v1_224``): on the photos, and on 64 further crops (another seed) of the
  calibration pictures;
* ops left float: operators other than QUANTIZE/DEQUANTIZE with a float32 output in the written model;
* latency: LiteRT, 1 thread, median of ``--invokes`` invokes after 5 warm-ups on photo 0, with the default
  interpreter (XNNPACK delegate) and with builtin kernels only (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), float32
  model and each int8 model; the ratio is int8 / float.  With XNNPACK the number of partitions it made is shown
  when above 1: the ops it does not take then run on builtin kernels in between.

Goals (measured here, not tuned here): engine time <= 0.4x the quantizer's at 100 samples (issue 17); higher SQNR
than the quantizer; int8 latency <= 0.5x float on ``mobilenet_v1_224``.

About 8 minutes on the 2-core CI machine (12 models), ``--quick`` (3 models, 1 run) about 1.  Writes
benchmarks/results/full_integer.json and .md (``--json``: elsewhere).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import db, environment, results_argument, run_process, save  # puts the worktree's engine first
from models import float32_copy, real_models

MOBILENET = "mobilenet_v1_224"
MOBILENET_RANGE = (-1.0, 1.0)
# (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks, after the 32-channel stride-2 stem.
MOBILENET_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
QUICK_MODELS = ("face_detection_short_range", "palm_detection_lite")  # a small and a mid-sized detector
SAMPLES = 100
PHOTOS = 4
TOP1_CROPS = 64
RUNS, QUICK_RUNS = 3, 1
INVOKES, QUICK_INVOKES = 50, 20
WARM_INVOKES = 5
SIGNATURE = "serving_default"
MB = 1e6
TOOLS = ("engine", "quantizer")


# ------------------------------------------------------------------------------------------ children


def quantizer_child(model: str, data: str, output: str) -> int:
    """What the quantizer's process runs: its documented static-quantization API, first error line on failure."""
    try:
        from litert_quantizer import quantizer, recipe

        with np.load(data) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        count = len(next(iter(arrays.values())))
        dataset = {SIGNATURE: [{name: a[i : i + 1] for name, a in arrays.items()} for i in range(count)]}
        qt = quantizer.Quantizer(model)
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        result = qt.calibrate(dataset)
        qt.quantize(result, enable_progress_report=False).export_model(output, overwrite=True)
    except Exception as exc:  # any failure is a result to record, with its first line
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


def engine_command(model: Path, data: Path, output: Path, observer: str | None, bias_correction: bool) -> list[str]:
    """The engine's command line: its defaults unless an observer or bias correction is asked for."""
    command = [sys.executable, "-m", "engine", "compress", str(model), "-o", str(output), "--quantize", "int8"]
    command += ["--calibration", str(data)] + (["--observer", observer] if observer else [])
    return command + (["--bias-correction"] if bias_correction else [])


def quantizer_command(model: Path, data: Path, output: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child-quantizer", str(model), str(data), str(output)]


def time_tools(commands: dict[str, list[str]], outputs: dict[str, Path], tmp: Path, runs: int) -> dict[str, Any]:
    """Each tool ``runs`` times, interleaved (so drift in the machine hits both alike); medians.  A tool that
    fails is not run again."""
    results: dict[str, list[dict[str, Any]]] = {tool: [] for tool in commands}
    for _ in range(runs):
        for tool, command in commands.items():
            if not results[tool] or results[tool][-1]["error"] is None:
                results[tool].append(run_process(command, outputs[tool], tmp, require_output=True))
    return {
        tool: {
            "runs": len(rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "wall_s_all": [r["wall_s"] for r in rs],
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_bytes": int(statistics.median(r["peak_rss_bytes"] for r in rs)),
            "error": rs[-1]["error"],
        }
        for tool, rs in results.items()
    }


# ------------------------------------------------------------------------------------------- models


Layer = tuple[str, np.ndarray, "np.ndarray | None", int]  # kind (stem, dw, pw, fc), weights, bias, stride


def _mobilenet_graph(layers: list[Layer]) -> tuple[Any, Any, Any]:
    """The network of ``layers`` as (builder, input, output).  A last layer without bias is a probe: no
    activation (no softmax after the FC), so its output is the pre-activation whose statistics set its scale."""
    from engine.format.builder import GraphBuilder

    b = GraphBuilder("mobilenet_v1")
    x = b.input("input", (1, 224, 224, 3))
    y = x
    for kind, w, bias, stride in layers:
        activation = None if bias is None else "RELU6"
        if bias is None:
            bias = np.zeros(w.shape[3] if kind == "dw" else w.shape[0], np.float32)
        if kind in ("stem", "pw"):
            y = b.conv2d(y, w, bias, stride=stride, activation=activation)
        elif kind == "dw":
            y = b.depthwise_conv2d(y, w, bias, stride=stride, activation=activation)
        else:
            y = b.fully_connected(b.reshape(b.average_pool2d(y, y.shape[1]), (1, y.shape[3])), w, bias)
            y = y if activation is None else b.softmax(y)
    return b, x, b.output(y, "output")


def build_mobilenet(path: Path) -> dict[str, Any]:
    """Write ``mobilenet_v1_224`` (module docstring) with its signature def; returns its facts."""
    from engine.format.ir import SignatureDef, TensorMap
    from engine.format.writer import model_to_bytes, write_model
    from engine.runtime.litert import run
    from engine.zoo import calibration_photos

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    stats = calibration_photos((1, 224, 224, 3), 8, value_range=MOBILENET_RANGE, seed=12345)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    plan: list[tuple[str, np.ndarray, int]] = [("stem", he((32, 3, 3, 3), 27), 2)]
    channels = 32
    for out, stride in MOBILENET_BLOCKS:
        plan += [("dw", he((1, 3, 3, channels), 9), stride), ("pw", he((out, 1, 1, channels), channels), 1)]
        channels = out
    plan.append(("fc", he((1000, channels), channels), 1))
    layers: list[Layer] = []
    for kind, w, stride in plan:  # each layer normalised on the outputs of the ones before, as batch norm would
        probe = bytes(model_to_bytes(_mobilenet_graph([*layers, (kind, w, None, stride)])[0].build()))
        pre = np.stack([run(probe, s[None])["output"] for s in stats]).astype(np.float64)
        axes = tuple(range(pre.ndim - 1))
        mean, std = pre.mean(axis=axes), pre.std(axis=axes) + 1e-6
        if kind == "fc":
            gain, shift = 2.0 / std, np.zeros_like(mean)
        else:
            gain, shift = 1.0 / std, 1.0 + 0.5 * rng.standard_normal(mean.shape)
        axis_shape = (1, 1, 1, -1) if kind == "dw" else (-1,) + (1,) * (w.ndim - 1)
        scaled = (w * gain.reshape(axis_shape)).astype(np.float32)
        layers.append((kind, scaled, (shift - mean * gain).astype(np.float32), stride))
    b, x, out = _mobilenet_graph(layers)
    model = b.build()
    model.signature_defs = [SignatureDef(model.main, [TensorMap("input", x)], [TensorMap("output", out)], SIGNATURE)]
    write_model(model, path)
    parameters = sum(w.size + (0 if bias is None else bias.size) for _, w, bias, _ in layers)
    return {"parameters": int(parameters), "ops": len(model.main.operators), "build_s": time.perf_counter() - start}


def input_specs(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    from engine.format.reader import read_model

    return [(t.name or "", tuple(t.shape)) for t in read_model(path).main.inputs]


def write_calibration(path: Path, model: Path, value_range: tuple[float, float], count: int) -> None:
    """The calibration samples both tools read: one .npz keyed by input name, [count, H, W, C] each."""
    from engine.zoo import calibration_photos

    arrays = {name: calibration_photos(shape, count, value_range=value_range) for name, shape in input_specs(model)}
    np.savez(path, **arrays)  # type: ignore[arg-type]


def eval_photos(model: Path, value_range: tuple[float, float], count: int) -> list[np.ndarray]:
    """Photos 0..count-1 of ``engine.zoo.photo_input`` for the model's one image input."""
    from engine.zoo import photo_input

    specs = input_specs(model)
    if len(specs) != 1:
        raise SystemExit(f"{model.name}: expected one image input, found {len(specs)}")
    return [photo_input(specs[0][1], "float32", i, value_range=value_range) for i in range(count)]


# ------------------------------------------------------------------------------------------ evaluation


def score(reference: Path, candidate: Path, photos: list[np.ndarray], classifier: bool = False) -> dict[str, Any]:
    """Per photo the worst output's SQNR (the worse of the default runtime and the builtin kernels), then the
    minimum and mean over photos, per-output values for the JSON, and for a ``classifier`` top-1 agreement (the
    landmark models' [1, N] outputs are coordinates, which have no top-1)."""
    from engine.errors import EngineError
    from engine.runtime.validate import validate

    worst: list[float] = []
    per_output: dict[str, list[float]] = {}
    top1: list[float] = []
    try:
        for photo in photos:
            report = validate(reference, candidate, photo, intermediates=False, runtime="both")
            if report.failures:
                return {"sqnr_error": "; ".join(report.failures)}
            worst.append(min(o.sqnr_db for o in report.outputs))
            for o in report.outputs:
                per_output.setdefault(o.name, []).append(o.sqnr_db)
                if o.top1_agreement is not None:
                    top1.append(o.top1_agreement)
    except EngineError as exc:
        return {"sqnr_error": str(exc)}
    return {
        "sqnr_error": None,
        "worst_sqnr_db": min(worst),
        "mean_worst_sqnr_db": statistics.fmean(worst),
        "worst_sqnr_db_per_photo": worst,
        "median_output_sqnr_db": statistics.median(statistics.fmean(v) for v in per_output.values()),
        "output_sqnr_db": per_output,
        "top1_photos": statistics.fmean(top1) if top1 and classifier else None,
    }


def top1_agreement(reference: Path, candidate: Path, inputs: np.ndarray) -> float:
    """Fraction of ``inputs`` whose argmax class the candidate keeps (single-output classifier, default runtime)."""
    from engine.runtime.litert import run

    agree = 0
    for x in inputs:
        (ref,) = run(reference, x[None], xnnpack=True).values()
        (cand,) = run(candidate, x[None], xnnpack=True).values()
        agree += int(np.argmax(ref) == np.argmax(cand))
    return agree / len(inputs)


def _interpreter(path: Path, xnnpack: bool) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def _feed(interp: Any, photo: np.ndarray) -> None:
    """Set the one input, quantized with its own parameters when the model's interface is integer."""
    from engine.quant.metrics import quantize_array

    (detail,) = interp.get_input_details()
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"])
    value = quantize_array(photo, scale, zero_point, dtype) if dtype.kind in "iu" and scale else photo.astype(dtype)
    interp.set_tensor(detail["index"], value)


def latency_ms(path: Path, photo: np.ndarray, xnnpack: bool, invokes: int) -> dict[str, Any]:
    """Median invoke time in ms on one thread (or the error's first line), and with XNNPACK how many partitions
    it made: more than one means ops it does not take run on builtin kernels in between."""
    try:
        interp = _interpreter(path, xnnpack)
        _feed(interp, photo)
        for _ in range(WARM_INVOKES):
            interp.invoke()
        times = []
        for _ in range(invokes):
            start = time.perf_counter()
            interp.invoke()
            times.append(time.perf_counter() - start)
    except (RuntimeError, ValueError) as exc:
        return {"ms": None, "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0]}
    result: dict[str, Any] = {"ms": 1e3 * statistics.median(times), "error": None}
    if xnnpack:
        result["partitions"] = sum(op["op_name"] == "DELEGATE" for op in interp._get_ops_details())
    return result


def latencies(path: Path, photo: np.ndarray, invokes: int) -> dict[str, dict[str, Any]]:
    return {"xnnpack": latency_ms(path, photo, True, invokes), "builtin": latency_ms(path, photo, False, invokes)}


def float_ops(path: Path) -> dict[str, Any]:
    """Ops that still compute in float (a float32 output; QUANTIZE/DEQUANTIZE excluded), and the interface."""
    interp = _interpreter(path, xnnpack=False)
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # the interpreter's only op listing
    compute = [op for op in ops if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    left = [op["op_name"] for op in compute if any(dtypes.get(i) == np.float32 for i in op["outputs"])]
    io = sorted({str(np.dtype(d["dtype"])) for d in interp.get_input_details() + interp.get_output_details()})
    return {
        "ops": len(ops),
        "compute_ops": len(compute),
        "float_ops": len(left),
        "float_op_names": sorted(set(left)),
        "io_dtypes": io,
    }


# ------------------------------------------------------------------------------------------ per model


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None


def bench_model(name: str, model: Path, value_range: tuple[float, float], tmp: Path, args: Any) -> dict[str, Any]:
    """Both tools on ``model`` with the same samples: times, memory, SQNR, ops left float, latency."""
    from engine.zoo import calibration_photos

    data = tmp / f"{name}.calibration.npz"
    write_calibration(data, model, value_range, args.samples)
    outputs = {tool: tmp / f"{name}.{tool}.tflite" for tool in TOOLS}
    commands = {
        "engine": engine_command(model, data, outputs["engine"], args.observer, args.bias_correction),
        "quantizer": quantizer_command(model, data, outputs["quantizer"]),
    }
    if args.warm_up:  # once per benchmark: cold file caches and first-use compilation are nobody's time
        for tool in TOOLS:
            run_process(commands[tool], outputs[tool], tmp, require_output=True)
        args.warm_up = False
    timing = time_tools(commands, outputs, tmp, args.runs)
    photos = eval_photos(model, value_range, args.photos)
    crops = None
    if name == MOBILENET:
        crops = calibration_photos(input_specs(model)[0][1], TOP1_CROPS, value_range=value_range, seed=7)
    row: dict[str, Any] = {"model": name, "float_bytes": model.stat().st_size, "samples": args.samples}
    row["float_latency"] = latencies(model, photos[0], args.invokes)
    for tool in TOOLS:
        r = timing[tool]
        out = outputs[tool]
        if r["error"] is None:
            r["output_bytes"] = out.stat().st_size
            try:
                r.update(float_ops(out))
            except (RuntimeError, ValueError) as exc:
                r["error"] = f"LiteRT cannot load it: {(str(exc).strip().splitlines() or [''])[0]}"
        if r["error"] is not None:
            r["outcome"] = f"error: {r['error'].removeprefix('error: ')}"
            row[tool] = r
            continue
        r["outcome"] = "unchanged (every op still float)" if r["float_ops"] == r["compute_ops"] else "int8"
        r.update(score(model, out, photos, classifier=name == MOBILENET))
        if crops is not None:
            r["top1_crops"] = top1_agreement(model, out, crops)
        r["latency"] = latencies(out, photos[0], args.invokes)
        r["latency_ratio"] = {k: _ratio(v["ms"], row["float_latency"][k]["ms"]) for k, v in r["latency"].items()}
        row[tool] = r
        out.unlink()
    data.unlink()
    engine, theirs = row["engine"], row["quantizer"]
    row["time_ratio"] = _ratio(engine["wall_s"], theirs["wall_s"]) if not (engine["error"] or theirs["error"]) else None
    row["goals"] = goals(row)
    print(f"{name}: done", file=sys.stderr)
    return row


TIME_GOAL = 0.4  # the engine's whole-process time at most this fraction of the quantizer's


def goals(row: dict[str, Any]) -> dict[str, bool | None]:
    """The goals of the module docstring for this model (None where they cannot be judged)."""
    engine, theirs = row["engine"], row["quantizer"]
    ratio = row["time_ratio"]
    result: dict[str, bool | None] = {"time": None if ratio is None else ratio <= TIME_GOAL}
    if "worst_sqnr_db" in engine and "worst_sqnr_db" in theirs:
        result["sqnr_higher_min"] = engine["worst_sqnr_db"] > theirs["worst_sqnr_db"]
        result["sqnr_higher_mean"] = engine["mean_worst_sqnr_db"] > theirs["mean_worst_sqnr_db"]
    if row["model"] == MOBILENET and "latency_ratio" in engine:
        for kind, ratio in engine["latency_ratio"].items():
            result[f"latency_le_half_{kind}"] = None if ratio is None else ratio <= 0.5
    return result


# ---------------------------------------------------------------------------------------------- tables


def _note(text: str, notes: list[str]) -> str:
    """A numbered reference to ``text`` in the notes printed under the table (long error messages)."""
    if text not in notes:
        notes.append(text)
    return f"[{notes.index(text) + 1}]"


def _ms(value: dict[str, Any], notes: list[str]) -> str:
    if value["ms"] is None:
        return "error " + _note("LiteRT: " + value["error"], notes)
    return f"{value['ms']:.2f}"


def _latency(r: dict[str, Any], floats: dict[str, Any], kind: str, notes: list[str]) -> str:
    """The cell "int8 / float (ratio)", with XNNPACK's partition count when it split the int8 model."""
    if "latency" not in r:
        return "-"
    ratio = r["latency_ratio"][kind]
    extra = [f"{ratio:.2f}x"] if ratio is not None else []
    if r["latency"][kind].get("partitions", 1) > 1:
        extra.append(f"{r['latency'][kind]['partitions']} partitions")
    cell = f"{_ms(r['latency'][kind], notes)} / {_ms(floats[kind], notes)}"
    return cell + (f" ({', '.join(extra)})" if extra else "")


def _top1(r: dict[str, Any]) -> str:
    if r.get("top1_photos") is None:
        return "-"
    crops = f" / {r['top1_crops']:.2f}" if "top1_crops" in r else ""
    return f"{r['top1_photos']:.2f}{crops}"


def markdown_inputs(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | float32 MB | ops | decoders folded | builtin_code filled | signature defs in the original "
        "| copy vs original: worst SQNR dB |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['float_bytes'] / MB:.2f} | {r['ops']} | {r.get('folded_decoders', '-')} "
            f"| {r.get('opcodes_builtin_code_filled', '-')} | {r.get('original_signature_defs', 1)} "
            f"| {db(r.get('copy_sqnr_db')) if 'copy_sqnr_db' in r else '(built)'} |"
        )
    return "\n".join(lines)


def markdown_results(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | tool | time s | engine / quantizer time | CPU s | peak RSS MB | worst-output SQNR dB min / mean "
        "| median-output SQNR dB | top-1 photos / crops "
        "| ops left float | XNNPACK ms int8 / float | builtin ms int8 / float | outcome |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    notes: list[str] = []
    for row in rows:
        for tool in TOOLS:
            r = row[tool]
            ratio = f"{row['time_ratio']:.3f}" if tool == "engine" and row["time_ratio"] is not None else ""
            if r.get("sqnr_error"):
                sqnr, median = r["sqnr_error"][:60], ""
            elif "worst_sqnr_db" in r:
                sqnr = f"{db(r['worst_sqnr_db'])} / {db(r['mean_worst_sqnr_db'])}"
                median = db(r["median_output_sqnr_db"])
            else:
                sqnr = median = "-"
            left = f"{r['float_ops']} of {r['compute_ops']}" if "float_ops" in r else "-"
            outcome = r["outcome"]
            if outcome.startswith("error: "):
                outcome = f"error {_note(outcome, notes)}"
            lines.append(
                f"| {row['model']} | {tool} | {r['wall_s']:.2f} | {ratio} | {r['cpu_s']:.2f} "
                f"| {r['peak_rss_bytes'] / MB:.0f} "
                f"| {sqnr} | {median} "
                f"| {_top1(r)} | {left} | {_latency(r, row['float_latency'], 'xnnpack', notes)} "
                f"| {_latency(r, row['float_latency'], 'builtin', notes)} | {outcome} |"
            )
    return "\n".join(lines) + "".join(f"\n\n[{i}] {text}" for i, text in enumerate(notes, 1))


def markdown_goals(rows: list[dict[str, Any]]) -> str:
    def mark(value: bool | None) -> str:
        return "n/a" if value is None else "yes" if value else "no"

    header = (
        f"| model | engine time <= {TIME_GOAL}x quantizer | SQNR higher (min / mean) | int8 <= 0.5x float (XNNPACK / "
        "builtin) |"
    )
    lines = [header, "|---|---|---|---|"]
    for row in rows:
        g = row["goals"]
        latency = "-"
        if "latency_le_half_xnnpack" in g:
            latency = f"{mark(g['latency_le_half_xnnpack'])} / {mark(g['latency_le_half_builtin'])}"
        sqnr = f"{mark(g.get('sqnr_higher_min'))} / {mark(g.get('sqnr_higher_mean'))}"
        lines.append(f"| {row['model']} | {mark(g['time'])} | {sqnr} | {latency} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def select_models(args: Any) -> list[str]:
    runnable = list(real_models())
    names = args.models.split(",") if args.models else [MOBILENET, *(QUICK_MODELS if args.quick else runnable)]
    unknown = sorted(set(names) - {MOBILENET, *runnable})
    if unknown:
        raise SystemExit(f"unknown or not runnable model(s): {', '.join(unknown)} (choose from {MOBILENET}, "
                         f"{', '.join(runnable)})")  # fmt: skip
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "full_integer")
    quick = f"{MOBILENET} and {', '.join(QUICK_MODELS)}; {QUICK_RUNS} run, {QUICK_INVOKES} invokes"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--models", help=f"comma-separated models ({MOBILENET} or MediaPipe names)")
    parser.add_argument("--runs", type=int, help=f"fresh processes per tool and model (default {RUNS})")
    parser.add_argument("--invokes", type=int, help=f"timed invokes per latency (default {INVOKES})")
    parser.add_argument("--samples", type=int, default=SAMPLES, help=f"calibration samples (default {SAMPLES})")
    parser.add_argument("--photos", type=int, default=PHOTOS, help=f"photos for SQNR (default {PHOTOS})")
    parser.add_argument("--observer", help="the engine's --observer (default: the engine's own)")
    parser.add_argument("--bias-correction", action="store_true", help="pass --bias-correction to the engine")
    parser.add_argument("--child-quantizer", nargs=3, metavar=("MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_quantizer:
        return quantizer_child(*args.child_quantizer)
    args.runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    args.invokes = args.invokes or (QUICK_INVOKES if args.quick else INVOKES)
    args.warm_up = True

    from engine.zoo import INPUT_RANGES, mediapipe_model

    names = select_models(args)
    results: dict[str, Any] = {"environment": environment(), "samples": args.samples, "runs": args.runs}
    results["engine_options"] = {"observer": args.observer, "bias_correction": args.bias_correction}
    inputs, rows = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="full-integer-bench-") as folder:
        tmp = Path(folder)
        for name in names:
            model = tmp / f"{name}.float32.tflite"
            if name == MOBILENET:
                value_range = MOBILENET_RANGE
                facts: dict[str, Any] = build_mobilenet(model)
            else:
                value_range = INPUT_RANGES[name]
                original = mediapipe_model(name)
                facts = float32_copy(original, model, signature=SIGNATURE)
                photos = eval_photos(original, value_range, args.photos)
                facts["copy_sqnr_db"] = score(original, model, photos).get("worst_sqnr_db")
            inputs.append({"model": name, "float_bytes": model.stat().st_size, **facts})
            rows.append(bench_model(name, model, value_range, tmp, args))
            model.unlink()
    results["total_s"] = time.perf_counter() - started
    results["inputs"], results["rows"] = inputs, rows
    save(results, markdown(results), args.json)
    return 0


def markdown(results: dict[str, Any]) -> str:
    """The tables of one run's results."""
    env, rows = results["environment"], results["rows"]
    versions = env["versions"]
    title = (f"# Full-integer int8: engine vs ai-edge-quantizer static_wi8_ai8 ({env['date']}, {env['cpus']} CPUs, "
             f"litert-quantizer {versions['litert-quantizer']}, ai-edge-litert {versions['ai-edge-litert']}, "
             f"{results['samples']} samples, {results['runs']} runs, {results['total_s']:.0f} s)")  # fmt: skip
    parts = [title, "## Float32 models both tools get", markdown_inputs(results["inputs"]), "## Results",
             markdown_results(rows), "## Goals", markdown_goals(rows)]  # fmt: skip
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
