"""Full-integer parameters: activation observers, and the calibrated ranges turned into (scale, zero point), shared
where the kernels copy codes and fixed where they require it, checked against what LiteRT can requantize."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Operator, QuantizationParams, Subgraph, Tensor
from engine.format.schema import enum_name
from engine.graph.ops import RULES
from engine.passes.full_integer.plan import is_activation
from engine.quant.activations import ActivationScheme
from engine.quant.observers import Observer, make_observer
from engine.recipe import Recipe

# What a fused activation lets through: the output range is clipped to it.
_FUSED_BOUNDS = {"RELU": (0.0, math.inf), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


# LiteRT turns scale ratios into fixed-point multipliers and aborts the process (no error to catch) where one is
# out of range: an activation scale beyond this marks a range no integer kernel can rescale (1e36-wide ranges from
# weights near 1e38 did), and int8 ADD/SUB need 2 * max(input scales) < 2^20 * output scale.
_MAX_ACTIVATION_SCALE = 1e30


_ADD_SCALE_RATIO = 2.0**19


@dataclass(frozen=True)
class Params:
    scale: float
    zero_point: int


def observe(
    sg: Subgraph, integer: list[Operator], recipe: Recipe, integer_io: bool
) -> dict[int, tuple[Tensor, Observer]]:
    """An observer for every activation an integer op reads or writes (and the graph's I/O for an integer
    interface), of the kind the recipe resolves for the tensor and the op that writes it, told the bounds of a
    fused activation's output (``Observer.assume_within``)."""
    producers = sg.producers()
    consumers = sg.consumers()
    watched: dict[int, Tensor] = {}
    for op in integer:
        for t in (*op.inputs, *op.outputs):
            if is_activation(t):
                watched[id(t)] = t
    if integer_io:
        watched.update({id(t): t for t in (*sg.inputs, *sg.outputs) if is_activation(t)})
    bounds = _fused_bounds(integer)
    observers = {}
    for key, t in watched.items():
        writer = producers.get(key) or next(iter(consumers.get(key, [])), None)
        spec = recipe.resolve(writer.name if writer else "", t.name or "").observer
        observers[key] = (t, make_observer(spec))
        if key in bounds:
            observers[key][1].assume_within(*bounds[key])
    return observers


# ------------------------------------------------------------------------------------------------ parameters


def activation_params(lo: float, hi: float, scheme: ActivationScheme) -> Params:
    """The scheme's scale and zero point for the range [lo, hi]."""
    return Params(*scheme.params(lo, hi))


class _Groups:
    """Union-find over tensors that must share one (scale, zero point); a group may carry fixed parameters."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.fixed: dict[int, Params] = {}

    def find(self, key: int) -> int:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: int, b: int) -> bool:
        """Join two groups; False (and nothing joined) when both have different fixed parameters."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        fa, fb = self.fixed.get(ra), self.fixed.get(rb)
        if fa is not None and fb is not None and fa != fb:
            return False
        self.parent[rb] = ra
        if fa is None and fb is not None:
            self.fixed[ra] = fb
        return True

    def fix(self, key: int, params: Params) -> bool:
        root = self.find(key)
        if root in self.fixed and self.fixed[root] != params:
            return False
        self.fixed[root] = params
        return True


def assign_params(
    sg: Subgraph, integer: list[Operator], observers: dict[int, tuple[Tensor, Observer]], scheme: ActivationScheme
) -> tuple[dict[int, Params], set[tuple[int, int]]]:
    """Parameters of every observed tensor, and the (op, input) pairs that need a requantizing QUANTIZE because
    two fixed requirements meet (e.g. a SOFTMAX output concatenated with a LOGISTIC output)."""
    groups = _Groups()
    requantize: set[tuple[int, int]] = set()
    for key in observers:
        groups.find(key)
    for op in integer:
        rule = RULES[op.name]
        out = op.outputs[0]
        assert out is not None
        fixed = rule.fixed_params(scheme.kernels)
        if fixed is not None:
            groups.fix(id(out), Params(*fixed))
        if rule.scales != "same":
            continue
        for t in op.outputs[1:]:
            if t is not None:
                groups.union(id(out), id(t))
        for i, t in enumerate(op.inputs):
            if is_activation(t) and not groups.union(id(out), id(t)):
                requantize.add((id(op), i))
    bounds = _fused_bounds(integer)
    ranges: dict[int, tuple[float, float]] = {}
    for key, (_, obs) in observers.items():
        lo, hi = obs.range(scheme.bits, scheme.symmetric)
        lo, hi = lo * scheme.headroom, hi * scheme.headroom
        floor, ceiling = bounds.get(key, (-math.inf, math.inf))
        lo, hi = max(lo, floor), min(hi, ceiling)
        root = groups.find(key)
        old = ranges.get(root, (math.inf, -math.inf))
        ranges[root] = (min(old[0], lo), max(old[1], hi))
    params = {}
    for key in observers:
        root = groups.find(key)
        params[key] = groups.fixed.get(root) or activation_params(*ranges[root], scheme)
    return params, requantize


def check_multipliers(integer: list[Operator], params: dict[int, Params]) -> None:
    """Refuse, naming the op, parameters whose rescaling LiteRT cannot express (it would abort when it loads)."""
    for op in integer:
        scales = {t.name: params[id(t)].scale for t in (*op.inputs, *op.outputs) if t is not None and id(t) in params}
        for name, scale in scales.items():
            if not 0 < scale <= _MAX_ACTIVATION_SCALE:
                raise EngineError(f"{op.name} tensor {name!r}: calibrated range too wide for integer kernels")
        out = op.outputs[0]
        if op.name in ("ADD", "SUB") and out is not None and id(out) in params:
            ins = [params[id(t)].scale for t in op.inputs if t is not None and id(t) in params]
            if ins and max(ins) > _ADD_SCALE_RATIO * params[id(out)].scale:
                raise EngineError(
                    f"{op.name} {out.name!r}: input ranges over 2^19 times its output's, which the int8 kernel "
                    f"cannot rescale"
                )


def _fused_bounds(integer: list[Operator]) -> dict[int, tuple[float, float]]:
    """The value range a fused activation lets through, for each integer op output that has one."""
    bounds = {}
    for op in integer:
        options = op.builtin_options.fields if op.builtin_options is not None else {}
        fused = options.get("fused_activation_function")
        if fused:
            name = enum_name("ActivationFunctionType", int(fused))
            if name in _FUSED_BOUNDS and op.outputs[0] is not None:
                bounds[id(op.outputs[0])] = _FUSED_BOUNDS[name]
    return bounds


# ------------------------------------------------------------------------------------------------- rewrite


def to_quantization(params: Params) -> QuantizationParams:
    return QuantizationParams(
        scale=np.array([params.scale], np.float32), zero_point=np.array([params.zero_point], np.int64)
    )
