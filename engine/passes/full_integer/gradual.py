"""Gradual full-integer quantization (``--gradual STAGES``).

One-shot calibration fits every activation range (and every layer's data-aware rounding) to the float model's
values, but the quantized model feeds its later layers values that carry the earlier layers' error.  Here the
integer ops are split into stages in graph order; stage k's activations are observed, and its weights' layer
inputs collected, on a copy of the model whose stages before k are already integer (with the parameters fitted so
far), so each stage fits what the quantized model will really give it.  The cost is one calibration run per stage
over that stage's tensors, and one rewrite of a model copy per stage after the first.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.format.ir import Model, Operator, Tensor, all_tensors
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from engine.graph.weights import Weight, find_weights
from engine.passes.full_integer.params import assign_params
from engine.passes.full_integer.report import IntegerReport
from engine.passes.full_integer.rewrite import rewrite
from engine.quant.activations import ActivationScheme
from engine.quant.observers import Observer
from engine.quant.rounding import LayerInputs
from engine.recipe import Recipe, TensorOptions
from engine.runtime.calibrate import CalibrationData, LiteRTExecutor, calibrate
from engine.runtime.layer_inputs import collect_layer_inputs

Observers = dict[int, tuple[Tensor, Observer]]


def stages_of(sg_operators: list[Operator], integer: list[Operator], count: int) -> list[list[Operator]]:
    """The integer ops in graph order, split into ``count`` stages of near-equal size (fewer if there are fewer
    ops)."""
    position = {id(op): i for i, op in enumerate(sg_operators)}
    ordered = sorted(integer, key=lambda op: position[id(op)])
    return [[ordered[i] for i in chunk] for chunk in np.array_split(np.arange(len(ordered)), count) if len(chunk)]


def calibrate_in_stages(
    model: Model,
    recipe: Recipe,
    options: TensorOptions,
    scheme: ActivationScheme,
    integer: list[Operator],
    observers: Observers,
    fitted: list[Weight],
    data: CalibrationData,
    executor: type[LiteRTExecutor],
) -> tuple[dict[int, LayerInputs], int]:
    """Feed ``observers`` (fresh, one per watched activation of ``model``) stage by stage, and collect the layer
    inputs of the ``fitted`` weights (data-aware rounding) likewise; returns those by ``id`` of the weight's
    value, as ``rewrite`` takes them, and the number of stages.  ``model`` is not changed."""
    stages = stages_of(model.main.operators, integer, int(options.gradual or 1))
    done: set[int] = set()
    layer_inputs: dict[int, LayerInputs] = {}
    for k, stage in enumerate(stages):
        keys = _stage_keys(stage, observers, done)
        if k == len(stages) - 1:  # the graph's interface, watched for an integer interface, goes with the last
            keys += [key for key in observers if key not in done and key not in keys]
        stage_ids = {id(op) for op in stage}
        weights = [w for w in fitted if all(id(op) in stage_ids for op, _ in w.uses)]
        if k == 0:
            view, tensor_of, weights_in_view = model, None, weights
        else:
            earlier = [op for s in stages[:k] for op in s]
            view, tensor_of, op_of = _copy(model)
            _make_integer(view, recipe, options, scheme, [op_of[id(op)] for op in earlier], observers, done,
                          tensor_of, layer_inputs, data.count)  # fmt: skip
            by_value = {id(w.value): w for w in find_weights(view) if w.subgraph_index == 0}
            weights_in_view = [by_value[id(tensor_of[id(w.value)])] for w in weights]
        watched = {
            id(_in(tensor_of, key, observers)): (_in(tensor_of, key, observers), observers[key][1]) for key in keys
        }
        calibrate(view, data, watched, executor)
        for key in keys:  # calibrate may hand back remembered copies in place of the observers given
            observers[key] = (observers[key][0], watched[id(_in(tensor_of, key, observers))][1])
        if weights_in_view:
            collected = collect_layer_inputs(view, weights_in_view, data, executor)
            for w, w_view in zip(weights, weights_in_view, strict=True):
                if id(w_view.value) in collected:
                    layer_inputs[id(w.value)] = collected[id(w_view.value)]
        done.update(keys)
    return layer_inputs, len(stages)


def _stage_keys(stage: list[Operator], observers: Observers, done: set[int]) -> list[int]:
    """The watched activations a stage's ops read or write that no earlier stage fitted, in order."""
    keys = [id(t) for op in stage for t in (*op.inputs, *op.outputs) if t is not None]
    return [key for key in dict.fromkeys(keys) if key in observers and key not in done]


def _in(tensor_of: dict[int, Tensor] | None, key: int, observers: Observers) -> Tensor:
    """The tensor of ``model`` keyed ``key``, as it is in the view (the model itself at the first stage)."""
    return observers[key][0] if tensor_of is None else tensor_of[key]


def _copy(model: Model) -> tuple[Model, dict[int, Tensor], dict[int, Operator]]:
    """A copy of ``model`` (written and read back) with maps from the original's tensors and main-subgraph ops to
    the copy's: the writer stores tensors in ``all_tensors`` order and ops in list order."""
    copy = read_model(bytes(model_to_bytes(model)))
    tensors = all_tensors(model.main)
    assert len(tensors) == len(copy.main.tensors) and len(model.main.operators) == len(copy.main.operators)
    tensor_of = {id(t): c for t, c in zip(tensors, copy.main.tensors, strict=True)}
    op_of = {id(op): c for op, c in zip(model.main.operators, copy.main.operators, strict=True)}
    return copy, tensor_of, op_of


def _make_integer(
    view: Model,
    recipe: Recipe,
    options: TensorOptions,
    scheme: ActivationScheme,
    integer: list[Operator],
    observers: Observers,
    done: set[int],
    tensor_of: dict[int, Tensor],
    layer_inputs: dict[int, LayerInputs],
    samples: int,
) -> None:
    """Turn ``integer`` (ops of ``view``) integer with the ranges and layer inputs fitted so far; the interface
    stays float, so the view takes the samples as the float model does."""
    options = replace(options, io="float")
    fitted = {id(tensor_of[key]): (tensor_of[key], observers[key][1]) for key in done}
    params, requantize = assign_params(view.main, integer, fitted, scheme)
    tensors = {key: t for key, (t, _) in fitted.items()}
    inputs = {id(tensor_of[key]): value for key, value in layer_inputs.items()}
    scratch = IntegerReport(options.quantize or "", scheme.kernels, options.io, "", samples)
    rewrite(view, recipe, integer, tensors, params, requantize, options, scratch, inputs)
