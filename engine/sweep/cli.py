"""``python -m engine sweep MODELS... --configs GRID.json|--preset NAME -o RESULTS/``."""

from __future__ import annotations

import argparse
from typing import Any

from engine.errors import EngineError
from engine.evaluation import RUNS
from engine.sweep.inputs import PRESETS, load_configs, load_models


def add_parsers(commands: Any) -> None:
    p = commands.add_parser(
        "sweep", help="compress and evaluate models x configurations; results, Pareto report and plots in a folder"
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help=".tflite files, or models.json manifests (path, calibration, data, labels)",
    )
    configs = p.add_mutually_exclusive_group(required=True)
    configs.add_argument("--configs", metavar="GRID.json", help="configuration name -> engine.compress options")
    configs.add_argument("--preset", choices=sorted(PRESETS), help="a built-in grid (standard: every mode and more)")
    p.add_argument("-o", "--output", required=True, metavar="RESULTS", help="results folder (a re-run continues it)")
    p.add_argument("--workers", type=int, metavar="N", help="parallel runs: local processes, or the local Ray "
                   "instance's CPUs (default 1)")  # fmt: skip
    p.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=False,
        metavar="ADDRESS",
        help="run the jobs as Ray tasks: on a local Ray instance (or the cluster RAY_ADDRESS names), or on the "
        "cluster at ADDRESS (needs pip install 'litert-engine[ray]')",
    )
    p.add_argument("--runs", type=int, default=RUNS, metavar="N", help=f"timed latency rounds (default {RUNS})")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="also time latency on N threads (default: "
                   "1 thread only)")  # fmt: skip
    p.add_argument("--retry-failed", action="store_true", help="run the failed runs of an earlier sweep again")
    p.set_defaults(run=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.threads < 1:
        raise EngineError("--runs and --threads must be at least 1")
    if isinstance(args.ray, str) and args.ray.endswith((".tflite", ".json")):
        raise EngineError(f"--ray took {args.ray} as an address: put --ray after the models, or write --ray=ADDRESS")
    if isinstance(args.ray, str) and args.workers is not None:
        raise EngineError("--workers sets the CPUs of a local Ray instance; a cluster at an address has its own")
    from engine.sweep.jobs import Settings  # the running modules on use: every command builds this parser
    from engine.sweep.run import run_sweep

    models = load_models(args.models)
    configs = load_configs(args.configs, args.preset)
    result = run_sweep(
        models,
        configs,
        args.output,
        settings=Settings(runs=args.runs, threads=args.threads),
        workers=args.workers or 1,
        ray=args.ray,
        retry_failed=args.retry_failed,
    )
    print(
        f"{len(result.rows)} runs ({len(models)} models x {len(configs)} configurations): {result.ran} run now, "
        f"{result.already_done} done before; {len(result.failed)} failed"
    )
    for path in result.written:
        if path.parent == result.directory:
            print(f"wrote {path}")
    print(f"wrote {result.directory / 'results.jsonl'}")
    return 0
