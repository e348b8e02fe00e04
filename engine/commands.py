"""The model commands of ``python -m engine``: compress, validate, demo (engine.cli runs them; its
docstring lists the exit codes)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.accuracy import cli as accuracy_cli
from engine.cli import EXIT_VALIDATION_FAILED
from engine.errors import EngineError
from engine.files import same_file
from engine.format.ir import Model
from engine.format.reader import read_model
from engine.format.writer import write_model
from engine.recipe import DEFAULT_GRADUAL_STAGES, DEFAULT_MIN_ELEMENTS, GRANULARITIES, IO_TYPES, WEIGHT_MODES
from engine.registry import ACTIVATION_SCHEMES, CODEBOOK_METHODS, OBSERVERS, ROUNDING_METHODS, SCALE_METHODS
from engine.report import Report
from engine.runtime.litert import RUNTIME_CHOICES
from engine.secure import cli as secure_cli
from engine.summary import format_summary, summarize

if TYPE_CHECKING:  # imported where used: compress without --validate does not load the validation code
    from engine.runtime.validate import ValidationReport

DEMO_MODEL = "face_detection_short_range"
DEMO_MODE = "weight-int8"
LATENCY_RUNS = 20
_DATA = (
    ".npz keyed by input name, or one array (.npy, or an .npz holding one) for a single-input model; the leading "
    "axis is the sample"
)


def describe_change(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two summaries: file size, operators, constants by dtype."""
    lines = []
    if before["file_bytes"] and after["file_bytes"] is not None:
        ratio = after["file_bytes"] / before["file_bytes"]
        lines.append(f"size: {before['file_bytes']:,} -> {after['file_bytes']:,} bytes ({ratio:.1%} of the input)")
    for key, label in (("operators", "operators"), ("constants_by_dtype", "constants")):
        changed = [
            f"{name}: {before[key].get(name, 0)} -> {after[key].get(name, 0)}"
            for name in sorted(set(before[key]) | set(after[key]))
            if before[key].get(name) != after[key].get(name)
        ]
        lines.append(f"{label}: " + ("; ".join(changed) if changed else "unchanged"))
    return lines


def _rewrite(source: Path, target: Path, **write_options: Any) -> tuple[Model, dict[str, Any], list[str]]:
    """Read ``source``, write it to ``target``; the model, the input's summary, and what changed."""
    model = read_model(source)
    before = summarize(model, source.stat().st_size)
    size = write_model(model, target, **write_options)
    return model, before, describe_change(before, summarize(read_model(target), size))


_COMPRESSION_FLAGS = (
    "quantize", "bits", "granularity", "scale", "rounding", "min_elements",
    "prune", "prune_pattern", "prune_scope", "prune_channels", "sparse_format",
    "cluster", "cluster_granularity", "cluster_init", "cluster_storage",
    "observer", "io", "bias_correction", "strict", "equalize", "gradual",
)  # fmt: skip


def _compress(args: argparse.Namespace) -> int:
    if same_file(args.input, args.output):
        raise EngineError(f"-o {args.output} is the input file; the input is never overwritten")
    if not args.validate:
        for flag, value in (("--data", args.data), ("--runtime", args.runtime), ("--min-sqnr", args.min_sqnr)):
            if value is not None:
                raise EngineError(f"{flag} does nothing without --validate")
    signing_key = secure_cli.signing_key(args)
    options = {name: getattr(args, name) for name in _COMPRESSION_FLAGS if getattr(args, name) is not None}
    if args.quantize == "none":
        options["quantize"] = None
    report = None
    budget = accuracy_cli.budget_options(args)
    if options or args.recipe or args.exclude or args.calibration is not None or budget:
        from engine.api import compress
        from engine.recipe import FLAGS, Recipe

        recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
        _, report = compress(
            args.input,
            recipe.with_options(args.exclude, origin=FLAGS, **options),
            output=args.output,
            calibration=args.calibration,
            share_identical_buffers=args.share_identical_buffers,
            **budget,
        )
        if args.gzip and report.gzip_bytes_after is None:
            report.add_gzip_sizes(args.input, args.output)
        print(f"wrote {args.output}")
        print(report.format_text())
    else:
        if args.report:
            raise EngineError(
                "--report does nothing in a lossless rewrite (no compression option given): no weight changes"
            )
        if args.gzip:
            raise EngineError("--gzip does nothing in a lossless rewrite (no compression option given)")
        _, _, change = _rewrite(
            Path(args.input), Path(args.output), share_identical_buffers=args.share_identical_buffers
        )
        print(f"wrote {args.output} (lossless rewrite: no compression options given)")
        print("\n".join(change))
    secure_cli.sign_output(args.output, signing_key)
    status = _validate_after(args, report) if args.validate else 0
    if report is not None and args.report:
        report.save(args.report)
        print(f"report: {args.report}")
    missed = accuracy_cli.budget_verdict(report, args.output)
    if missed and not status:
        print(f"error: {missed}", file=sys.stderr)
        return accuracy_cli.EXIT_BUDGET_NOT_MET
    return status


def _validate_after(args: argparse.Namespace, report: Report | None) -> int:
    """``compress --validate``: compare the written model with the input in LiteRT, time both, and add it all to
    the report.  The output exists by now, so a failure says so and exits EXIT_VALIDATION_FAILED."""
    from engine.runtime.validate import validate

    try:
        data = _validation_data(args)
        result = validate(
            args.input,
            args.output,
            data,
            intermediates=False,
            runtime=args.runtime or "both",
        )
    except EngineError as exc:
        if report is not None:
            report.validation = {"error": str(exc)}
        return _failed(f"wrote {args.output}; validation failed: {exc}")
    print("\nLiteRT, input vs compressed:")
    print(result.format_text())
    first = None if data is None else {name: samples[0] for name, samples in data.items()}
    latency = _latency(args.input, args.output, first, "builtin" if args.runtime == "builtin" else "default")
    print(_summary(args.input, args.output, result.worst_sqnr_db, latency))
    if report is not None:
        report.validation, report.latency = result.to_dict(), latency
    problem = _verdict(result, args.min_sqnr)
    return _failed(f"wrote {args.output}; validation failed: {problem}") if problem else 0


def _validation_data(args: argparse.Namespace) -> dict[str, np.ndarray] | None:
    """The samples ``--validate`` compares on: every ``--data`` sample, else the first calibration sample (real
    inputs say more than generated ones), else None (generated)."""
    source = args.data if args.data else args.calibration
    if source is None:
        return None
    from engine.runtime.calibrate import input_specs, load_samples

    loaded = load_samples(source, input_specs(read_model(args.input)), "--data" if args.data else "calibration data")
    count = loaded.count if args.data else 1
    return {spec.name: loaded.arrays[spec.name][:count] for spec in loaded.inputs}


def _latency(source: str | Path, target: str | Path, sample: Any, runtime: str) -> dict[str, Any]:
    """Median invoke time of input and output in ``runtime`` (the default one unless only the builtin kernels were
    asked for), timed in interleaved rounds on one thread; why not, when a model does not run there."""
    from engine.runtime.latency import median_latency_ms

    facts: dict[str, Any] = {"runtime": runtime, "num_threads": 1, "runs": LATENCY_RUNS}
    try:
        facts["input_ms"], facts["output_ms"] = median_latency_ms(
            [source, target], sample, runtime=runtime, num_threads=1, runs=LATENCY_RUNS
        )
    except EngineError as exc:
        facts["error"] = str(exc)
    return facts


def _summary(source: str | Path, target: str | Path, worst_sqnr_db: float, latency: dict[str, Any]) -> str:
    """One line with what the user weighs: size, worst output SQNR, latency, input against output."""
    before, after = Path(source).stat().st_size, Path(target).stat().st_size
    if "error" in latency:
        timing = f"latency not measured: {latency['error']}"
    else:
        timing = (
            f"latency {latency['input_ms']:.3g} -> {latency['output_ms']:.3g} ms ({latency['runtime']} runtime, "
            f"1 thread, median of {latency['runs']} interleaved runs)"
        )
    return (
        f"input -> output: {before:,} -> {after:,} bytes ({after / before:.1%}), worst output SQNR "
        f"{worst_sqnr_db:.2f} dB, {timing}"
    )


def _verdict(report: ValidationReport, min_sqnr: float | None) -> str | None:
    """Why a validation report fails, or None: the candidate fails in a runtime that decides, or an output is
    below ``min_sqnr`` (NaN too: an unknown SQNR is not a passing one)."""
    if report.failures:
        return "; ".join(f"the candidate fails in the {failure}" for failure in report.failures)
    if min_sqnr is not None and not report.worst_sqnr_db >= min_sqnr:
        return f"worst output SQNR {report.worst_sqnr_db:.2f} dB is below {min_sqnr} dB"
    return None


def _failed(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_VALIDATION_FAILED


def _validate(args: argparse.Namespace) -> int:
    from engine.runtime.validate import validate

    report = validate(
        args.reference,
        args.candidate,
        args.data,
        seed=args.seed,
        intermediates=not args.no_intermediates,
        runtime=args.runtime,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    problem = _verdict(report, args.min_sqnr)
    return _failed(problem) if problem else 0


def _demo(args: argparse.Namespace) -> int:
    from engine.api import compress
    from engine.recipe import is_full_integer
    from engine.runtime.validate import validate
    from engine.zoo import mediapipe_model, model_calibration, model_photo

    source = mediapipe_model(args.model)
    out_dir = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="litert-engine-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{args.model}.{args.quantize}.tflite"
    print(f"model: {args.model} (mediapipe 0.10.14) from {source}")
    print(format_summary(summarize(read_model(source), source.stat().st_size)))
    calibration = model_calibration(args.model) if is_full_integer(args.quantize) else None
    _, report = compress(source, output=target, quantize=args.quantize, calibration=calibration)
    print(f"\ncompressed with --quantize {args.quantize}: wrote {target}")
    print(report.format_text())
    photo = model_photo(args.model)
    result = validate(source, target, photo, intermediates=False)
    print("\nLiteRT on a real photo, original vs compressed:")
    print(result.format_text())
    print(_summary(source, target, result.worst_sqnr_db, _latency(source, target, photo, "default")))
    return 0


def _validation_flags(p: argparse.ArgumentParser, runtime_default: str | None) -> None:
    """The flags ``validate`` and ``compress --validate`` share."""
    p.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=runtime_default,
        help="default: the interpreter as users load it (XNNPACK), the judge; builtin: the builtin kernels alone "
        "(intermediates come from them only); both (default): each reported, the worse decides",
    )
    p.add_argument(
        "--min-sqnr",
        type=float,
        metavar="DB",
        help=f"exit {EXIT_VALIDATION_FAILED} if an output's worst SQNR (dB) is lower in a runtime that decides",
    )


def add_parsers(commands: Any) -> None:
    """Add compress, validate and demo to the ``python -m engine`` subcommands."""
    p = commands.add_parser("compress", help="compress a model's weights (with no options: a lossless round trip)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--share-identical-buffers", action="store_true", help="store identical constant buffers once")
    p.add_argument(
        "--quantize",
        metavar="MODE",
        help=f"{', '.join(WEIGHT_MODES)} or none (a recipe can set weight modes per op); "
        f"{' and '.join(ACTIVATION_SCHEMES)} quantize the whole model (weights and activations) and need --calibration",
    )
    p.add_argument(
        "--calibration", metavar="DATA", help=f"samples for {'/'.join(ACTIVATION_SCHEMES)} and --rounding: {_DATA}"
    )
    p.add_argument(
        "--observer",
        metavar="O",
        help=f"activation ranges: {', '.join(OBSERVERS)}, as NAME or NAME:ARGUMENT (percentile:99.9; default minmax)",
    )
    p.add_argument("--io", metavar="T", help=f"interface of an int8 model: {', '.join(IO_TYPES)} (default float)")
    p.add_argument(
        "--bias-correction",
        action="store_true",
        default=None,
        help="shift each layer's bias by its mean output error measured on the calibration data, where that "
        "brings the outputs closer to the float model's on calibration samples it was not estimated from",
    )
    p.add_argument(
        "--equalize",
        action="store_true",
        default=None,
        help="rescale channels between layers (exact in float) so that what has one scale per tensor uses its "
        "levels: weights with --granularity tensor in weight modes (cross-layer equalization); in int8/int16x8 the "
        "activations, from the calibration data's channel ranges, where that lowers the predicted noise",
    )
    p.add_argument(
        "--gradual",
        type=int,
        nargs="?",
        const=DEFAULT_GRADUAL_STAGES,
        metavar="STAGES",
        help=f"quantize in STAGES steps in graph order (default {DEFAULT_GRADUAL_STAGES}), fitting each step's "
        "activation ranges and data-aware rounding on the model with the earlier steps already quantized",
    )
    p.add_argument(
        "--strict", action="store_true", default=None, help="refuse if an op would stay float (no integer kernel)"
    )
    p.add_argument("--bits", type=int, metavar="N", help="bits of the integer levels, 2..8 (default: the mode's)")
    p.add_argument("--granularity", metavar="G", help=f"one scale per: {', '.join(GRANULARITIES)} (default channel)")
    p.add_argument(
        "--rounding",
        metavar="R",
        help=f"{' or '.join(ROUNDING_METHODS)}: each weight to its nearest level (default), or codes fitted to "
        "what the layer reads on --calibration samples (GPTQ, AdaRound)",
    )
    p.add_argument(
        "--scale",
        metavar="S",
        help=f"{' or '.join(SCALE_METHODS)}: absolute max or least-error clip (default: minmax at 8 bits, mse below)",
    )
    p.add_argument(
        "--min-elements", type=int, metavar="N", help=f"leave smaller weights alone (default {DEFAULT_MIN_ELEMENTS})"
    )
    p.add_argument("--prune", type=float, metavar="SPARSITY", help="zero this fraction of each weight (0..1)")
    p.add_argument("--prune-pattern", metavar="P", help="unstructured (default), N:M (e.g. 2:4), block:RxC, channel")
    p.add_argument("--prune-scope", metavar="S", help="layer (default): each tensor alone; global: one threshold")
    p.add_argument(
        "--prune-channels",
        metavar="C",
        help="channel pattern: remove (default) filters where the graph allows, or zero them",
    )
    p.add_argument("--cluster", type=int, metavar="K", help="share K values per tensor or channel (2..256)")
    p.add_argument("--cluster-granularity", metavar="G", help="tensor (default) or channel")
    p.add_argument(
        "--cluster-init", metavar="I", help=f"codebook method: {', '.join(CODEBOOK_METHODS)} (default kmeans++)"
    )
    p.add_argument("--cluster-storage", metavar="S", help="values (default) or gather (uint8 indices + codebook)")
    p.add_argument("--sparse-format", metavar="F", help="tflite (default: sparse + DENSIFY where smaller) or dense")
    p.add_argument(
        "--recipe",
        metavar="FILE.json",
        help="JSON recipe: options globally, per op type and per tensor regex (docs/cli.md)",
    )
    p.add_argument(
        "--exclude", action="append", metavar="REGEX", help="leave weights whose name matches this regex (repeatable)"
    )
    p.add_argument("--report", metavar="FILE.json", help="write the per-tensor report to this JSON file")
    p.add_argument(
        "--gzip",
        action="store_true",
        help="report input and output gzip sizes (done anyway with --cluster or --prune; zlib takes ~0.1 s a MB)",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="after writing, compare with the input in LiteRT and time both (failure: exit "
        f"{EXIT_VALIDATION_FAILED}, the output written)",
    )
    p.add_argument("--data", metavar="DATA", help=f"samples for --validate, in the --calibration format; {_DATA}")
    _validation_flags(p, runtime_default=None)
    accuracy_cli.add_budget_flags(p)
    secure_cli.add_sign_flag(p)
    p.set_defaults(run=_compress)

    p = commands.add_parser("validate", help="compare two models' outputs in the LiteRT interpreter")
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--data", metavar="DATA", help=f"samples to compare on: {_DATA} (default: one generated sample)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs (when --data is not given)")
    p.add_argument("--no-intermediates", action="store_true", help="compare model outputs only")
    _validation_flags(p, runtime_default="both")
    p.add_argument(
        "--xnnpack", dest="runtime", action="store_const", const="default", help="deprecated: --runtime default"
    )
    p.set_defaults(run=_validate)

    p = commands.add_parser("demo", help="fetch a real MediaPipe model, compress it, and show what changed")
    p.add_argument("--model", default=DEMO_MODEL, help=f"MediaPipe model name (default {DEMO_MODEL})")
    p.add_argument("--output-dir", help="where to write the result (default: a new temporary folder)")
    p.add_argument("--quantize", default=DEMO_MODE, help=f"weight mode (default {DEMO_MODE})")
    p.set_defaults(run=_demo)
