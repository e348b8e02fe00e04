"""Full-integer planning: which ops get integer kernels (from the ops table), which stay float and why, and
what LiteRT would crash on, refused before the model is handed to it."""

from __future__ import annotations

from engine.errors import EngineError
from engine.format.ir import TENSOR_TYPES, Model, Operator, Tensor
from engine.graph.ops import I8, INTEGER_KERNELS, RULES, OpRule
from engine.graph.weights import check_weighted_ops
from engine.quant import kernels
from engine.quant.activations import ActivationScheme
from engine.recipe import Recipe, TensorOptions
from engine.registry import ACTIVATION_SCHEMES

# ------------------------------------------------------------------------------------------------ planning

_FLOAT32 = TENSOR_TYPES["FLOAT32"]


def is_activation(t: Tensor | None) -> bool:
    """A float tensor computed at run time (as opposed to a constant, or an integer index/shape tensor)."""
    return t is not None and t.type == _FLOAT32 and not t.is_constant


def multiplies_weight(rule: OpRule) -> bool:
    """Ops that multiply-accumulate their weight (it has a reduction axis): it is quantized symmetrically."""
    return rule.weight_input is not None and rule.weight_input_axis is not None


def scheme_of(options: TensorOptions) -> ActivationScheme:
    """The activation scheme of the recipe's full-integer mode, checked against the kernel family it names (a
    plugin's scheme must fit LiteRT's kernels, or the model would fail to load)."""
    mode = options.quantize or ""
    scheme = ACTIVATION_SCHEMES.get(mode)
    if scheme.kernels not in INTEGER_KERNELS:
        raise EngineError(
            f"{mode}: no integer kernel family {scheme.kernels!r} (LiteRT's: {', '.join(INTEGER_KERNELS)})"
        )
    tensor_type, zero_point_free = INTEGER_KERNELS[scheme.kernels]
    if scheme.tensor_type != tensor_type:
        raise EngineError(f"{mode}: {scheme.kernels} kernels compute in {tensor_type}, not {scheme.tensor_type}")
    if zero_point_free and not scheme.symmetric:
        raise EngineError(f"{mode}: {scheme.kernels} kernels need symmetric activations (zero point 0)")
    return scheme


def _float_reason(op: Operator, rule: OpRule | None, family: str, recipe: Recipe, cpu: bool) -> str | None:
    """Why ``op`` cannot run an integer kernel of the ``family`` (None: it can); ``cpu``: a float-interface
    model, not strict."""
    if rule is None or rule.integer_version(family) is None:
        return f"no {family} kernel in LiteRT"
    if family == I8 and not rule.xnnpack_integer and cpu:
        return "faster float on CPU: XNNPACK has no int8 kernel for it (--io int8|uint8 or --strict: integer)"
    name = next((t.name for t in op.outputs if t is not None), None) or ""
    if recipe.excludes(name) or recipe.resolve(op.name, name).quantize is None:
        return "left float by the recipe"
    if not op.outputs or any(t is None or t.type != _FLOAT32 for t in op.outputs):
        return "an output is not float32"
    for i, t in enumerate(op.inputs):
        if t is None or t.type == _FLOAT32:
            continue
        if t.type_name not in ("INT32", "INT64") or i in (rule.weight_input, rule.bias_input):
            return f"input {i} is {t.type_name}"
    if multiplies_weight(rule):
        weight = op.optional_input(rule.weight_input)
        computed = rule.integer_computed_weight and is_activation(weight)
        if weight is None or not (weight.is_constant or computed):
            return "its weight is computed, not a constant"
        if computed and family == I8 and cpu:
            return (
                "faster float on CPU: XNNPACK takes an int8 product of two activations only with a zero-point-0 "
                "right-hand side (--io int8|uint8 or --strict: integer)"
            )
        bias = op.optional_input(rule.bias_input)
        if bias is not None and not bias.is_constant:
            return "its bias is computed, not a constant"
    if not any(is_activation(t) for t in op.inputs):
        return "no computed float input"
    return None


def plan_ops(model: Model, recipe: Recipe, options: TensorOptions) -> tuple[list[Operator], list[dict[str, str]]]:
    """The main subgraph's ops that get an integer kernel, and every op left float with the reason, for the
    recipe's global ``options`` (parsed once by the caller)."""
    family = scheme_of(options).kernels
    cpu = options.io == "float" and not options.strict
    integer, left = [], []
    for index, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            if op.name in ("QUANTIZE", "DEQUANTIZE") and index == 0:
                reason = "conversion op of the input model"
            elif index > 0:
                reason = f"in subgraph {index} (control flow bodies stay float)"
            else:
                reason = _float_reason(op, RULES.get(op.name), family, recipe, cpu)
            if reason is None:
                integer.append(op)
            else:
                out = next((t.name for t in op.outputs if t is not None), None) or ""
                left.append({"op": op.name, "output": out, "reason": reason})
    return integer, left


def check_quantizable(model: Model, integer: list[Operator]) -> None:
    """Before the model runs in LiteRT: refuse, naming the op or tensor, what the interpreter could crash on
    (``check_weighted_ops``) and constants of integer ops the quantization kernels refuse (NaN, infinity,
    beyond the range whose dequantized values stay finite), rather than fail after calibration."""
    check_weighted_ops(model)
    for op in integer:
        for t in op.inputs:
            if t is not None and t.type == _FLOAT32 and t.is_constant:
                try:
                    kernels.check_weights(t.data)
                except EngineError as exc:
                    raise EngineError(f"{op.name} constant {t.name!r}: {exc}") from None
