"""Channel pruning that takes the pruned filters out of the graph, so the model computes less.

A filter pruned whole (``prune_pattern`` channel) from an op that contracts channels (``engine.graph.ops`` RULES'
``channel_flow``: CONV_2D, FULLY_CONNECTED) leaves one output channel that no longer depends on the input.  Its
bias still flows on, so zeroing the filter alone does not cut the channel; taking it out does: the filter and
its bias entry go, the output's last axis shrinks, and so does every activation downstream through the ops that
keep channels apart (activations, pools, PAD, depthwise convolutions with their filter and bias channels, PRELU
with its alphas), until the ops that contract the channel, whose weights lose the matching input channels.  An
ADD goes on only when every input loses the same channels (a residual whose two branches were pruned alike).

Where the graph does not allow it (a tensor on the way is a subgraph output, or an op reads it that the table
gives no ``channel_flow``, or an encoded or shared constant would have to change) the filter is only zeroed, as
before, and the report says why.  With ``prune_channels`` "zero" the same plan zeroes instead of removing: the
filters and the readers' input channels, so that model computes what the removed one does, at the full size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.format.ir import Model, Operator, Subgraph, Tensor
from engine.graph.ops import RULES, rule
from engine.graph.weights import Weight, channel_axis_of, find_weights
from engine.quant.pruning import parse_pattern
from engine.recipe import TensorOptions

# (axis, kept indices, whether to slice the rest out (True) or zero it (False)), on a weight's values.
Edit = tuple[int, np.ndarray, bool]
# A weight whose axis loses the pruned channels: a reader's input axis, or a per-channel constant's last axis.
EditTarget = tuple[Weight, int]
_STARTERS = ", ".join(sorted(name for name, r in RULES.items() if r.channel_flow == "contract"))


@dataclass
class ChannelEdits:
    """What the pass must still do to the weights (by ``id(weight.value)``), and what to report per pruned one."""

    weights: dict[int, tuple[Weight, list[Edit]]] = field(default_factory=dict)
    removed: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)

    def add(self, weight: Weight, edit: Edit) -> None:
        self.weights.setdefault(id(weight.value), (weight, []))[1].append(edit)

    def apply(self, weight: Weight, values: np.ndarray) -> np.ndarray:
        """``values`` (the weight's, or its mask) with every edit planned for the weight done."""
        for axis, keep, remove in self.weights.get(id(weight.value), (weight, []))[1]:
            if remove:
                values = np.take(values, keep, axis=axis)
            else:
                dropped = np.setdiff1d(np.arange(values.shape[axis]), keep)
                values = values.copy()
                values[(slice(None),) * axis + (dropped,)] = 0
        return values


@dataclass
class _Plan:
    """One pruned filter bank's removal: what shrinks, and the first reason it cannot (None: it can)."""

    weight: Weight
    keep: np.ndarray
    mode: str
    tensors: dict[int, Tensor] = field(default_factory=dict)
    constants: dict[int, Tensor] = field(default_factory=dict)
    weights: list[EditTarget] = field(default_factory=list)
    merges: list[Operator] = field(default_factory=list)
    reason: str | None = None


class _Graph:
    """The lookups a walk needs for one subgraph, computed once."""

    def __init__(self, sg: Subgraph, weights: dict[int, Weight]) -> None:
        self.consumers = sg.consumers()
        self.outputs = {id(t) for t in sg.outputs}
        self.weights = weights


def plan_channels(
    model: Model, layouts: list[tuple[Weight, TensorOptions]], masks: dict[int, np.ndarray]
) -> ChannelEdits:
    """Plan the removal of every channel-pruned filter bank, shrink the activations and plain constants of the
    ones the graph allows, and return the weight edits left for the pass (which installs the weights)."""
    edits = ChannelEdits()
    by_value = {id(w.value): w for w in find_weights(model)}
    by_value.update({id(w.value): w for w, _ in layouts})
    graphs: dict[int, _Graph] = {}
    plans: list[_Plan] = []
    for weight, options in layouts:
        if parse_pattern(options.prune_pattern).kind != "channel":
            continue
        assert weight.channel_axis is not None
        mask = np.moveaxis(masks[id(weight)], weight.channel_axis, 0)
        keep = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        if keep.size == mask.shape[0]:
            continue
        if id(weight.subgraph) not in graphs:
            graphs[id(weight.subgraph)] = _Graph(weight.subgraph, by_value)
        graph = graphs[id(weight.subgraph)]
        plan = _Plan(weight, keep, options.prune_channels)
        plan.reason = _walk(plan, graph)
        plans.append(plan)
    for group in _groups(plans):
        reason = _group_reason(group)
        for plan in group:
            if reason is not None:
                edits.reasons[id(plan.weight.value)] = f"channels zeroed, not removed: {plan.reason or reason}"
            elif plan.mode == "remove":
                edits.removed[id(plan.weight.value)] = plan.weight.shape[plan.weight.channel_axis or 0] - plan.keep.size
        if reason is None:
            _commit(group, edits)
    return edits


def _walk(plan: _Plan, graph: _Graph) -> str | None:
    """Follow the pruned filters' channels from their op to the ops that contract them; why not, if it fails."""
    weight, n = plan.weight, plan.weight.shape[plan.weight.channel_axis or 0]
    if len(weight.uses) != 1 or weight.shared_source:
        return "the weight is read by more than one op"
    op, _ = weight.uses[0]
    op_rule = rule(op.name)
    if op_rule.channel_flow != "contract":
        return f"{op.name} filters are only zeroed (removal starts at {_STARTERS})"
    if plan.keep.size == 0:
        return "every filter is pruned"
    if op_rule.bias_input is not None and (reason := _constant(plan, graph, op, op_rule.bias_input, n)):
        return reason
    frontier = [op.outputs[0]]
    while frontier:
        t = frontier.pop()
        if t is None or id(t) in plan.tensors:
            continue
        if id(t) in graph.outputs:
            return f"{t.name} is a subgraph output"
        if t.type_name != "FLOAT32" or not t.shape or t.shape[-1] != n:
            return f"{t.name} is not a float32 tensor with {n} channels last"
        plan.tensors[id(t)] = t
        for user in graph.consumers.get(id(t), []):
            reason = _follow(plan, graph, user, t, n)
            if reason is not None:
                return reason
            if rule(user.name).channel_flow != "contract":
                frontier.append(user.outputs[0])
    return None


def keeps_channels(user: Operator, t: Tensor) -> str | None:
    """Why ``user`` reading ``t`` does not keep the channels on ``t``'s last axis apart (None: it does, as its
    ``channel_flow`` says): the table gives it no flow, it reads ``t`` other than as a ``channel_inputs``, an
    option mixes channels (``channel_options``), or it pads the channel axis."""
    user_rule = RULES.get(user.name)
    if (
        user_rule is None
        or user_rule.channel_flow is None
        or any(x is t and i not in user_rule.channel_inputs for i, x in enumerate(user.inputs))
    ):
        return f"{user.name} reads {t.name}"
    fields = user.builtin_options.fields if user.builtin_options is not None else {}
    for option, value in user_rule.channel_options:
        if fields.get(option) != value:
            return f"{user.name} reading {t.name} has {option} {fields.get(option)}, not {value}"
    if user_rule.channel_paddings_input is not None:
        paddings = user.optional_input(user_rule.channel_paddings_input)
        data = paddings.data if paddings is not None else None
        if data is None or np.asarray(data)[-1].any():
            return f"{user.name} after {t.name} pads the channel axis (or not by a constant)"
    return None


def _follow(plan: _Plan, graph: _Graph, user: Operator, t: Tensor, n: int) -> str | None:
    """Record what ``user`` reading ``t`` needs changed; why it cannot, if it cannot."""
    if (reason := keeps_channels(user, t)) is not None:
        return reason
    user_rule = rule(user.name)
    flow = user_rule.channel_flow
    if flow == "contract":
        value = user.optional_input(user_rule.weight_input or 0)
        weight = graph.weights.get(id(value)) if value is not None else None
        if weight is None or not weight.is_float or len(weight.uses) != 1 or weight.shared_source:
            return f"{user.name} reading {t.name} has no float weight of its own"
        axis = channel_axis_of(user_rule.input_axis(user.builtin_options), weight.value)
        if axis is None or weight.shape[axis] != n:
            return f"{user.name} reading {t.name} does not sum its {n} channels along one weight axis"
        plan.weights.append((weight, axis))
        return None
    if flow == "merge":
        if any(
            x is None or x.shape != user.outputs[0].shape
            for i, x in enumerate(user.inputs)
            if i in user_rule.channel_inputs
        ):
            return f"{user.name} reading {t.name} broadcasts"
        plan.merges.append(user)
    for i in user_rule.channel_constants:
        if reason := _constant(plan, graph, user, i, n):
            return reason
    return None


def _constant(plan: _Plan, graph: _Graph, op: Operator, index: int, n: int) -> str | None:
    """Record ``op``'s per-channel constant input ``index`` (absent, omitted or broadcast: nothing to do)."""
    c = op.optional_input(index)
    if c is None or (c.shape and c.shape[-1] == 1):
        return None
    weight = graph.weights.get(id(c))
    if weight is not None:
        ok = weight.is_float and len(weight.uses) == 1 and not weight.shared_source
    else:
        q = c.quantization
        ok = (
            c.is_constant and c.sparsity is None and c.dtype is not None and (q is None or q.scale is None)
            and len(graph.consumers.get(id(c), [])) == 1 and id(c) not in graph.outputs
        )  # fmt: skip
    if not ok or not c.shape or c.shape[-1] != n:
        return f"{op.name}'s input {c.name} is not a float constant of its own with {n} channels last"
    if weight is not None:
        plan.weights.append((weight, len(weight.shape) - 1))
    else:
        plan.constants[id(c)] = c
    return None


def _groups(plans: list[_Plan]) -> list[list[_Plan]]:
    """Plans that share a tensor (their channels meet at an ADD) stand or fall together."""
    parent = list(range(len(plans)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, plan in enumerate(plans):
        for key in plan.tensors:
            if key in owner:
                parent[root(i)] = root(owner[key])
            owner[key] = i
    groups: dict[int, list[_Plan]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(root(i), []).append(plan)
    return list(groups.values())


def _group_reason(group: list[_Plan]) -> str | None:
    """Why a group of plans cannot go ahead: a member's walk failed, or an ADD's inputs lose different channels."""
    failed = next((p.reason for p in group if p.reason), None)
    if failed is not None:
        return "another branch at an ADD cannot be removed"
    first = group[0]
    if any(not np.array_equal(p.keep, first.keep) or p.mode != first.mode for p in group):
        return "the inputs of an ADD lose different channels"
    tensors = {key for p in group for key in p.tensors}
    for merge in (m for p in group for m in p.merges):
        if any(id(x) not in tensors for i, x in enumerate(merge.inputs) if i in rule(merge.name).channel_inputs):
            return f"{merge.name} {merge.outputs[0].name} adds a branch whose channels are not pruned alike"
    return None


def _commit(group: list[_Plan], edits: ChannelEdits) -> None:
    """Shrink the group's activations and plain constants; leave the weight edits to the pass.  Zeroing only
    touches the readers' input channels (the filters are zeroed by their masks already)."""
    keep, remove = group[0].keep, group[0].mode == "remove"
    for plan in group:
        if remove:
            edits.add(plan.weight, (plan.weight.channel_axis or 0, keep, True))
    for weight, axis in {(id(w.value), a): (w, a) for p in group for w, a in p.weights}.values():
        if remove or rule(weight.uses[0][0].name).channel_flow == "contract":
            edits.add(weight, (axis, keep, remove))
    if not remove:
        return
    for t in {key: t for p in group for key, t in p.tensors.items()}.values():
        _shrink(t, keep.size)
    for c in {key: c for p in group for key, c in p.constants.items()}.values():
        signature = c.shape_signature
        c.data = np.take(c.data, keep, axis=-1)
        c.shape_signature = None if signature is None else (*signature[:-1], keep.size)


def _shrink(t: Tensor, channels: int) -> None:
    """Give an activation ``channels`` on its last axis, in its shape and (where static) shape signature."""
    assert t.shape is not None
    t.shape = (*t.shape[:-1], channels)
    if t.shape_signature:
        t.shape_signature = (*t.shape_signature[:-1], channels)
