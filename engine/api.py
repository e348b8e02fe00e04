"""``engine.compress``: the Python form of ``python -m engine compress``.

It reads the model (unless given one), resolves the recipe once, runs every compression pass on it, and
gathers what the passes report with the sizes before and after into one ``Report``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.accuracy import BUDGET_KEYWORDS
from engine.errors import EngineError
from engine.files import same_file
from engine.format.ir import Model
from engine.format.reader import read_model
from engine.format.writer import write_model
from engine.graph.weights import find_weights
from engine.passes.cluster import cluster_weights
from engine.passes.common import entry
from engine.passes.equalize import equalize_weights
from engine.passes.float16 import float16_weights
from engine.passes.full_integer import FullInteger
from engine.passes.prune import prune_weights
from engine.passes.quantize_weights import QuantizeWeights
from engine.recipe import Recipe
from engine.report import Report, TensorReport
from engine.runtime.calibrate import CalibrationSource, LiteRTExecutor
from engine.summary import constant_bytes_by_dtype

Pass = Callable[[Model, Recipe], tuple[Model, list[TensorReport]]]


# Order matters: equalize (exact in float, so every later step sees balanced channels), prune, then cluster (which
# keeps the zeros), then quantize (which keeps both and re-encodes); compress ends every pipeline with the
# full-integer step (engine.passes.full_integer.FullInteger).
def pipeline(
    calibration: CalibrationSource | None = None, executor: type[LiteRTExecutor] = LiteRTExecutor
) -> tuple[Pass, ...]:
    """The default passes in order; the steps that read samples (data-aware rounding) get them here."""
    return (equalize_weights, prune_weights, cluster_weights, float16_weights, QuantizeWeights(calibration, executor))


PIPELINE = pipeline()


def compress(
    model_or_path: Model | str | os.PathLike[str],
    recipe: Recipe | dict[str, Any] | str | os.PathLike[str] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    exclude: list[str] | None = None,
    calibration: CalibrationSource | None = None,
    share_identical_buffers: bool = False,
    passes: Sequence[Pass] | None = None,
    executor: type[LiteRTExecutor] = LiteRTExecutor,
    keep_decoded: bool = False,
    **options: Any,
) -> tuple[Model, Report]:
    """Compress a model (edited in place when one is given) and report what changed.

    ``recipe`` is a ``Recipe``, its dictionary form, or a JSON file; keyword ``options`` (``quantize``,
    ``bits``, ``granularity``, ``scale``, ``min_elements``, ``observer``, ``io``, ...) override its global options
    and ``exclude`` adds patterns, as the command line's flags do; an option that would do nothing is refused.
    The full-integer modes (``quantize="int8"`` or ``"int16x8"``) and data-aware rounding (``rounding="gptq"``)
    need ``calibration``, and only they take it: an
    .npz or .npy path (keyed by input name, or one array for a single-input model), a dict of arrays or one
    array, the leading axis being the sample.  With ``output`` the result is written there (atomically;
    ``share_identical_buffers`` stores identical constant buffers once) and the report gets the file sizes, and
    the gzip sizes when the recipe clusters or prunes (elsewhere ``Report.add_gzip_sizes`` adds them: zlib costs
    about 0.1 s per MB of float32).  ``passes`` is the pipeline, run in order (each ``(Model, Recipe) -> (Model,
    [TensorReport])``; default ``pipeline(calibration, executor)``), so a research pass joins the run and its
    report; the full-integer step follows it, running the float model for calibration and bias correction with
    ``executor`` (``engine.runtime.calibrate.Executor``; default LiteRT).  ``keep_decoded`` (full-integer modes):
    float ops' constants stay float32 rather than behind the input's decoders (float16, sparse): the same outputs, a
    larger file that LiteRT loads faster.

    With ``target_sqnr`` or ``max_accuracy_drop`` (and ``labels``, ``optimize``, ``save_recipe``, ``holdout``,
    ``max_runs``) it searches the mixed precision that keeps that budget instead: ``engine.accuracy.search``.
    """
    if options.keys() & set(BUDGET_KEYWORDS):
        from engine.accuracy.search import budgeted_compress

        return budgeted_compress(
            model_or_path, recipe, output=output, exclude=exclude, calibration=calibration,
            share_identical_buffers=share_identical_buffers, passes=passes, executor=executor,
            keep_decoded=keep_decoded, **options,
        )  # fmt: skip
    source = None if isinstance(model_or_path, Model) else Path(model_or_path)
    if source is not None and output is not None and same_file(source, output):
        raise EngineError(f"output={str(output)!r} is the input file; the input is never overwritten")
    recipe = _recipe(recipe, exclude, options)
    recipe.check_calibration(calibration is not None)
    model = read_model(source) if source is not None else model_or_path
    assert isinstance(model, Model)
    report = Report(recipe=recipe.to_dict())
    report.bytes_by_dtype_before = constant_bytes_by_dtype(model)
    by_weight = {(t.subgraph, t.name): t for t in _left_alone(model, recipe)}
    full_integer = FullInteger(calibration, executor, keep_decoded)
    steps = pipeline(calibration, executor) if passes is None else tuple(passes)
    for run in (*steps, full_integer):
        model, entries = run(model, recipe)
        for t in entries:
            key = (t.subgraph, t.name)
            by_weight[key] = by_weight[key].then(t) if key in by_weight else t
    report.integer = full_integer.report
    report.tensors = sorted(by_weight.values(), key=lambda t: (t.subgraph, t.name))
    report.bytes_by_dtype_after = constant_bytes_by_dtype(model)
    if output is not None:
        report.file_bytes_after = write_model(model, output, share_identical_buffers=share_identical_buffers)
        if source is not None:
            report.file_bytes_before = source.stat().st_size
            if recipe.sets("cluster") or recipe.sets("prune"):  # their gain is partly what a compressor makes of it
                report.add_gzip_sizes(source, output)
    return model, report


def _recipe(recipe: Recipe | dict | str | os.PathLike[str] | None, exclude: list[str] | None, options: dict) -> Recipe:
    if recipe is None:
        recipe = Recipe()
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    return recipe.with_options(exclude, **options) if options or exclude else recipe


def _left_alone(model: Model, recipe: Recipe) -> list[TensorReport]:
    """Report entries for the weights no pass will touch: excluded, already integer, or given no mode."""
    entries = []
    for weight in find_weights(model):
        if recipe.excludes(weight.name):
            entries.append(entry(weight, None, "excluded by the recipe"))
        elif not weight.is_float:
            entries.append(entry(weight, None, f"already {weight.stored_type}"))
        elif not recipe.resolve(weight.op_name, weight.name).changes_weights:
            entries.append(entry(weight, None, "no quantize mode or pruning set"))
    return entries
