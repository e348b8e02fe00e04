"""``python -m engine <command>``: inspect, compress, validate, demo.

Every command exits 0 on success.  Bad input (a broken model, missing data, ...) prints one ``error:`` line
on stderr and exits 1, with no traceback and no output file left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.ir import Model
from engine.reader import read_model
from engine.recipe import DEFAULT_MIN_ELEMENTS, GRANULARITIES, IO_TYPES, MODES, SCALE_METHODS
from engine.summary import format_summary, summarize
from engine.writer import write_model

OBSERVER_SPECS = ("minmax", "percentile[:P]", "mse", "entropy")
DEMO_MODEL = "face_detection_short_range"
DEMO_MODE = "weight-int8"
EXIT_ERROR = 1
EXIT_BELOW_THRESHOLD = 3


def _inspect(args: argparse.Namespace) -> int:
    model = read_model(args.model)
    summary = summarize(model, Path(args.model).stat().st_size)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


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
    "quantize", "bits", "granularity", "scale", "min_elements",
    "prune", "prune_pattern", "prune_scope", "prune_channels", "sparse_format",
    "cluster", "cluster_granularity", "cluster_init", "cluster_storage",
    "observer", "io", "bias_correction", "strict",
)  # fmt: skip


def _compress(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in _COMPRESSION_FLAGS if getattr(args, name) is not None}
    if args.quantize == "none":
        options["quantize"] = None
    if not options and not args.recipe and not args.exclude:
        _, _, change = _rewrite(
            Path(args.input), Path(args.output), share_identical_buffers=args.share_identical_buffers
        )
        print(f"wrote {args.output} (lossless rewrite: no compression options given)")
        print("\n".join(change))
        return 0
    from engine.api import compress

    _, report = compress(
        args.input, args.recipe, output=args.output, exclude=args.exclude, calibration=args.calibration, **options
    )
    print(f"wrote {args.output}")
    print(report.format_text())
    status = 0
    if args.validate:
        status = _validate_after(args, report)
    if args.report:
        report.save(args.report)
        print(f"report: {args.report}")
    return status


def _validate_after(args: argparse.Namespace, report: Any) -> int:
    """``compress --validate``: compare the written model with the input in LiteRT and add it to the report."""
    from engine.validate import load_inputs, validate

    data = load_inputs(args.data) if args.data else _first_sample(args.input, args.calibration)
    try:
        result = validate(args.input, args.output, data, intermediates=False, xnnpack=report.needs_xnnpack)
    except EngineError as exc:
        print(f"error: cannot validate {args.output}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report.validation = result.to_dict()
    print(f"\nLiteRT ({'XNNPACK' if report.needs_xnnpack else 'builtin kernels'}), input vs compressed:")
    print(result.format_text())
    return 0


def _first_sample(model: str, calibration: str | None) -> dict[str, Any] | None:
    """Without --data, ``--validate`` after a full-integer run compares on the calibration data's first sample
    (real inputs say more than generated ones); None: generated inputs."""
    if calibration is None:
        return None
    from engine.calibrate import load_calibration

    data = load_calibration(calibration, read_model(model))
    return {name: value for (name, _, _), value in zip(data.inputs, data.sample(0), strict=True)}


def _validate(args: argparse.Namespace) -> int:
    from engine.validate import load_inputs, validate

    data = load_inputs(args.data) if args.data else None
    report = validate(
        args.reference,
        args.candidate,
        data,
        seed=args.seed,
        intermediates=not args.no_intermediates,
        xnnpack=args.xnnpack,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    if args.min_sqnr is not None and report.worst_sqnr_db < args.min_sqnr:
        print(f"error: worst output SQNR {report.worst_sqnr_db:.2f} dB is below {args.min_sqnr} dB", file=sys.stderr)
        return EXIT_BELOW_THRESHOLD
    return 0


def _demo(args: argparse.Namespace) -> int:
    from engine.api import compress
    from engine.recipe import STATIC_MODES
    from engine.validate import validate
    from engine.zoo import mediapipe_model, model_calibration, model_photo

    source = mediapipe_model(args.model)
    out_dir = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="litert-engine-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{args.model}.{args.quantize}.tflite"
    print(f"model: {args.model} (mediapipe 0.10.14) from {source}")
    print(format_summary(summarize(read_model(source), source.stat().st_size)))
    calibration = model_calibration(args.model) if args.quantize in STATIC_MODES else None
    _, report = compress(source, output=target, quantize=args.quantize, calibration=calibration)
    print(f"\ncompressed with --quantize {args.quantize}: wrote {target}")
    print(report.format_text())
    result = validate(source, target, model_photo(args.model), intermediates=False)
    print("\nLiteRT on a real photo, original vs compressed:")
    print(result.format_text())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="Compress, inspect and validate TensorFlow Lite (LiteRT) models."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("inspect", help="describe a .tflite model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_inspect)

    p = commands.add_parser("compress", help="compress a model's weights (with no options: a lossless round trip)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--share-identical-buffers", action="store_true", help="store identical constant buffers once")
    p.add_argument(
        "--quantize",
        metavar="MODE",
        help=f"{', '.join(MODES)} or none (a recipe can set weight modes per op); int8 and int16x8 quantize the whole "
        "model (weights and activations) and need --calibration",
    )
    p.add_argument(
        "--calibration", metavar="DATA", help="samples for int8/int16x8: .npz keyed by input name, or one array"
    )
    p.add_argument("--observer", metavar="O", help=f"activation ranges: {', '.join(OBSERVER_SPECS)} (default minmax)")
    p.add_argument("--io", metavar="T", help=f"interface of an int8 model: {', '.join(IO_TYPES)} (default float)")
    p.add_argument(
        "--bias-correction",
        action="store_true",
        default=None,
        help="shift each layer's bias by its mean output error measured on the calibration data",
    )
    p.add_argument(
        "--strict", action="store_true", default=None, help="refuse if an op would stay float (no integer kernel)"
    )
    p.add_argument("--bits", type=int, metavar="N", help="bits of the integer levels, 2..8 (default: the mode's)")
    p.add_argument("--granularity", metavar="G", help=f"one scale per: {', '.join(GRANULARITIES)} (default channel)")
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
    p.add_argument("--cluster-init", metavar="I", help="kmeans++ (default), linear or density")
    p.add_argument("--cluster-storage", metavar="S", help="values (default) or gather (uint8 indices + codebook)")
    p.add_argument("--sparse-format", metavar="F", help="tflite (default: sparse + DENSIFY where smaller) or dense")
    p.add_argument(
        "--recipe", metavar="FILE.json", help="JSON recipe: options globally, per op type and per tensor regex (README)"
    )
    p.add_argument(
        "--exclude", action="append", metavar="REGEX", help="leave weights whose name matches this regex (repeatable)"
    )
    p.add_argument("--report", metavar="FILE.json", help="write the per-tensor report to this JSON file")
    p.add_argument("--validate", action="store_true", help="compare with the input in LiteRT after writing")
    p.add_argument("--data", help="inputs for --validate: .npz keyed by input name, or one array")
    p.set_defaults(run=_compress)

    p = commands.add_parser("validate", help="compare two models' outputs in the LiteRT interpreter")
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--data", help=".npz keyed by input name, or a single-array .npz/.npy")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs (when --data is not given)")
    p.add_argument("--no-intermediates", action="store_true", help="compare model outputs only")
    p.add_argument("--xnnpack", action="store_true", help="run with the default XNNPACK delegate (outputs only)")
    p.add_argument("--min-sqnr", type=float, help=f"exit {EXIT_BELOW_THRESHOLD} if an output's SQNR (dB) is lower")
    p.set_defaults(run=_validate)

    p = commands.add_parser("demo", help="fetch a real MediaPipe model, compress it, and show what changed")
    p.add_argument("--model", default=DEMO_MODEL, help=f"MediaPipe model name (default {DEMO_MODEL})")
    p.add_argument("--output-dir", help="where to write the result (default: a new temporary folder)")
    p.add_argument("--quantize", default=DEMO_MODE, help=f"weight mode (default {DEMO_MODE})")
    p.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
