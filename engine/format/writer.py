"""Write the IR back to a .tflite file: assign indices, lay out buffers, encode, and replace the file atomically.

The writer assumes nothing about what a pass changed: tensors an operator uses but the subgraph does not list
are appended, operator codes are added as needed, and buffers are collected from whatever the tensors and
metadata point at (buffer 0 stays the empty sentinel; unreferenced buffers are dropped).  Buffer data are
16-byte aligned.  When the data would push the flatbuffer past 2 GB, buffers and custom options go after
it in the offset/size form.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.format import flatbuf
from engine.format.ir import (
    TENSOR_REF_FIELDS,
    Buffer,
    ExternalBuffer,
    ExternalBufferGroup,
    Model,
    Operator,
    QuantizationParams,
    SparsityParams,
    Subgraph,
    Table,
    Tensor,
    all_tensors,
)
from engine.format.sparse import index_bytes

ALIGNMENT = 16
# Past this the flatbuffer could not address its own data (2 GB, less room for the graph itself).
_FLATBUFFER_LIMIT = 2**31 - 2**24
# Placeholder written for external offsets on the sizing pass; any value > 1 encodes at the same width.
_PLACEHOLDER_OFFSET = 2
# Builder memory reserved beyond the data for the graph itself; only pages written become resident.
_GRAPH_ROOM = 1 << 26


@dataclass
class _Layout:
    """How the writer stores the data: buffer order, and which bytes go after the flatbuffer."""

    buffers: list[Buffer]
    index: dict[int, int]
    data_size: int
    external: bool

    def buffer_index(self, buffer: Buffer | None) -> int:
        return 0 if buffer is None else self.index[id(buffer)]


def _plan(model: Model, share_identical_buffers: bool, external: bool | None) -> _Layout:
    buffers: list[Buffer] = []
    index: dict[int, int] = {}
    by_content: dict[tuple[int, bytes], int] = {}
    variable = {id(t.buffer) for sg in model.subgraphs for t in all_tensors(sg) if t.is_variable}
    for buffer in model.buffers():
        if share_identical_buffers and buffer.data.size and id(buffer) not in variable:
            key = (buffer.data.size, hashlib.blake2b(memoryview(np.ascontiguousarray(buffer.data))).digest())
            if key in by_content:
                index[id(buffer)] = by_content[key]
                continue
            by_content[key] = len(buffers) + 1
        index[id(buffer)] = len(buffers) + 1
        buffers.append(buffer)
    data_size = _data_size(model, buffers)
    return _Layout(buffers, index, data_size, data_size > _FLATBUFFER_LIMIT if external is None else external)


def _data_size(model: Model, buffers: list[Buffer]) -> int:
    custom = sum(
        op.custom_options.size for sg in model.subgraphs for op in sg.operators if op.custom_options is not None
    )
    return sum(b.data.size + ALIGNMENT for b in buffers) + custom


def _index_size(model: Model) -> int:
    """Bytes of the sparse tensors' index vectors, also large vectors in the flatbuffer: reserved with the data,
    so that the builder never grows (growing copies it all into touched memory, 400 MB on a pruned 268 MB MLP)."""
    return sum(
        index_bytes(t.sparsity) + 4 * ALIGNMENT * len(t.sparsity.dim_metadata or [])
        for sg in model.subgraphs
        for t in sg.tensors
        if t.sparsity is not None
    )


def _table(value: Table | None) -> tuple[str, dict[str, Any]] | None:
    return None if value is None else (value.type, value.fields)


def _quantization(q: QuantizationParams | None, index: dict[int, int]) -> dict[str, Any] | None:
    if q is None:
        return None
    details = _table(q.details)
    if details is not None and details[0] in TENSOR_REF_FIELDS:
        fields = dict(details[1])
        for name in TENSOR_REF_FIELDS[details[0]]:
            fields[name] = -1 if fields[name] is None else index[id(fields[name])]
        details = (details[0], fields)
    return {
        "scale": q.scale,
        "zero_point": q.zero_point,
        "min": q.min,
        "max": q.max,
        "quantized_dimension": q.quantized_dimension,
        "details": details,
    }


def _sparsity(s: SparsityParams | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "traversal_order": s.traversal_order,
        "block_map": s.block_map,
        "dim_metadata": None
        if s.dim_metadata is None
        else [
            {
                "format": d.format,
                "dense_size": d.dense_size,
                "array_segments": _table(d.array_segments),
                "array_indices": _table(d.array_indices),
            }
            for d in s.dim_metadata
        ],
    }


class _TreeBuilder:
    """The dict form of a model, with indices; external data placed from ``offsets`` when given."""

    def __init__(self, model: Model, layout: _Layout) -> None:
        self.model = model
        self.layout = layout
        self.codes = list(model.operator_codes)
        self.code_index = {id(c): i for i, c in enumerate(self.codes)}
        for sg in model.subgraphs:
            for op in sg.operators:
                if id(op.opcode) not in self.code_index:
                    self.code_index[id(op.opcode)] = len(self.codes)
                    self.codes.append(op.opcode)
        self.tensor_lists = [all_tensors(sg) for sg in model.subgraphs]
        self.tensor_index = [{id(t): i for i, t in enumerate(ts)} for ts in self.tensor_lists]
        self.subgraph_index = {id(sg): i for i, sg in enumerate(model.subgraphs)}
        self.external_buffers, self.external_buffer_groups = _external_buffers(model, self.tensor_lists)

    def external_blobs(self) -> list[np.ndarray]:
        """Data stored after the flatbuffer in the offset/size form, in order: buffers, then custom options."""
        blobs = [b.data for b in self.layout.buffers if b.data.size]
        blobs += [op.custom_options for op in self._ops_with_custom_options()]
        return blobs

    def _ops_with_custom_options(self) -> Iterable[Operator]:
        for sg in self.model.subgraphs:
            for op in sg.operators:
                if op.custom_options is not None and op.custom_options.size:
                    yield op

    def tree(self, offsets: list[int] | None = None) -> dict[str, Any]:
        model, layout = self.model, self.layout
        places = iter(offsets) if offsets is not None else None
        buffers: list[dict[str, Any]] = [{}]
        for b in layout.buffers:
            if not b.data.size:
                buffers.append({})
            elif layout.external:
                buffers.append({"offset": next(places) if places else _PLACEHOLDER_OFFSET, "size": b.data.size})
            else:
                buffers.append({"data": b.data})
        large = {}
        if layout.external:
            for op in self._ops_with_custom_options():
                large[id(op)] = (next(places) if places else _PLACEHOLDER_OFFSET, op.custom_options.size)
        return {
            "version": model.version,
            "operator_codes": [
                {
                    "deprecated_builtin_code": c.deprecated_builtin_code,
                    "custom_code": c.custom_code,
                    "version": c.version,
                    "builtin_code": c.builtin_code,
                }
                for c in self.codes
            ],
            "subgraphs": [self.subgraph(sg, i, large) for i, sg in enumerate(model.subgraphs)],
            "description": model.description,
            "buffers": buffers,
            "metadata_buffer": None
            if model.metadata_buffer is None
            else np.array([layout.buffer_index(b) for b in model.metadata_buffer], np.int32),
            "metadata": None
            if model.metadata is None
            else [{"name": m.name, "buffer": layout.buffer_index(m.buffer)} for m in model.metadata],
            "signature_defs": None
            if model.signature_defs is None
            else [
                {
                    "inputs": self.tensor_maps(s.inputs, s.subgraph),
                    "outputs": self.tensor_maps(s.outputs, s.subgraph),
                    "signature_key": s.signature_key,
                    "subgraph_index": self.subgraph_index[id(s.subgraph)],
                }
                for s in model.signature_defs
            ],
            "external_buffer_groups": None
            if self.external_buffer_groups is None
            else [{"name": g.name} for g in self.external_buffer_groups],
            "external_buffers": None if self.external_buffers is None else self.external_buffer_entries(),
        }

    def external_buffer_entries(self) -> list[dict[str, Any]]:
        group_index = {id(g): i for i, g in enumerate(self.external_buffer_groups or ())}
        return [
            {
                "id": e.id,
                "group": group_index[id(e.group)],
                "offset": e.offset,
                "length": e.length,
                "packing": e.packing,
            }
            for e in self.external_buffers or ()
        ]

    def tensor_maps(self, maps: list | None, sg: Subgraph) -> list[dict[str, Any]] | None:
        if maps is None:
            return None
        index = self.tensor_index[self.subgraph_index[id(sg)]]
        return [{"name": m.name, "tensor_index": index[id(m.tensor)]} for m in maps]

    def subgraph(self, sg: Subgraph, i: int, large: dict[int, tuple[int, int]]) -> dict[str, Any]:
        index = self.tensor_index[i]

        def refs(tensors: Iterable[Tensor | None]) -> list[int]:
            return [-1 if t is None else index[id(t)] for t in tensors]

        operators = []
        for op in sg.operators:
            offset, size = large.get(id(op), (0, 0))
            operators.append(
                {
                    "opcode_index": self.code_index[id(op.opcode)],
                    "inputs": refs(op.inputs),
                    "outputs": refs(op.outputs),
                    "builtin_options": _table(op.builtin_options),
                    "custom_options": None if size else op.custom_options,
                    "custom_options_format": op.custom_options_format,
                    "mutating_variable_inputs": op.mutating_variable_inputs,
                    "intermediates": None if op.intermediates is None else refs(op.intermediates),
                    "large_custom_options_offset": offset,
                    "large_custom_options_size": size,
                    "builtin_options_2": _table(op.builtin_options_2),
                    "debug_metadata_index": op.debug_metadata_index,
                }
            )
        return {
            "tensors": [self.tensor(t, index) for t in self.tensor_lists[i]],
            "inputs": refs(sg.inputs),
            "outputs": refs(sg.outputs),
            "operators": operators,
            "name": sg.name,
            "debug_metadata_index": sg.debug_metadata_index,
        }

    def tensor(self, t: Tensor, index: dict[int, int]) -> dict[str, Any]:
        return {
            "shape": t.shape,
            "type": t.type,
            "buffer": self.layout.buffer_index(t.buffer),
            "name": t.name,
            "quantization": _quantization(t.quantization, index),
            "is_variable": t.is_variable,
            "sparsity": _sparsity(t.sparsity),
            "shape_signature": t.shape_signature,
            "has_rank": t.has_rank,
            "variant_tensors": None
            if t.variant_tensors is None
            else [
                {
                    "shape": None if v.shape is None else np.array(v.shape, np.int32),
                    "type": v.type,
                    "has_rank": v.has_rank,
                }
                for v in t.variant_tensors
            ],
            "external_buffer": 0 if t.external_buffer is None else t.external_buffer.id,
        }


def _external_buffers(
    model: Model, tensor_lists: list[list[Tensor]]
) -> tuple[list[ExternalBuffer] | None, list[ExternalBufferGroup] | None]:
    """The model's external buffers and groups, plus any a tensor or buffer uses that the model does not list."""
    users = [t for tensors in tensor_lists for t in tensors if t.external_buffer is not None]
    buffers = model.external_buffers
    if users or buffers is not None:
        buffers = list(buffers or ())
        listed = {id(b) for b in buffers}
        for t in users:
            if t.external_buffer.id == 0:
                raise EngineError(f"tensor {t.name!r}: external buffer id 0 means 'none'; give the buffer an id")
            if id(t.external_buffer) not in listed:
                listed.add(id(t.external_buffer))
                buffers.append(t.external_buffer)
        ids = [b.id for b in buffers]
        if len(set(ids)) != len(ids):
            raise EngineError(f"external buffer ids must be unique, got {sorted(ids)}")
    groups = model.external_buffer_groups
    if buffers or groups is not None:
        groups = list(groups or ())
        listed = {id(g) for g in groups}
        for b in buffers or ():
            if id(b.group) not in listed:
                listed.add(id(b.group))
                groups.append(b.group)
    return buffers, groups


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _serialize(
    model: Model, share_identical_buffers: bool, external_buffers: bool | None, share_equal_vectors: bool
) -> list[memoryview]:
    """The file as consecutive pieces: the flatbuffer, then (offset/size form only) the data after it."""
    if not model.subgraphs:
        raise EngineError("cannot write a model with no subgraphs")
    layout = _plan(model, share_identical_buffers, external_buffers)
    builder = _TreeBuilder(model, layout)
    options: dict[str, Any] = {"alignments": {("Buffer", "data"): ALIGNMENT}, "share_vectors": share_equal_vectors}
    if not layout.external:
        hint = layout.data_size + _index_size(model) + _GRAPH_ROOM
        return flatbuf.encode_pieces(builder.tree(), size_hint=hint, **options)
    sizing = len(flatbuf.encode(builder.tree(), **options))
    blobs = builder.external_blobs()
    offsets, position = [], _align(sizing)
    for blob in blobs:
        offsets.append(position)
        position = _align(position + blob.size)
    pieces = flatbuf.encode_pieces(builder.tree(offsets), **options)
    position = sum(len(p) for p in pieces)
    if position != sizing:
        raise EngineError("internal: flatbuffer size changed between the sizing and final passes")
    for offset, blob in zip(offsets, blobs, strict=True):
        pieces += [memoryview(bytes(offset - position)), memoryview(np.ascontiguousarray(blob)).cast("B")]
        position = offset + blob.size
    return pieces


def model_to_bytes(
    model: Model,
    *,
    share_identical_buffers: bool = False,
    external_buffers: bool | None = None,
    share_equal_vectors: bool = True,
) -> bytes:
    """Serialize ``model``; ``external_buffers`` forces (True) or forbids (False) the offset/size form;
    ``share_equal_vectors`` writes equal small vectors (zero points, shapes, ...) once (False: each on its own,
    the layout of the engine before 2026-12-04, which embedded signatures keep as their canonical form)."""
    return b"".join(_serialize(model, share_identical_buffers, external_buffers, share_equal_vectors))


def model_pieces(model: Model, *, share_equal_vectors: bool = True) -> list[memoryview]:
    """The bytes ``model_to_bytes(model)`` returns, as consecutive pieces (large arrays are views of their own
    memory): to hash or compare a serialized model without making one copy of it (engine.secure)."""
    return _serialize(model, False, None, share_equal_vectors)


def write_model(
    model: Model,
    path: str | os.PathLike[str],
    *,
    share_identical_buffers: bool = False,
    external_buffers: bool | None = None,
    share_equal_vectors: bool = True,
) -> int:
    """Write ``model`` to ``path`` atomically (temporary file, then rename); returns the size in bytes.

    A failure leaves no partial file behind, and writing over the model's own source file is safe.
    """
    path = Path(path)
    pieces = _serialize(model, share_identical_buffers, external_buffers, share_equal_vectors)
    size = 0
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise EngineError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
                size += len(piece)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600; a file written the usual way gets this
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise EngineError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    return size


def model_tree(model: Model) -> dict[str, Any]:
    """The index form the writer encodes (inline buffers): what "structurally equal" models share."""
    return _TreeBuilder(model, _plan(model, False, False)).tree()


def structural_diff(a: Model, b: Model, limit: int = 20) -> list[str]:
    """Paths where two models differ in any schema field (buffer contents included), at most ``limit``."""
    found: list[str] = []
    _diff(model_tree(a), model_tree(b), "model", found, limit)
    return found


def _diff(a: Any, b: Any, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{path}.{key}", found, limit)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            found.append(f"{path}: length {len(a)} != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", found, limit)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or not _same_array(a, b):
            found.append(f"{path}: {_short(a)} != {_short(b)}")
    elif type(a) is not type(b) or a != b:
        found.append(f"{path}: {a!r} != {b!r}")


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array({value.dtype}, {value.shape}, {value.ravel()[:4].tolist()}...)"
    return repr(value)
