"""The command line of accuracy-aware compression: ``python -m engine analyze`` and the budget flags of
``compress`` (``--target-sqnr``, ``--max-accuracy-drop``, ``--labels``, ``--optimize``, ``--save-recipe``,
``--holdout``, ``--max-runs``).  engine/cli.py registers them; the work is in engine.accuracy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from engine.errors import EngineError

# Exit code of ``compress`` when the budget is not met: the best model found is written, and the error line says so.
EXIT_BUDGET_NOT_MET = 4
_DATA = ".npz keyed by input name, or one array (.npy) for a single-input model; the leading axis is the sample"


def _holdout(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    """The budget flags of ``compress``."""
    p.add_argument(
        "--target-sqnr",
        type=float,
        metavar="DB",
        help="search per weight/op precisions for the smallest model whose worst output SQNR, on samples held out "
        "from --calibration, is at least DB (default runtime)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="search for the smallest model losing at most POINTS of top-1 accuracy (first output) on held-out "
        "samples, with --labels",
    )
    p.add_argument("--labels", metavar="Y.npy", help="one integer class per --calibration sample")
    p.add_argument(
        "--optimize",
        choices=("size", "latency"),
        help="what the budgeted search minimizes: size (default) or default-runtime latency (finalists timed)",
    )
    p.add_argument("--save-recipe", metavar="FILE.json", help="write the chosen assignment as a recipe")
    p.add_argument(
        "--holdout",
        type=_holdout,
        metavar="F|N",
        help="full-integer budgets: the fraction (or number) of --calibration samples held out to judge (default 0.25)",
    )
    p.add_argument("--max-runs", type=int, metavar="N", help="bound on the candidates judged (default 600)")


def budget_options(args: argparse.Namespace) -> dict[str, Any]:
    """The budget keywords given on the command line (empty: no budgeted search)."""
    names = ("target_sqnr", "max_accuracy_drop", "labels", "optimize", "save_recipe", "holdout", "max_runs")
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if given and "target_sqnr" not in given and "max_accuracy_drop" not in given:
        flag = "--" + next(iter(given)).replace("_", "-")
        raise EngineError(f"{flag} does nothing without --target-sqnr or --max-accuracy-drop")
    return given


def budget_verdict(report: Any, output: str) -> str | None:
    """The ``error:`` line of a budget not met, None when met (or no budget)."""
    search = getattr(report, "search", None)
    if search is None or search.met:
        return None
    return f"wrote {output}; budget not met: {search.budget['describe']} was not reached (best found: "  + \
        f"{search.final.get('sqnr_db', float('nan')):.2f} dB" + (
            "" if search.final.get("accuracy_drop") is None else f", drop {search.final['accuracy_drop']:.2f} points"
        ) + ")"  # fmt: skip


def add_parsers(commands: Any) -> None:
    p = commands.add_parser(
        "analyze", help="per-weight/op sensitivity to a quantization mode, measured at the model outputs in LiteRT"
    )
    p.add_argument("model")
    p.add_argument("--calibration", metavar="DATA", required=True, help=f"samples: {_DATA}")
    p.add_argument("--quantize", metavar="MODE", default="int8", help="the mode to analyze (default int8)")
    p.add_argument("--labels", metavar="Y.npy", help="one integer class per sample: accuracy drops too")
    p.add_argument("--recipe", metavar="FILE.json", help="other compress options, as a recipe")
    p.add_argument(
        "--holdout", type=_holdout, metavar="F|N", help="full-integer modes: samples held out to judge (default 0.25)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart of the per-op harm (needs matplotlib)")
    p.add_argument("--top", type=int, default=30, metavar="N", help="rows of the table (default 30; 0: all)")
    p.set_defaults(run=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from engine.accuracy.sensitivity import analyze

    if args.top < 0:
        raise EngineError(f"--top must be 0 (all) or more, not {args.top}")
    if args.plot:
        from engine.accuracy.plot import require_matplotlib

        require_matplotlib()
    options: dict[str, Any] = {"quantize": args.quantize, "labels": args.labels, "recipe": args.recipe}
    if args.holdout is not None:
        options["holdout"] = args.holdout
    result = analyze(args.model, args.calibration, **options)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_text(args.top or None))
    if args.plot:
        from engine.accuracy.plot import plot_sensitivity

        plot_sensitivity(result, args.plot)
        if not args.json:
            print(f"plot: {args.plot}")
    return 0
