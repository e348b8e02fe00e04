"""Read a .tflite file into the IR: decode and verify the flatbuffer, then resolve indices into references."""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.format import flatbuf
from engine.format.ir import (
    PACKED_BITS,
    TENSOR_REF_FIELDS,
    Buffer,
    DimensionMetadata,
    ExternalBuffer,
    ExternalBufferGroup,
    Metadata,
    Model,
    Operator,
    OperatorCode,
    QuantizationParams,
    SignatureDef,
    SparsityParams,
    Subgraph,
    Table,
    Tensor,
    TensorMap,
    VariantSubType,
)

# Buffer/custom-option offsets of 0 and 1 both mean "not stored outside the flatbuffer" (1 is a placeholder).
_EXTERNAL_OFFSET_MIN = 2
# A sparse constant's dense form may take at most this many times the file's size: a 99.9% sparse weight is
# 1000x, while a corrupt dimension of 2**31 - 1 would ask for a hundred gigabytes.
_SPARSE_EXPANSION = 4096


def read_model(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Model:
    """Parse a .tflite file (a path, or its bytes) into a ``Model``.

    A path is memory-mapped read-only, so constant data stay views of the file and the file cannot be
    modified through them.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _Resolver(source).model()
    path = Path(source)
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise EngineError(f"not a TFLite file: {path} is empty")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _Resolver(data).model()


def release_pages(array: np.ndarray) -> None:
    """Let the OS drop the resident pages behind ``array`` when it is a view of a memory-mapped model file.

    A pass that has re-encoded a large weight no longer needs the original's pages, so peak memory stays near
    the output's size instead of input plus output.  Nothing is lost: reading the array again pages it back in
    from the file.  Arrays that are not file views (and systems without MADV_DONTNEED) are left alone.
    """
    owner: Any = array
    while getattr(owner, "base", None) is not None:
        owner = owner.base
    mapped = owner.obj if isinstance(owner, memoryview) else owner
    if not isinstance(mapped, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or array.nbytes == 0:
        return
    offset = array.ctypes.data - np.frombuffer(mapped, np.uint8, count=1).ctypes.data
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = (offset + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= start < stop <= len(mapped):
        mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)


def released_chunks(values: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Flat ``values`` ``size`` elements at a time, with each chunk's start; once the caller is done with a chunk,
    the file pages behind it are released (``release_pages``), so a large weight read from the file is not
    resident beside the copies a pass makes of it."""
    for start in range(0, values.size, size):
        part = values[start : start + size]
        yield part, start
        release_pages(part)


def _table(value: tuple[str, dict[str, Any]] | None) -> Table | None:
    return None if value is None else Table(value[0], value[1])


def _shape(value: np.ndarray | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(d) for d in value)


class _Resolver:
    """Turns the decoded index form into objects, checking every index as it goes."""

    def __init__(self, data: flatbuf.BytesLike) -> None:
        self.data = data
        self.size = len(memoryview(data))
        self.tree = flatbuf.decode(data)
        self.buffers: dict[int, Buffer] = {}
        groups = self.tree["external_buffer_groups"]
        self.external_buffer_groups = None if groups is None else [ExternalBufferGroup(g["name"]) for g in groups]
        entries = self.tree["external_buffers"]
        self.external_buffers = None if entries is None else [self.external_buffer(e) for e in entries]
        self.external_by_id: dict[int, ExternalBuffer] = {}
        for e in self.external_buffers or ():
            if e.id in self.external_by_id:
                raise EngineError(f"external_buffers: id {e.id} is used twice")
            self.external_by_id[e.id] = e

    def external_buffer(self, e: dict[str, Any]) -> ExternalBuffer:
        """An entry of the model's external buffer list, its group index resolved."""
        groups = self.external_buffer_groups or []
        if e["group"] >= len(groups):
            raise EngineError(
                f"external buffer {e['id']}: group index {e['group']} is out of range ({len(groups)} groups)"
            )
        return ExternalBuffer(e["id"], groups[e["group"]], e["offset"], e["length"], e["packing"])

    def external(self, where: str, offset: int, size: int) -> np.ndarray:
        """Data stored after the flatbuffer (the offset/size form), checked against the file's size."""
        flatbuf.check_range(where, offset, size, self.size)
        return np.frombuffer(self.data, np.uint8, count=size, offset=offset)

    def buffer(self, index: int, where: str) -> Buffer | None:
        """The shared ``Buffer`` for a buffer index; index 0 is the empty sentinel, i.e. no buffer."""
        if index == 0:
            return None
        if index in self.buffers:
            return self.buffers[index]
        table = self.tree["buffers"] or []
        if not 0 <= index < len(table):
            raise EngineError(f"{where}: buffer index {index} is out of range (model has {len(table)} buffers)")
        entry = table[index]
        if entry["offset"] >= _EXTERNAL_OFFSET_MIN:
            if entry["data"] is not None and entry["data"].size:
                raise EngineError(f"buffers[{index}]: has both inline data and an external offset")
            data = self.external(f"buffers[{index}]", entry["offset"], entry["size"])
        else:
            data = entry["data"] if entry["data"] is not None else np.zeros(0, np.uint8)
        self.buffers[index] = Buffer(data)
        return self.buffers[index]

    def metadata_buffer(self, index: int) -> Buffer | None:
        """An entry of the deprecated ``metadata_buffer`` list.  ai-edge-quantizer leaves stale indices there when
        it rewrites a model's buffers (e.g. 579 in a model of 193); the runtime ignores the list, so an index that
        points past the buffers (or is negative: the list is int32) reads as no buffer (written back as 0, the empty
        sentinel) instead of refusing a model LiteRT loads."""
        if not 0 <= index < len(self.tree["buffers"] or []):
            return None
        return self.buffer(index, "metadata_buffer")

    def model(self) -> Model:
        tree = self.tree
        sentinel = (tree["buffers"] or [{"data": None, "size": 0}])[0]
        if (sentinel["data"] is not None and sentinel["data"].size) or sentinel["size"]:
            raise EngineError("buffers[0]: must be the empty sentinel buffer but holds data")
        codes = [
            OperatorCode(c["builtin_code"], c["custom_code"], c["version"], c["deprecated_builtin_code"])
            for c in tree["operator_codes"] or []
        ]
        if not tree["subgraphs"]:  # LiteRT cannot load it either, and the writer could not write it back
            raise EngineError("corrupt TFLite file: the model has no subgraphs")
        subgraphs = [self.subgraph(sg, i, codes) for i, sg in enumerate(tree["subgraphs"])]
        metadata_buffer = tree["metadata_buffer"]
        return Model(
            version=tree["version"],
            operator_codes=codes,
            subgraphs=subgraphs,
            description=tree["description"],
            metadata_buffer=None
            if metadata_buffer is None
            else [self.metadata_buffer(int(i)) for i in metadata_buffer],
            metadata=None
            if tree["metadata"] is None
            else [Metadata(m["name"], self.buffer(m["buffer"], f"metadata {m['name']!r}")) for m in tree["metadata"]],
            signature_defs=None
            if tree["signature_defs"] is None
            else [self.signature(s, subgraphs) for s in tree["signature_defs"]],
            external_buffer_groups=self.external_buffer_groups,
            external_buffers=self.external_buffers,
        )

    def subgraph(self, sg: dict[str, Any], index: int, codes: list[OperatorCode]) -> Subgraph:
        where = f"subgraphs[{index}]"
        tensors = [self.tensor(t, f"{where}.tensors[{i}]") for i, t in enumerate(sg["tensors"] or [])]
        for i, t in enumerate(tensors):
            details = None if t.quantization is None else t.quantization.details
            for name in TENSOR_REF_FIELDS.get(details.type, ()) if details is not None else ():
                index = details.fields[name]
                if not -1 <= index < len(tensors):
                    raise EngineError(
                        f"{where}.tensors[{i}] ({t.name!r}): {details.type}.{name} tensor index {index} is out "
                        f"of range ({len(tensors)} tensors)"
                    )
                details.fields[name] = None if index == -1 else tensors[index]

        def refs(indices: np.ndarray | None, owner: str) -> list[Tensor | None]:
            out: list[Tensor | None] = []
            for i in indices if indices is not None else ():
                if i == -1:
                    out.append(None)
                elif 0 <= i < len(tensors):
                    out.append(tensors[i])
                else:
                    raise EngineError(f"{owner}: tensor index {int(i)} is out of range ({len(tensors)} tensors)")
            return out

        def required(indices: np.ndarray | None, owner: str) -> list[Tensor]:
            found = refs(indices, owner)
            if any(t is None for t in found):
                raise EngineError(f"{owner}: tensor index -1 is not allowed here")
            return found  # type: ignore[return-value]

        operators = []
        for i, op in enumerate(sg["operators"] or []):
            owner = f"{where}.operators[{i}]"
            if op["opcode_index"] >= len(codes):
                raise EngineError(f"{owner}: opcode index {op['opcode_index']} is out of range ({len(codes)} codes)")
            code = codes[op["opcode_index"]]
            owner = f"{owner} ({code.name})"
            custom = op["custom_options"]
            if op["large_custom_options_offset"] >= _EXTERNAL_OFFSET_MIN:
                if custom is not None:
                    raise EngineError(f"{owner}: has both inline and external custom options")
                custom = self.external(owner, op["large_custom_options_offset"], op["large_custom_options_size"])
            operators.append(
                Operator(
                    opcode=code,
                    inputs=refs(op["inputs"], owner),
                    outputs=refs(op["outputs"], owner),
                    builtin_options=_table(op["builtin_options"]),
                    custom_options=custom,
                    custom_options_format=op["custom_options_format"],
                    mutating_variable_inputs=op["mutating_variable_inputs"],
                    intermediates=None if op["intermediates"] is None else refs(op["intermediates"], owner),
                    builtin_options_2=_table(op["builtin_options_2"]),
                    debug_metadata_index=op["debug_metadata_index"],
                )
            )
        return Subgraph(
            tensors=tensors,
            inputs=required(sg["inputs"], f"{where}.inputs"),
            outputs=required(sg["outputs"], f"{where}.outputs"),
            operators=operators,
            name=sg["name"],
            debug_metadata_index=sg["debug_metadata_index"],
        )

    def tensor(self, t: dict[str, Any], where: str) -> Tensor:
        q = t["quantization"]
        s = t["sparsity"]
        external = None
        if t["external_buffer"]:
            external = self.external_by_id.get(t["external_buffer"])
            if external is None:
                raise EngineError(f"{where} ({t['name']!r}): external buffer id {t['external_buffer']} is not listed")
        tensor = Tensor(
            name=t["name"],
            shape=_shape(t["shape"]),
            type=t["type"],
            buffer=self.buffer(t["buffer"], f"{where} ({t['name']!r})"),
            quantization=None
            if q is None
            else QuantizationParams(
                scale=q["scale"],
                zero_point=q["zero_point"],
                min=q["min"],
                max=q["max"],
                quantized_dimension=q["quantized_dimension"],
                details=_table(q["details"]),
            ),
            is_variable=t["is_variable"],
            sparsity=None
            if s is None
            else SparsityParams(
                traversal_order=s["traversal_order"],
                block_map=s["block_map"],
                dim_metadata=None
                if s["dim_metadata"] is None
                else [
                    DimensionMetadata(
                        d["format"], d["dense_size"], _table(d["array_segments"]), _table(d["array_indices"])
                    )
                    for d in s["dim_metadata"]
                ],
            ),
            shape_signature=_shape(t["shape_signature"]),
            has_rank=t["has_rank"],
            variant_tensors=None
            if t["variant_tensors"] is None
            else [VariantSubType(_shape(v["shape"]), v["type"], v["has_rank"]) for v in t["variant_tensors"]],
            external_buffer=external,
        )
        self.check_size(tensor, where)
        return tensor

    def check_size(self, t: Tensor, where: str) -> None:
        """Refuse a constant whose buffer does not hold what its shape and type say (dense: exactly the elements,
        packed types in whole bytes; sparse: whole values, and a dense form at most ``_SPARSE_EXPANSION`` times
        the file), so no pass reshapes a wrong-sized buffer or allocates gigabytes for a corrupt dimension.
        Strings, types without a fixed element size and external buffers are taken as they are."""
        if t.buffer is None or t.buffer.data.size == 0 or t.shape is None:
            return
        bits = PACKED_BITS.get(t.type) or (t.dtype.itemsize * 8 if t.dtype is not None else None)
        if bits is None:
            return
        size = int(t.buffer.data.size)
        elements = math.prod(t.shape)
        label = f"{where} ({t.name!r}, {t.type_name}, shape {list(t.shape)})"
        if t.sparsity is not None:
            dense = elements * bits // 8
            if min(t.shape) < 0 or dense > _SPARSE_EXPANSION * self.size:
                raise EngineError(f"{label}: a sparse tensor of {dense} dense bytes is absurd in a file of {self.size}")
            if size * 8 % bits:
                raise EngineError(f"{label}: sparse buffer of {size} bytes is not a whole number of values")
        elif min(t.shape, default=0) < 0 or size != -(-elements * bits // 8):
            raise EngineError(f"{label}: buffer holds {size} bytes, the shape needs {-(-elements * bits // 8)}")

    def signature(self, s: dict[str, Any], subgraphs: list[Subgraph]) -> SignatureDef:
        where = f"signature {s['signature_key']!r}"
        if s["subgraph_index"] >= len(subgraphs):
            raise EngineError(f"{where}: subgraph index {s['subgraph_index']} is out of range")
        sg = subgraphs[s["subgraph_index"]]

        def maps(entries: list[dict[str, Any]] | None) -> list[TensorMap] | None:
            if entries is None:
                return None
            out = []
            for m in entries:
                if m["tensor_index"] >= len(sg.tensors):
                    raise EngineError(f"{where}: tensor index {m['tensor_index']} of {m['name']!r} is out of range")
                out.append(TensorMap(m["name"], sg.tensors[m["tensor_index"]]))
            return out

        return SignatureDef(sg, maps(s["inputs"]), maps(s["outputs"]), s["signature_key"])
