"""Full-integer quantization (``--quantize int8`` / ``--quantize int16x8``) from a float .tflite and calibration data.

LiteRT's integer quantization specification, applied from the op table (engine/graph/ops.py): activations int8
asymmetric per tensor (or int16 symmetric, zero point 0, for 16x8); the weights of multiply-accumulate ops int8
symmetric per output channel (zero point 0, levels +-127); their bias int32 (int64 for 16x8) with scale
input_scale * weight_scale[c]; other constants per tensor; fixed output parameters where the kernel requires
them (SOFTMAX, LOGISTIC, TANH); one shared (scale, zero point) for the inputs and output of ops that copy codes
(RESHAPE, MAX_POOL_2D, CONCATENATION, PAD, ...); fused activations kept, their bounds clipping the output range.

The pass runs in four steps, each a function: ``plan_ops`` (which ops get an integer kernel, and why the others
stay float), ``observe`` (calibration: a range per activation), ``assign_params`` (ranges -> parameters, shared
where the kernels need it), and ``rewrite`` (retype tensors, quantize constants, insert QUANTIZE/DEQUANTIZE only
where integer and float parts of the graph meet, set op versions).  ``correct_biases`` optionally follows.
With ``gradual`` the calibration runs stage by stage on the partly integer model (``calibrate_in_stages``).
``FullInteger`` is the pass as a pipeline step, with the weight passes' contract.
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Model, Operator
from engine.graph.ops import RULES
from engine.graph.weights import Weight, find_weights
from engine.passes.fold import Folded, fold_constant_decoders, restore_decoders
from engine.passes.full_integer.bias_correction import correct_biases, float_reference
from engine.passes.full_integer.gradual import calibrate_in_stages
from engine.passes.full_integer.params import assign_params, check_multipliers, observe
from engine.passes.full_integer.plan import check_quantizable, multiplies_weight, plan_ops, scheme_of
from engine.passes.full_integer.report import IntegerReport
from engine.passes.full_integer.rewrite import rewrite
from engine.passes.full_integer.smooth import smooth_activations
from engine.passes.fuse import fuse_activations
from engine.quant.uniform import expect_weights
from engine.recipe import Recipe, TensorOptions, is_full_integer
from engine.registry import ACTIVATION_SCHEMES
from engine.report import TensorReport
from engine.runtime.calibrate import CalibrationSource, LiteRTExecutor, calibrate, load_calibration
from engine.runtime.layer_inputs import collect_layer_inputs, unsupported_reason


def quantize_model(
    model: Model,
    recipe: Recipe,
    calibration: CalibrationSource | None,
    executor: type[LiteRTExecutor] = LiteRTExecutor,
    keep_decoded: bool = False,
) -> tuple[Model, list[TensorReport], IntegerReport]:
    """Quantize ``model`` (in place) to full integer as the recipe's global options say.  ``keep_decoded``: the
    constants only float ops read stay float32 instead of going back behind their decoders (``restore_decoders``):
    the same outputs, a larger file, and an interpreter that builds faster (XNNPACK widens float16 weights when it
    packs them: pose_detection 75 ms against 6-13 ms), for candidates that are judged and dropped."""
    options = TensorOptions(**recipe.options)
    if not is_full_integer(options.quantize):
        raise EngineError(f"quantize_model needs a full-integer mode ({', '.join(ACTIVATION_SCHEMES)})")
    scheme = scheme_of(options)
    if calibration is None:
        raise EngineError(
            f"--quantize {options.quantize} needs calibration data: pass --calibration DATA (.npz keyed by input "
            f"name, or one array for a single-input model; the leading axis is the sample)"
        )
    model, folded = fold_constant_decoders(model)
    model, fused = fuse_activations(model)
    data = load_calibration(calibration, model)
    sg = model.main
    integer, float_ops = plan_ops(model, recipe, options)
    smoothed = (
        smooth_activations(model, recipe, data, scheme, executor, stored=_island_storage(folded, integer))
        if options.equalize
        else []
    )
    if options.strict and float_ops:
        listed = "; ".join(f"{f['op']} {f['output']!r}: {f['reason']}" for f in float_ops[:10])
        raise EngineError(f"--strict: {len(float_ops)} op(s) would stay float: {listed}")
    check_quantizable(model, integer)
    observers = observe(sg, integer, recipe, options.io != "float")
    fitted = _fitted_weights(model, recipe, integer)
    expect_weights(_weight_work(recipe, integer))
    stages = 1
    if options.gradual:
        layer_inputs, stages = calibrate_in_stages(
            model, recipe, options, scheme, integer, observers, fitted, data, executor
        )
    else:
        calibrate(model, data, observers, executor)
        layer_inputs = collect_layer_inputs(model, fitted, data, executor) if fitted else {}
    params, requantize = assign_params(sg, integer, observers, scheme)
    check_multipliers(integer, params)
    report = IntegerReport(
        options.quantize,
        scheme.kernels,
        options.io,
        _observer_label(recipe, options),
        data.count,
        folded_decoders=len(folded),
        fused_activations=fused,
    )
    report.float_ops = float_ops
    report.equalized = smoothed if options.equalize else None
    report.stages = stages
    tensors = {key: t for key, (t, _) in observers.items()}
    reference = float_reference(model, _biased(integer), data, executor) if options.bias_correction else None
    entries, biases = rewrite(model, recipe, integer, tensors, params, requantize, options, report, layer_inputs)
    report.restored_decoders = 0 if keep_decoded else restore_decoders(folded)
    if reference is not None:
        report.bias_correction = correct_biases(model, biases, reference, data, executor)
    sg.remove_unused_tensors()
    return model, entries, report


class FullInteger:
    """The full-integer pass as a pipeline step, ``(Model, Recipe) -> (Model, [TensorReport])`` like the weight
    passes: it does nothing unless the recipe's mode is a full-integer one, and ``engine.compress`` ends every
    pipeline with it (it needs the weights the other passes leave).  What it needs besides the model, calibration
    data and the executor that runs the float model, is given when the step is built; ``report`` is what its last
    run did to the graph."""

    def __init__(
        self,
        calibration: CalibrationSource | None = None,
        executor: type[LiteRTExecutor] = LiteRTExecutor,
        keep_decoded: bool = False,
    ) -> None:
        self.calibration, self.executor, self.keep_decoded = calibration, executor, keep_decoded
        self.report: IntegerReport | None = None

    def __call__(self, model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
        if not is_full_integer(recipe.options.get("quantize")):
            return model, []
        model, entries, self.report = quantize_model(model, recipe, self.calibration, self.executor, self.keep_decoded)
        return model, entries


def _island_storage(folded: list[Folded], integer: list[Operator]) -> dict[int, np.dtype]:
    """The floating type each folded weight that no integer op reads is stored in behind its decoder (FLOAT16
    behind DEQUANTIZE), by ``id`` of its tensor: a float island's weight goes back there after equalization."""
    read_by_integer = {id(t) for op in integer for t in op.inputs if t is not None}
    return {
        id(f.op.outputs[0]): dtype
        for f in folded
        if (dtype := f.op.inputs[0].dtype) is not None
        and dtype.kind == "f"
        and id(f.op.outputs[0]) not in read_by_integer
    }


def _fitted_weights(model: Model, recipe: Recipe, integer: list[Operator]) -> list[Weight]:
    """The integer ops' weights that the recipe rounds by a data-aware method and whose layer has an input model
    here (the others get nearest rounding)."""
    if not recipe.fits_to_data():
        return []
    integer_ids = {id(op) for op in integer}
    return [
        weight
        for weight in find_weights(model)
        if weight.subgraph_index == 0
        and all(id(op) in integer_ids for op, _ in weight.uses)
        and recipe.resolve(weight.op_name, weight.name).rounding != "nearest"
        and unsupported_reason(weight) is None
    ]


def _weight_work(recipe: Recipe, integer: list[Operator]) -> list[tuple[str, int]]:
    """(scale method, elements) of each weight the integer ops will quantize (see ``_Rewriter.weight``)."""
    work = []
    for op in integer:
        rule = RULES[op.name]
        w = op.optional_input(rule.weight_input) if multiplies_weight(rule) else None
        if w is not None and w.is_constant:
            work.append((recipe.resolve(op.name, w.name or "").scale_method, int(np.asarray(w.data).size)))
    return work


def _biased(integer: list[Operator]) -> list[Operator]:
    """The integer ops whose bias bias correction can move: they multiply a weight and have a bias."""
    return [
        op
        for op in integer
        if multiplies_weight(RULES[op.name]) and op.optional_input(RULES[op.name].bias_input) is not None
    ]


def _observer_label(recipe: Recipe, options: TensorOptions) -> str:
    spec = options.observer
    overrides = sum("observer" in o for o in (*recipe.ops.values(), *recipe.tensors.values()))
    return f"{spec} observer" + (f", {overrides} recipe override(s)" if overrides else "")
