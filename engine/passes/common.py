"""What every weight pass shares: choosing the weights a mode applies to, and swapping in their new encoding.

``select`` resolves the recipe for each weight and says which to compress and which to leave (and why);
``install`` is the graph surgery: the new constant replaces the old one and its DEQUANTIZE/DENSIFY chain, the
ops that can read it directly do so, and everything else reads a fresh DEQUANTIZE output that keeps the old
float tensor's name, so every reader (weighted op or not) stays correct.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from engine.format.ir import PACKED_BITS, TENSOR_TYPES, Model, Operator, Subgraph, Tensor
from engine.format.reader import release_pages
from engine.format.sparse import encode_sparse, sparse_bytes, sparse_cannot_save
from engine.graph.ops import DENSIFY_INPUTS, RULES, dequantize_version
from engine.graph.weights import Weight, densify, find_weights
from engine.quant.pruning import parse_pattern
from engine.recipe import DEFAULT_MIN_ELEMENTS, Recipe, TensorOptions
from engine.remembered import digest, remembered
from engine.report import TensorReport

_FLOAT32 = TENSOR_TYPES["FLOAT32"]


def select(
    model: Model, recipe: Recipe, wanted: Callable[[TensorOptions], bool]
) -> tuple[list[tuple[Weight, TensorOptions]], list[TensorReport]]:
    """The float weights whose resolved options a pass ``wanted``, and reports for those of them left alone."""
    chosen: list[tuple[Weight, TensorOptions]] = []
    skipped: list[TensorReport] = []
    weights = find_weights(model)
    floor = None if recipe.sets("min_elements") else small_model_floor(weights)
    for weight in weights:
        if recipe.excludes(weight.name):
            continue
        options = recipe.resolve(weight.op_name, weight.name)
        if not wanted(options):
            continue
        if not weight.is_float:
            continue
        if floor is not None and floor < options.min_elements:
            options = replace(options, min_elements=floor)
        if weight.elements < options.min_elements:
            skipped.append(entry(weight, options, f"fewer than {options.min_elements} elements (min_elements)"))
            continue
        chosen.append((weight, options))
    return chosen, skipped


def small_model_floor(weights: list[Weight]) -> int:
    """The default ``min_elements`` for this model: DEFAULT_MIN_ELEMENTS, unless weights under it hold over 90% of
    the model's float weight elements (a small model, which the default would leave almost as it is); then the
    size of the smallest weight that still has to go for at least half of the elements to be compressed (weights
    already integer count as compressed).

    Small tensors stay float by default because MediaPipe's outputs are sensitive to them and their per-channel
    parameters outweigh what they save (docs/cli.md); selfie_segmentation, 60% small, lost 10 dB of worst-output SQNR
    when its 2-3k-element weights were quantized, while a 64-48-32-10 digits classifier, every weight small, kept
    its accuracy with every weight int8."""
    sizes = sorted((w.elements for w in weights if w.is_float), reverse=True)
    total = sum(w.elements for w in weights)
    if sum(n for n in sizes if n < DEFAULT_MIN_ELEMENTS) <= 0.9 * total:
        return DEFAULT_MIN_ELEMENTS
    compressed = total - sum(sizes)  # already integer
    for n in sizes:
        compressed += n
        if 2 * compressed >= total:
            return n
    return DEFAULT_MIN_ELEMENTS


def entry(weight: Weight, options: TensorOptions | None, reason: str | None = None) -> TensorReport:
    """A report entry for ``weight`` as it is now (``reason`` set: left as it is)."""
    return TensorReport(
        name=weight.name,
        subgraph=weight.subgraph_index,
        shape=weight.shape,
        ops=sorted({op.name for op, _ in weight.uses}),
        action="skipped" if reason else "compressed",
        reason=reason,
        mode=options.quantize if options else None,
        dtype_before=weight.stored_type,
        bytes_before=weight.stored_bytes,
    )


def install(model: Model, weight: Weight, stored: Tensor, direct: list[tuple[Operator, int]]) -> None:
    """Replace ``weight``'s stored constant (and decoding chain) by ``stored``.

    ``direct`` uses read ``stored`` itself (hybrid kernels; every use when ``stored`` is plain dense float32);
    the other uses keep reading ``weight.value``, which becomes the output of DENSIFY (if ``stored`` is sparse)
    and DEQUANTIZE (unless it is float32) ops inserted before its first reader.
    """
    if stored.type == _FLOAT32 and stored.sparsity is None:
        direct = list(weight.uses)
        weight.subgraph.outputs = [stored if t is weight.value else t for t in weight.subgraph.outputs]
    direct_ids = {(id(op), i) for op, i in direct}
    for op, i in direct:
        op.inputs[i] = stored
    decoders = []
    current = stored
    if stored.sparsity is not None:
        dense = Tensor(f"{stored.name}/dense", stored.shape, stored.type, quantization=stored.quantization)
        decoders.append(Operator(model.opcode("DENSIFY"), [stored], [dense]))
        current = dense
    if current.type != _FLOAT32:
        version = dequantize_version(current.type_name, _per_channel(current))
        decoders.append(Operator(model.opcode("DEQUANTIZE", version), [current], [weight.value]))
    elif decoders:  # a float32 sparse constant: DENSIFY alone gives the float tensor
        decoders[-1].outputs = [weight.value]
    remaining = [op for op, i in weight.uses if (id(op), i) not in direct_ids]
    replace_chain(
        weight, decoders, remaining, [stored, *(stored.quantization.tensors() if stored.quantization else ())]
    )


def replace_chain(weight: Weight, decoders: list[Operator], readers: list[Operator], constants: list[Tensor]) -> None:
    """Swap ``weight``'s stored constant and decoding ops for ``decoders`` (the last writes ``weight.value``),
    inserted before the first of ``readers`` (the ops still reading ``weight.value``), and ``constants``.

    The old chain's ops go (unless something else reads their outputs), so do its tensors once unused, and the
    input file's pages behind the old constant are released.  With no reader left, no decoder is inserted.
    """
    sg = weight.subgraph
    value = weight.value
    old = [weight.source, *(t for op in weight.chain for t in op.outputs if t is not value)]
    if weight.source.buffer is not None:
        release_pages(weight.source.buffer.data)
    for op in reversed(weight.chain):
        if op is weight.chain[-1] or not _is_read(sg, op.outputs):
            sg.remove_operator(op)
    if readers or any(t is value for t in sg.outputs):
        value.buffer, value.type, value.quantization, value.sparsity = None, _FLOAT32, None, None
        first = min((sg.operators.index(op) for op in readers), default=len(sg.operators))
        for offset, op in enumerate(decoders):
            sg.insert_operator(first + offset, op)
    else:
        sg.tensors = [t for t in sg.tensors if t is not value]
    for t in constants:
        if t not in sg.tensors:
            sg.tensors.append(t)
    old += float32_biases(sg, [op for op, _ in weight.weighted_uses()])
    drop_unused(sg, old)


def float32_biases(sg: Subgraph, ops: list[Operator]) -> list[Tensor]:
    """Give ``ops`` a float32 bias where they read a constant one through DEQUANTIZE (FLOAT16 in MediaPipe's
    models), and return the stored constants that no longer need to be read.

    XNNPACK, the default interpreter's delegate, takes a weighted op only when its bias type matches the filter
    as it sees it (``engine.graph.ops.XNNPACK_BIAS_TYPES``): once a pass re-encodes a float16 filter, a float16 bias
    makes it refuse the op, which then runs in the builtin kernel (2-3x slower for the whole model), fails to
    prepare (hybrid filters), or reads garbage (filters behind DENSIFY).  A bias is a few bytes per channel."""
    sources = []
    for op in ops:
        bias = op.optional_input(RULES[op.name].bias_input)
        producer = sg.producer_of(bias) if bias is not None and not bias.is_constant else None
        if producer is not None and producer.name == "DEQUANTIZE":
            source = fold_decoder(sg, producer)
            if source is not None:
                sources.append(source)
    return sources


def fold_decoder(sg: Subgraph, op: Operator) -> Tensor | None:
    """Replace ``op``, a DEQUANTIZE or DENSIFY of a constant, by the float32 (DENSIFY: the decoded type) constant
    it computes; returns the stored constant it read, or None when ``op`` is not such a decoder or decodes a form
    numpy cannot read (packed INT4/INT2, blockwise scales, external data).  Exact: both decoders are."""
    if op.name not in ("DEQUANTIZE", "DENSIFY") or not op.inputs or op.inputs[0] is None or not op.outputs:
        return None
    source, output = op.inputs[0], op.outputs[0]
    if output is None or not source.is_constant or source.type in PACKED_BITS or source.external_buffer is not None:
        return None
    value = remembered(lambda: _decoder_key(op.name, source, output), lambda: _decoded(op.name, source, output))
    if value is None:
        return None
    output.data = value
    output.quantization = None if op.name == "DEQUANTIZE" else source.quantization
    sg.remove_operator(op)
    return source


def _decoded(decoder: str, source: Tensor, output: Tensor) -> np.ndarray | None:
    if decoder == "DEQUANTIZE":
        value = _dequantized(source)
        return None if value is None else value.astype(np.float32)
    return _densified(source, output)


def _decoder_key(decoder: str, source: Tensor, output: Tensor) -> tuple:
    """What a decoder's result depends on: its kind, the shapes, the stored type, the quantization's arrays (by
    their hashes), the sparsity and quantization details (by their pickle's hash: rare) and the stored bytes."""
    data, q = source.data, source.quantization
    layout: tuple = (source.type, source.shape, output.shape, data.dtype.str)
    if q is not None:
        arrays = (q.scale, q.zero_point, q.min, q.max)
        layout += (q.quantized_dimension, *(None if a is None else (a.dtype.str, a.shape, digest(a)) for a in arrays))
    if (q is not None and q.details is not None) or source.sparsity is not None:
        rare = (None if q is None else q.details, source.sparsity)
        layout += (hashlib.sha256(pickle.dumps(rare)).digest(),)
    return ("decoded", decoder, layout, digest(data))


def _dequantized(t: Tensor) -> np.ndarray | None:
    """What DEQUANTIZE makes of a dense constant: float16 widened, integers mapped through their scales."""
    if t.sparsity is not None or t.dtype is None:
        return None
    data = np.asarray(t.data)
    if data.dtype.kind == "f":
        return data
    q = t.quantization
    if q is None or q.scale is None or q.scale.size == 0 or q.details is not None:
        return None
    shape = [1] * data.ndim
    if q.scale.size > 1:
        shape[q.quantized_dimension] = -1
    zero = q.zero_point if q.zero_point is not None and q.zero_point.size else np.zeros(1, np.int64)
    return (data.astype(np.float64) - zero.reshape(shape)) * q.scale.astype(np.float64).reshape(shape)


def _densified(source: Tensor, output: Tensor) -> np.ndarray | None:
    if source.sparsity is None or output.shape is None or source.dtype is None:
        return None
    return densify(np.asarray(source.data), tuple(output.shape), source)


def _per_channel(t: Tensor) -> bool:
    q = t.quantization
    return q is not None and q.scale is not None and q.scale.size > 1


def _is_read(sg: Subgraph, tensors: list[Tensor | None]) -> bool:
    ids = {id(t) for t in tensors if t is not None}
    return any(id(t) in ids for op in sg.operators for t in op.inputs if t is not None) or any(
        id(t) in ids for t in sg.outputs
    )


def drop_unused(sg: Subgraph, candidates: list[Tensor]) -> None:
    """Remove ``candidates`` from the tensor list when no op or subgraph input/output uses them any more."""
    used = {id(t) for t in (*sg.inputs, *sg.outputs)}
    for op in sg.operators:  # map(id, ...) per list: loops in C, where op.tensors() is a generator a tensor
        used.update(map(id, op.inputs))
        used.update(map(id, op.outputs))
        used.update(map(id, op.intermediates or ()))
    gone = {id(t) for t in candidates} - used
    sg.tensors = [t for t in sg.tensors if id(t) not in gone]


def float_constant(weight: Weight, values: np.ndarray, options: TensorOptions) -> Tensor:
    """A float weight's new constant: dense, or in TFLite's sparse format (blockwise for block pruning patterns
    DENSIFY decodes) when ``sparse_format`` is ``tflite`` and that takes fewer bytes.  A dense float32 constant
    keeps the weight's name, since the ops read it directly; the others take a suffix, as the float tensor
    their DENSIFY/DEQUANTIZE writes keeps the name."""
    stored = Tensor(weight.name)
    stored.data = values
    if stored.type_name != "FLOAT32":
        stored.name = f"{weight.name}_{stored.type_name.lower()}"
    if options.sparse_format != "tflite" or stored.type_name not in DENSIFY_INPUTS:
        return stored
    pattern = parse_pattern(options.prune_pattern)
    block = (pattern.a, pattern.b) if options.prune is not None and pattern.kind == "block" else None
    if block not in DENSIFY_INPUTS[stored.type_name] or values.ndim != 2:
        block = None
    if sparse_cannot_save(values, block):
        return stored
    packed, sparsity = encode_sparse(values, block)
    if sparse_bytes(packed, sparsity) < values.nbytes:
        stored.data = packed
        stored.name, stored.shape, stored.sparsity = f"{weight.name}_sparse", tuple(values.shape), sparsity
    return stored
