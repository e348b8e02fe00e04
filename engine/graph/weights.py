"""Find the learned constants of a model and decode them to float, however the file stores them.

A weight reaches its op in one of a few shapes: a plain float constant, a float16 constant behind DEQUANTIZE,
a sparse constant behind DENSIFY (optionally followed by DEQUANTIZE), or an integer constant that is already
quantized.  ``find_weights`` walks every subgraph and returns one ``Weight`` per float tensor the weighted ops
read, with the chain of ops that decode it, so a pass can replace the whole chain with its own encoding and
every reader (weighted op or not) keeps seeing the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Model, Operator, Subgraph, Tensor
from engine.format.sparse import DENSE, SPARSE_CSR, constant_bytes, index_bytes
from engine.graph.ops import RULES

_FLOAT_TYPES = ("FLOAT32", "FLOAT16")
_DECODERS = ("DEQUANTIZE", "DENSIFY")


@dataclass(eq=False)
class Weight:
    """A learned constant as its readers see it.

    ``source`` is the constant stored in the file; ``value`` the float tensor the ops read (``source`` itself
    when no op decodes it); ``chain`` the DENSIFY/DEQUANTIZE ops in between, in execution order; ``uses`` every
    (operator, input index) that reads ``value``; ``op_name``, ``channel_axis`` and ``input_axis`` (the reduction
    axis, where the op has one) come from the first weighted use.
    """

    subgraph: Subgraph
    subgraph_index: int
    source: Tensor
    value: Tensor
    chain: list[Operator]
    uses: list[tuple[Operator, int]]
    op_name: str
    channel_axis: int | None
    input_axis: int | None
    shared_source: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.value.name or self.source.name or "<unnamed>"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape or self.source.shape or ())

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def stored_type(self) -> str:
        return self.source.type_name

    @property
    def is_float(self) -> bool:
        return self.stored_type in _FLOAT_TYPES and (self.source.quantization is None or not _has_scale(self.source))

    @property
    def index_bytes(self) -> int:
        """Bytes of the sparse index vectors (0 for a dense weight): they are part of what the weight costs."""
        return index_bytes(self.source.sparsity) if self.source.sparsity is not None else 0

    @property
    def stored_bytes(self) -> int:
        """What the weight takes in the file: its buffer, plus the index vectors when it is sparse."""
        return constant_bytes(self.source)

    def decode(self) -> np.ndarray:
        """The dense float32 values the ops compute with."""
        if not self.is_float:
            raise EngineError(f"weight {self.name!r} is stored as {self.stored_type}, not float")
        data = self.source.data
        assert data is not None
        if self.source.sparsity is not None:
            data = densify(data, self.shape, self.source)
        return np.asarray(data, dtype=np.float32).reshape(self.shape)

    def weighted_uses(self) -> list[tuple[Operator, int]]:
        """The uses where ``value`` is the op's weight input (as opposed to, say, an ADD operand)."""
        return [(op, i) for op, i in self.uses if op.name in RULES and RULES[op.name].weight_input == i]


def check_finite(name: str | None, values: np.ndarray, action: str) -> None:
    """Refuse a constant holding NaN or infinity, naming it: no scale or shared value represents them."""
    if values.size and not (np.isfinite(values.min()) and np.isfinite(values.max())):  # NaN wins min and max
        raise EngineError(f"tensor {name!r} holds NaN or infinity: it cannot be {action}")


def check_weighted_ops(model: Model) -> None:
    """Refuse, naming the op, a weighted op (per the op table) that LiteRT could crash on rather than refuse: a
    missing weight or other required input (the default interpreter dereferences it), a weight with too few axes
    for the op's channel and input axes, a missing bias where the kernel needs one (DEPTHWISE_CONV_2D with two
    inputs crashes both runtimes), or a bias whose size is not the weight's channel count (XNNPACK runs it, the
    builtin kernels refuse it, and integer biases could not be scaled)."""
    for index, sg in enumerate(model.subgraphs):
        for number, op in enumerate(sg.operators):
            rule = RULES.get(op.name)
            if rule is None or rule.weight_input is None:
                continue
            out = next((t.name for t in op.outputs if t is not None), None)
            where = f"subgraph {index} operator {number} ({op.name}, output {out!r})"
            named = max(rule.weight_input, rule.bias_input or 0) + 1
            missing = [
                i for i in range(named) if op.optional_input(i) is None and (i != rule.bias_input or rule.bias_required)
            ]
            if missing:
                role = {rule.weight_input: "weight", rule.bias_input: "bias"}.get(missing[0], "required")
                raise EngineError(f"{where}: its {role} input {missing[0]} is missing")
            weight, bias = op.optional_input(rule.weight_input), op.optional_input(rule.bias_input)
            assert weight is not None
            axes = [a for a in (rule.weight_channel_axis, rule.weight_input_axis) if a is not None]
            rank = max((a + 1 if a >= 0 else -a for a in axes), default=0)
            if weight.shape is not None and len(weight.shape) < rank:
                raise EngineError(f"{where}: weight {weight.name!r} has shape {weight.shape}; the op needs {rank} axes")
            axis = channel_axis_of(rule.channel_axis(op.builtin_options), weight)
            if bias is not None and bias.shape is not None and weight.shape and axis is not None:
                channels = weight.shape[axis]
                if int(np.prod(bias.shape, dtype=np.int64)) != channels:
                    raise EngineError(
                        f"{where}: bias {bias.name!r} of shape {bias.shape} does not hold one value for each of "
                        f"the weight's {channels} output channels"
                    )


def _has_scale(t: Tensor) -> bool:
    q = t.quantization
    return q is not None and ((q.scale is not None and q.scale.size > 0) or q.details is not None)


def trace_constant(t: Tensor, producers: dict[int, Operator]) -> tuple[Tensor, list[Operator]] | None:
    """The stored constant behind ``t`` and the decoding ops between them, or None if ``t`` is computed."""
    chain: list[Operator] = []
    while not t.is_constant:
        op = producers.get(id(t))
        if op is None or op.name not in _DECODERS or not op.inputs or op.inputs[0] is None:
            return None
        chain.insert(0, op)
        t = op.inputs[0]
    return t, chain


def find_weights(model: Model) -> list[Weight]:
    """Every weight (per the op rules table) of every subgraph, once per float tensor the ops read."""
    found: list[Weight] = []
    for index, sg in enumerate(model.subgraphs):
        producers = sg.producers()
        consumers = sg.consumers()
        seen: set[int] = set()
        for op in sg.operators:
            rule = RULES.get(op.name)
            if rule is None or rule.weight_input is None or rule.weight_input >= len(op.inputs):
                continue
            value = op.inputs[rule.weight_input]
            if value is None or id(value) in seen:
                continue
            traced = trace_constant(value, producers)
            if traced is None:
                continue
            seen.add(id(value))
            source, chain = traced
            uses = [(user, i) for user in consumers.get(id(value), []) for i, t in enumerate(user.inputs) if t is value]
            found.append(
                Weight(
                    sg,
                    index,
                    source,
                    value,
                    chain,
                    uses,
                    op.name,
                    channel_axis_of(rule.channel_axis(op.builtin_options), value),
                    channel_axis_of(rule.input_axis(op.builtin_options), value),
                )
            )
    _mark_shared(found)
    return found


def channel_axis_of(axis: int | None, t: Tensor) -> int | None:
    """A rule's (channel or input) axis made non-negative for tensor ``t`` (None where ``t`` has no axes)."""
    if axis is None or t.shape is None:
        return axis
    return axis % len(t.shape) if t.shape else None


def _mark_shared(weights: list[Weight]) -> None:
    """Flag weights whose stored buffer another weight also uses, so passes encode it consistently."""
    by_buffer: dict[int, list[Weight]] = {}
    for w in weights:
        by_buffer.setdefault(id(w.source.buffer), []).append(w)
    for group in by_buffer.values():
        if len(group) > 1:
            for w in group:
                w.shared_source = True


def densify(values: np.ndarray, shape: tuple[int, ...], tensor: Tensor) -> np.ndarray:
    """The dense array a sparse constant stands for.  ``shape`` (its DENSIFY output's) must be the constant's own,
    which the reader has bounded by the file's size: a corrupt output shape must not allocate gigabytes."""
    if tensor.shape is not None and tuple(shape) != tuple(tensor.shape):
        raise EngineError(
            f"sparse tensor {tensor.name!r} has shape {tuple(tensor.shape)} but is decoded to shape {tuple(shape)}"
        )
    out = np.zeros(shape, dtype=values.dtype)
    out.flat[sparse_positions(tensor, shape, values.size)] = values
    return out


def stored_form(source: Tensor, dense: np.ndarray) -> np.ndarray | None:
    """``dense`` (the value ``source`` decodes to) in ``source``'s own encoding: its stored positions when it is
    sparse, its element type; None when that encoding cannot hold it exactly (a nonzero where the sparse
    structure has none, a value its type rounds, or an integer type whose scales would have to change)."""
    stored = np.asarray(source.data)
    if stored.dtype.kind != "f":
        return None
    values = dense.reshape(-1)
    if source.sparsity is not None:
        picked = values[sparse_positions(source, tuple(dense.shape), stored.size)]
        if np.count_nonzero(picked) != np.count_nonzero(values):
            return None
        values = picked
    array = values.reshape(stored.shape).astype(stored.dtype)
    return array if np.array_equal(array.astype(np.float64), values.reshape(stored.shape)) else None


def sparse_positions(tensor: Tensor, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Flat (C-order) positions in the dense ``shape`` of a sparse constant's ``count`` stored values.

    TFLite's SparsityParameters list the dimensions in traversal order, blocked dimensions split into an outer
    and a block dimension.  This walks the levels with whole-array steps: a dense level expands every node
    into ``dense_size`` children, a CSR level into the children its segments list; the leaves, in order, are
    the stored values.  Their coordinates in the traversal space are then mapped back to the tensor's shape.
    """
    sparsity = tensor.sparsity
    assert sparsity is not None
    where = f"sparse tensor {tensor.name!r}"
    dims = sparsity.dim_metadata or []
    order = np.asarray(sparsity.traversal_order if sparsity.traversal_order is not None else [], np.int64)
    block_map = np.asarray(sparsity.block_map if sparsity.block_map is not None else [], np.int64)
    rank = len(shape)
    if len(order) != len(dims) or len(order) != rank + len(block_map) or sorted(order) != list(range(len(order))):
        raise EngineError(f"{where}: traversal order {order.tolist()} does not fit shape {shape}")
    nodes = np.zeros(1, np.int64)
    coords: list[np.ndarray] = []
    for level, dim in enumerate(dims):
        if dim.format == DENSE:
            size = int(dim.dense_size)
            children = np.arange(size, dtype=np.int64)
            coords = [np.repeat(c, size) for c in coords]
            coords.append(np.tile(children, len(nodes)))
            nodes = (nodes[:, None] * size + children).ravel()
        elif dim.format == SPARSE_CSR:
            if dim.array_segments is None or dim.array_indices is None:
                raise EngineError(f"{where}: level {level} is CSR but lacks segments or indices")
            segments = np.asarray(dim.array_segments.fields["values"], np.int64)
            indices = np.asarray(dim.array_indices.fields["values"], np.int64)
            if nodes.size and (nodes.max() + 1 >= segments.size):
                raise EngineError(f"{where}: level {level} has {segments.size} segments for {nodes.max() + 2} nodes")
            starts, stops = segments[nodes], segments[nodes + 1]
            counts = stops - starts
            if np.any(counts < 0) or (stops.size and stops.max() > indices.size):
                raise EngineError(f"{where}: level {level} segments are not increasing or exceed the indices")
            children = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            coords = [np.repeat(c, counts) for c in coords]
            coords.append(indices[children])
            nodes = children
        else:
            raise EngineError(f"{where}: level {level} has unknown format {dim.format}")
    if nodes.size != count:
        raise EngineError(f"{where}: metadata describes {nodes.size} values, the buffer holds {count}")
    dense_coords = [np.zeros(count, np.int64) for _ in range(rank)]
    sizes = [int(d.dense_size) for d in dims]
    for level, dim_index in enumerate(order):
        if dim_index < rank:
            block = next((j for j, b in enumerate(block_map) if b == dim_index), None)
            scale = 1 if block is None else sizes[int(np.where(order == rank + block)[0][0])]
            dense_coords[dim_index] += coords[level] * scale
        else:
            dense_coords[int(block_map[dim_index - rank])] += coords[level]
    for d, c in enumerate(dense_coords):
        if c.size and (c.min() < 0 or c.max() >= shape[d]):
            raise EngineError(f"{where}: an index lies outside shape {shape}")
    return np.ravel_multi_index(tuple(dense_coords), shape) if rank else np.zeros(count, np.int64)
