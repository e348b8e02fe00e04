"""Pruning scope benchmark: layer scope against global scope at the same overall sparsity, on real models.

Usage::

    python benchmarks/prune_scope.py [--json PATH] [--sparsity 0.5 0.75 0.9] [--photos 3]

For each of the 11 MediaPipe models LiteRT runs, every float weight of at least 4096 elements read by an op
with a pruning layout (an input axis in ``engine.graph.ops``) is pruned unstructured to the asked sparsity, either
each tensor alone (layer scope, ``prune_mask``) or all of them together (``global_masks``, with each
normalization in ``engine.quant.pruning.NORMALIZATIONS``); the overall sparsity over those tensors, by element, is
the same in every scope. The pruned weights are written back as dense float32 constants that the ops read
directly (their DEQUANTIZE/DENSIFY chains removed), and the model is compared with the original in LiteRT on
real photos (``engine.zoo.photo_input``). A weight whose stored buffer another weight shares is left as it is.

Each cell is "worst / median" over the model's outputs of the output SQNR (dB), each output's SQNR being its
mean over the photos. The last table counts, per sparsity, the models where a global scope beats layer scope
on both figures, and the median over models of the gain. About 40 s on the 2-core CI machine. Writes
benchmarks/results/prune_scope.json and .md (``--json``: elsewhere).
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
from harness import environment, markdown_table, results_argument, save  # puts the worktree's engine first
from models import real_models

import engine
from engine.format.ir import Tensor
from engine.graph.weights import Weight, find_weights
from engine.passes.common import install
from engine.quant.metrics import sqnr_db
from engine.quant.pruning import NORMALIZATIONS, global_masks, prune_mask, sparsity_of
from engine.runtime.litert import run
from engine.zoo import INPUT_RANGES, photo_input

MIN_ELEMENTS = 4096
SCOPES = ("layer", *(f"global-{n}" for n in NORMALIZATIONS))


def prunable(model: engine.Model) -> list[tuple[Weight, int]]:
    """The weights this benchmark prunes, with their input axis."""
    chosen = []
    for w in find_weights(model):
        if not w.is_float or w.elements < MIN_ELEMENTS or w.shared_source or w.channel_axis is None:
            continue
        if w.input_axis is not None:
            chosen.append((w, w.input_axis))
    return chosen


def pruned_model(path: Path, sparsity: float, scope: str) -> tuple[engine.Model, float, int]:
    """The model with its prunable weights pruned in ``scope``; also the overall sparsity and tensor count."""
    model = engine.read_model(path)
    chosen = prunable(model)
    values = [w.decode() for w, _ in chosen]
    triples = [(v, w.channel_axis, axis) for v, (w, axis) in zip(values, chosen, strict=True)]
    if scope == "layer":
        masks = [prune_mask(v, sparsity, "unstructured", c, i) for v, c, i in triples]
    else:
        masks = global_masks(triples, sparsity, "unstructured", normalization=scope.removeprefix("global-"))
    for (weight, _), value, mask in zip(chosen, values, masks, strict=True):
        # A float32 constant needs no DEQUANTIZE: every reader takes it directly, the old chain goes.
        assert not any(t is weight.value for t in weight.subgraph.outputs)
        stored = Tensor(f"{weight.name}_pruned", weight.shape)
        stored.data = np.where(mask, value, np.float32(0))
        install(model, weight, stored, direct=list(weight.uses))
    return model, sparsity_of(masks), len(chosen)


def measure(name: str, path: Path, sparsities: list[float], photos: int, folder: Path) -> dict:
    """Output SQNR of every scope at every sparsity for one model."""
    shape = tuple(engine.read_model(path).main.inputs[0].shape)
    inputs = [photo_input(shape, "float32", i, value_range=INPUT_RANGES[name]) for i in range(photos)]
    references = [run(path, x) for x in inputs]
    result: dict = {"model": name, "cells": {}}
    for sparsity in sparsities:
        for scope in SCOPES:
            model, achieved, count = pruned_model(path, sparsity, scope)
            out = folder / f"{name}-{scope}-{sparsity}.tflite"
            engine.write_model(model, out)
            outputs = [run(out, x) for x in inputs]
            per_output = [
                float(np.mean([sqnr_db(ref[k], got[k]) for ref, got in zip(references, outputs, strict=True)]))
                for k in references[0]
            ]
            result["tensors"] = count
            result["cells"][f"{scope}@{sparsity}"] = {
                "achieved": achieved,
                "worst": min(per_output),
                "median": statistics.median(per_output),
            }
            out.unlink()
    return result


def _cell(c: dict) -> str:
    return f"{c['worst']:.1f} / {c['median']:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """Every model's cells, then per sparsity and global scope the models where it beats layer scope."""
    sparsities, models = results["settings"]["sparsity"], results["models"]
    header = ["model", "tensors", *(f"{scope} {s:.0%}" for s in sparsities for scope in SCOPES)]
    rows = [[r["model"], r["tensors"], *(_cell(r["cells"][f"{scope}@{s}"]) for s in sparsities for scope in SCOPES)]
            for r in models]  # fmt: skip
    wins = []
    for s in sparsities:
        for scope in SCOPES[1:]:
            gains = [
                (
                    r["cells"][f"{scope}@{s}"]["worst"] - r["cells"][f"layer@{s}"]["worst"],
                    r["cells"][f"{scope}@{s}"]["median"] - r["cells"][f"layer@{s}"]["median"],
                )
                for r in models
            ]
            better = sum(1 for w, m in gains if w > 0 and m > 0)
            median_worst = statistics.median(g[0] for g in gains)
            median_median = statistics.median(g[1] for g in gains)
            wins.append([f"{s:.0%}", scope, f"{better} / {len(models)}", f"{median_worst:+.1f} / {median_median:+.1f}"])
    photos = results["settings"]["photos"]
    return "\n\n".join([
        f"# Output SQNR worst / median (dB) over the outputs, each output's mean over {photos} photos",
        markdown_table(header, rows),
        "## Global scope against layer scope",
        markdown_table(["sparsity", "scope", "models better than layer on worst and median",
                        "median gain worst / median dB"], wins),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_argument(parser, "prune_scope")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--photos", type=int, default=3)
    args = parser.parse_args(argv)
    settings = {"sparsity": args.sparsity, "photos": args.photos, "min_elements": MIN_ELEMENTS}
    results: dict[str, Any] = {"environment": environment(), "settings": settings, "models": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in real_models().items():
            results["models"].append(measure(name, path, args.sparsity, args.photos, Path(tmp)))
            print(f"measured {name}", file=sys.stderr)
    results["total_s"] = time.perf_counter() - started
    save(results, markdown(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
