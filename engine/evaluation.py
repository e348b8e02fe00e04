"""``python -m engine evaluate`` / ``engine.evaluate``: one record of what a user weighs when choosing a model.

Size (file and gzip bytes, parameters, constant bytes by dtype), speed (invoke latency in the default runtime and
the builtin kernels, on 1 thread and N, median and 90th percentile, timed in interleaved rounds with the reference;
load time and peak memory in a fresh process) and quality against the reference on the data (per output SQNR, max
error, cosine and top-1 agreement in both runtimes; with labels, accuracy and its change against the reference).
The measurements are engine.runtime's; this module gathers them into one record, the one a sweep stores per run.

``Evaluation.to_dict`` keeps everything that depends on the machine's speed or load under ``measured``, so that
two evaluations of the same files on the same data agree on everything else.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import EngineError
from engine.format.reader import read_model
from engine.report import GZIP_LIMIT_BYTES, gzip_size, json_safe
from engine.runtime.litert import RUNTIME_TITLES, RUNTIMES
from engine.summary import summarize

if TYPE_CHECKING:  # the measuring modules are imported on use: the command line builds its parser from this module
    from engine.runtime.calibrate import CalibrationSource

RUNS = 20
WARMUP = 3
PathLike = str | os.PathLike[str]


@dataclass
class Evaluation:
    """What `evaluate` measured.  ``size``: this model's (and the reference's, under ``reference``); ``quality``:
    the comparison with the reference (`engine.runtime.validate.ValidationReport.to_dict`) and accuracies, None
    without reference and labels; ``latency``: one entry per (runtime, threads); ``footprint``: load time and peak
    memory; ``settings``: how the timings were taken."""

    size: dict[str, Any]
    quality: dict[str, Any] | None
    latency: list[dict[str, Any]]
    footprint: dict[str, Any] | None
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats as strings); what depends on the machine's speed is under ``measured``."""
        return json_safe(
            {
                "size": self.size,
                "quality": self.quality,
                "measured": {"latency": self.latency, "footprint": self.footprint, "settings": self.settings},
            }
        )

    def format_text(self) -> str:
        return format_record(self.to_dict())


def evaluate(
    model: PathLike,
    reference: PathLike | None = None,
    data: CalibrationSource | None = None,
    labels: PathLike | np.ndarray | None = None,
    *,
    runs: int = RUNS,
    warmup: int = WARMUP,
    threads: int | None = None,
    footprint: bool = True,
) -> Evaluation:
    """Measure ``model`` (a .tflite path), against ``reference`` when given.

    ``data`` is the calibration format (`engine.runtime.calibrate.load_samples`; keyed by the reference's input
    names when there is one): quality is judged on every sample (one generated sample without it) and latency
    timed on the first.  ``labels`` (one integer class per sample, an .npy or an array) adds the accuracy of the
    first output's argmax.  Latency: ``runs`` timed rounds after ``warmup``, on 1 thread and on ``threads`` (default:
    every CPU).  ``footprint=False`` skips the fresh process that measures load time and peak memory.
    """
    if labels is not None and data is None:
        raise EngineError("labels need data: one class per sample of the data")
    from engine.runtime.calibrate import input_specs, load_samples
    from engine.runtime.footprint import measure_footprint
    from engine.runtime.validate import validate

    size = {**_size(model), "reference": None if reference is None else _size(reference)}  # both files checked
    judge = model if reference is None else reference
    samples = None if data is None else load_samples(data, input_specs(read_model(judge)), "data")
    arrays = None if samples is None else samples.arrays
    first = None if arrays is None else {name: array[0] for name, array in arrays.items()}
    quality: dict[str, Any] | None = None
    if reference is not None:
        quality = validate(reference, model, arrays, intermediates=False, runtime="both").to_dict()
    if labels is not None:
        assert arrays is not None and samples is not None
        quality = {**(quality or {}), **_accuracy(model, reference, arrays, labels, samples.count)}
    counts = sorted({1, threads or os.cpu_count() or 1})
    latency = [_latency(model, reference, first, runtime, n, runs, warmup) for runtime in RUNTIMES for n in counts]
    found = measure_footprint(model) if footprint else None
    return Evaluation(
        size=size,
        quality=quality,
        latency=latency,
        footprint=None if found is None else asdict(found),
        settings={
            "runs": runs,
            "warmup": warmup,
            "threads": counts,
            "latency_input": "a generated sample (seeded)" if first is None else "the first data sample",
            "footprint": "fresh process, default runtime, 1 thread, one invoke",
        },
    )


def _size(path: PathLike) -> dict[str, Any]:
    summary = summarize(read_model(path))  # names a missing or broken file
    file_bytes = Path(path).stat().st_size
    return {
        "file_bytes": file_bytes,
        "gzip_bytes": gzip_size(path) if file_bytes <= GZIP_LIMIT_BYTES else None,
        "parameters": summary["parameters"],
        "bytes_by_dtype": {dtype: entry["bytes"] for dtype, entry in summary["constants_by_dtype"].items()},
    }


def _accuracy(
    model: PathLike, reference: PathLike | None, arrays: dict[str, np.ndarray], labels: Any, count: int
) -> dict[str, Any]:
    """Top-1 accuracy of the model (default runtime) and, with a reference, the reference's and the change in
    percentage points."""
    from engine.accuracy.candidates import read_labels
    from engine.runtime.predict import predicted_classes

    truth = read_labels(labels, count)
    accuracy = float(np.mean(predicted_classes(model, arrays) == truth))
    found: dict[str, Any] = {"accuracy": accuracy, "labelled_samples": count}
    if reference is not None:
        found["reference_accuracy"] = float(np.mean(predicted_classes(reference, arrays) == truth))
        found["accuracy_change_points"] = 100.0 * (accuracy - found["reference_accuracy"])
    return found


def _latency(
    model: PathLike,
    reference: PathLike | None,
    sample: dict[str, np.ndarray] | None,
    runtime: str,
    threads: int,
    runs: int,
    warmup: int,
) -> dict[str, Any]:
    """One (runtime, threads) setting: the model's median and p90 invoke time, the reference's from the same
    interleaved rounds, or why it could not be timed."""
    from engine.runtime.latency import measure_latency

    entry: dict[str, Any] = {"runtime": runtime, "threads": threads}
    models = [model] if reference is None else [reference, model]
    try:
        timed = measure_latency(models, sample, runtime=runtime, num_threads=threads, runs=runs, warmup=warmup)
    except EngineError as exc:
        return {**entry, "error": str(exc)}
    entry.update(median_ms=timed[-1].median_ms, p90_ms=timed[-1].p90_ms)
    if reference is not None:
        entry.update(reference_median_ms=timed[0].median_ms, reference_p90_ms=timed[0].p90_ms)
    return entry


# ------------------------------------------------------------------------------------------ reading a record


def number(value: Any) -> float | None:
    """A figure of a JSON record as a float ("inf", "-inf" and "nan" strings included), None when absent."""
    return None if value is None else float(value)


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The figures runs are compared by, from an ``Evaluation.to_dict()`` (or a sweep row holding one): size,
    quality, and latency in the default runtime on 1 thread, each also against the reference where there is
    one."""
    size, quality = record["size"], record.get("quality") or {}
    reference = size.get("reference") or {}
    measured = record.get("measured") or {}
    timed = next(
        (
            e
            for e in measured.get("latency", [])
            if e["runtime"] == "default" and e["threads"] == 1 and "error" not in e
        ),
        {},
    )
    footprint = measured.get("footprint") or {}
    return {
        "file_bytes": size["file_bytes"],
        "gzip_bytes": size["gzip_bytes"],
        "size_ratio": _ratio(size["file_bytes"], reference.get("file_bytes")),
        "worst_sqnr_db": number(quality.get("worst_sqnr_db")),
        "accuracy": quality.get("accuracy"),
        "accuracy_change_points": quality.get("accuracy_change_points"),
        "latency_ms": timed.get("median_ms"),
        "latency_ratio": _ratio(timed.get("median_ms"), timed.get("reference_median_ms")),
        "load_ms": footprint.get("load_ms"),
        "peak_memory_bytes": footprint.get("peak_memory_bytes"),
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def _figure(value: Any, spec: str = ".2f") -> str:
    value = number(value)
    if value is None:
        return "-"
    return format(value, spec) if math.isfinite(value) else str(value)


def format_record(record: dict[str, Any]) -> str:
    """An ``Evaluation.to_dict()`` as the text ``evaluate`` prints."""
    size, quality, measured = record["size"], record.get("quality"), record["measured"]
    reference = size.get("reference")
    lines = []
    for title, s in (("model", size), ("reference", reference)):
        if s is not None:
            gzip = "not computed" if s["gzip_bytes"] is None else f"{s['gzip_bytes']:,}"
            dtypes = ", ".join(f"{d} {b:,}" for d, b in s["bytes_by_dtype"].items()) or "none"
            lines.append(f"{title}: {s['file_bytes']:,} bytes (gzip {gzip}), {s['parameters']:,} parameters")
            lines.append(f"  constants by dtype (bytes): {dtypes}")
    if reference is not None:
        lines.append(f"size: {size['file_bytes'] / reference['file_bytes']:.1%} of the reference")
    if quality is not None:
        lines.append("")
        lines += _quality_lines(quality)
    settings = measured["settings"]
    lines += ["", f"latency (ms; median / p90 of {settings['runs']} interleaved runs after {settings['warmup']} "
              f"warm-up rounds, on {settings['latency_input']}):"]  # fmt: skip
    for e in measured["latency"]:
        where = f"  {RUNTIME_TITLES[e['runtime']]}, {e['threads']} thread{'s' if e['threads'] > 1 else ''}:"
        if "error" in e:
            lines.append(f"{where} not timed: {e['error']}")
            continue
        against = ""
        if "reference_median_ms" in e:
            against = (
                f" (reference {e['reference_median_ms']:.3g} / {e['reference_p90_ms']:.3g}, "
                f"{e['median_ms'] / e['reference_median_ms']:.2f}x)"
            )
        lines.append(f"{where} {e['median_ms']:.3g} / {e['p90_ms']:.3g}{against}")
    footprint = measured["footprint"]
    if footprint is not None:
        if footprint["error"] is not None:
            lines.append(f"load time and peak memory not measured: {footprint['error']}")
        else:
            lines.append(
                f"load: {footprint['load_ms']:.3g} ms; peak memory of loading and one invoke: "
                f"{footprint['peak_memory_bytes'] / 1e6:.1f} MB ({settings['footprint']})"
            )
    return "\n".join(lines)


def _quality_lines(quality: dict[str, Any]) -> list[str]:
    lines = []
    if "runtimes" in quality:
        source = next(iter(quality["inputs"].values()), {}).get("source", "given")
        lines.append(f"quality against the reference on {quality['samples']} {source} sample(s):")
        for runtime, result in quality["runtimes"].items():
            title = RUNTIME_TITLES[runtime]
            if result["skipped"] is not None:
                lines.append(f"  {title}: not compared, the reference fails here: {result['skipped']}")
            elif result["error"] is not None:
                lines.append(f"  {title}: FAILED: {result['error']}")
            for o in result["outputs"]:
                top1 = "" if o["top1_agreement"] is None else f", top-1 agreement {o['top1_agreement']:.3f}"
                lines.append(
                    f"  {title}: {o['name']}: SQNR {_figure(o['sqnr_db'])} dB (median {_figure(o['median_sqnr_db'])}),"
                    f" max |err| {_figure(o['max_abs_error'], '.4g')}, cosine {_figure(o['cosine_similarity'], '.6f')}"
                    f"{top1}"
                )
        lines.append(f"worst output SQNR: {_figure(quality['worst_sqnr_db'])} dB")
    if "accuracy" in quality:
        line = f"accuracy on {quality['labelled_samples']} labelled samples: {quality['accuracy']:.2%}"
        if "reference_accuracy" in quality:
            line += (
                f" (reference {quality['reference_accuracy']:.2%}, change "
                f"{quality['accuracy_change_points']:+.2f} points)"
            )
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------- command line


def add_parsers(commands: Any) -> None:
    """``python -m engine evaluate``."""
    p = commands.add_parser("evaluate", help="size, latency, load time, memory and quality of a model in LiteRT")
    p.add_argument("model")
    p.add_argument("--reference", metavar="FLOAT.tflite", help="the model to compare quality and latency with")
    p.add_argument(
        "--data",
        metavar="DATA",
        help="samples (.npz keyed by input name, or one .npy for a single-input model; the leading axis is the "
        "sample): quality is judged on all, latency timed on the first (default: one generated sample)",
    )
    p.add_argument("--labels", metavar="Y.npy", help="one integer class per --data sample: top-1 accuracy")
    p.add_argument("--runs", type=int, default=RUNS, metavar="N", help=f"timed rounds per setting (default {RUNS})")
    p.add_argument("--threads", type=int, metavar="N", help="the multi-thread setting (default: every CPU)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_run)


def _run(args: Any) -> int:
    if args.runs < 1 or (args.threads is not None and args.threads < 1):
        raise EngineError("--runs and --threads must be at least 1")
    result = evaluate(
        args.model, args.reference, args.data, args.labels, runs=args.runs, threads=args.threads
    ).to_dict()
    print(json.dumps(result, indent=2) if args.json else format_record(result))
    return 0
