"""The editable graph: plain dataclasses mirroring the TFLite schema, with references instead of indices.

Operators point at ``Tensor`` objects, tensors at ``Buffer`` objects and operators at ``OperatorCode``
objects, so a pass can add, remove and rewire without renumbering anything; the writer assigns indices.
Field names are the schema's.  ``None`` keeps "absent" apart from "empty" wherever the file format does,
so a model reads back exactly as it was written.  Constant data are numpy arrays, read-only views of the
input file when the model was read from one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.format.schema import ENUMS, TABLES, enum_name

TENSOR_TYPES: dict[str, int] = ENUMS["TensorType"]
BUILTIN_OPS: dict[str, int] = ENUMS["BuiltinOperator"]

# numpy dtype of each TensorType whose elements numpy can hold one per item.
_NUMPY_DTYPES = {
    "FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "INT8": "i1", "UINT8": "u1", "INT16": "<i2",
    "UINT16": "<u2", "INT32": "<i4", "UINT32": "<u4", "INT64": "<i8", "UINT64": "<u8", "BOOL": "?",
    "COMPLEX64": "<c8", "COMPLEX128": "<c16",
}  # fmt: skip
TYPE_TO_DTYPE: dict[int, np.dtype] = {TENSOR_TYPES[k]: np.dtype(v) for k, v in _NUMPY_DTYPES.items()}
DTYPE_TO_TYPE: dict[np.dtype, int] = {v: k for k, v in TYPE_TO_DTYPE.items()}
# Sub-byte integer types, stored packed (bits per element); numpy has no dtype for them.
PACKED_BITS: dict[int, int] = {TENSOR_TYPES[k]: bits for k, bits in (("INT4", 4), ("UINT4", 4), ("INT2", 2))}
# Fields of quantization details that hold a tensor index in the file (-1: none); in the IR, a Tensor or None.
TENSOR_REF_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockwiseQuantization": ("scales", "zero_points"),
    "MultiAxisQuantization": ("scales", "zero_points"),
}
# The largest builtin code that fits the deprecated int8 field; larger codes store this placeholder there.
PLACEHOLDER_FOR_GREATER_OP_CODES = BUILTIN_OPS["PLACEHOLDER_FOR_GREATER_OP_CODES"]


def tensor_type(dtype: np.dtype | type | str) -> int:
    """The TensorType value for a numpy dtype."""
    key = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    if key not in DTYPE_TO_TYPE:
        raise EngineError(f"numpy dtype {np.dtype(dtype)} has no TFLite tensor type")
    return DTYPE_TO_TYPE[key]


@dataclass(eq=False)
class Buffer:
    """Raw constant bytes, shared by every tensor (or metadata entry) that points at it."""

    data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    @classmethod
    def of(cls, array: np.ndarray) -> Buffer:
        """A buffer holding the little-endian bytes of ``array``."""
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        return cls(array.reshape(-1).view(np.uint8))


@dataclass
class Table:
    """A schema table the IR keeps as its named fields: operator options, sparse index vectors, ..."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the field names against the schema and fill in defaults, so equal tables compare equal."""
        schema = TABLES.get(self.type)
        if schema is None:
            raise EngineError(f"{self.type!r} is not a table of the TFLite schema")
        known = {f["name"]: f for f in schema["fields"] if f["kind"] != "union_type"}
        unknown = set(self.fields) - set(known)
        if unknown:
            raise EngineError(f"{self.type} has no field(s) {sorted(unknown)}")
        refs = TENSOR_REF_FIELDS.get(self.type, ())
        self.fields = {
            name: self.fields.get(name, None if name in refs else f.get("default")) for name, f in known.items()
        }


@dataclass
class QuantizationParams:
    """Affine quantization: real = scale * (q - zero_point), per tensor or per channel along quantized_dimension."""

    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    quantized_dimension: int = 0
    details: Table | None = None

    def tensors(self) -> list[Tensor]:
        """Tensors the details refer to (blockwise scales, ...): they must stay in the subgraph."""
        if self.details is None:
            return []
        found = []
        for name in TENSOR_REF_FIELDS.get(self.details.type, ()):
            ref = self.details.fields[name]
            if ref is not None and not isinstance(ref, Tensor):
                raise EngineError(f"{self.details.type}.{name} must be a Tensor or None, not {ref!r}")
            if ref is not None:
                found.append(ref)
        return found


@dataclass
class DimensionMetadata:
    """One dimension of a sparse tensor: dense with ``dense_size`` or compressed (CSR segments/indices)."""

    format: int = 0
    dense_size: int = 0
    array_segments: Table | None = None
    array_indices: Table | None = None


@dataclass
class SparsityParams:
    traversal_order: np.ndarray | None = None
    block_map: np.ndarray | None = None
    dim_metadata: list[DimensionMetadata] | None = None


@dataclass(eq=False)
class ExternalBufferGroup:
    """A place outside the .tflite file holding constant data, named (e.g. a weights file)."""

    name: str | None = None


@dataclass(eq=False)
class ExternalBuffer:
    """Constant bytes outside the .tflite file: ``length`` bytes at ``offset`` of ``group``.

    Tensors refer to it by ``id`` (0 means none, so it is never a valid id for a referenced buffer).
    """

    id: int
    group: ExternalBufferGroup
    offset: int = 0
    length: int = 0
    packing: str | None = None


@dataclass
class VariantSubType:
    shape: tuple[int, ...] | None = None
    type: int = 0
    has_rank: bool = False


@dataclass(eq=False)
class Tensor:
    """A value in a subgraph: a constant when ``buffer`` holds data, else an activation or variable."""

    name: str | None = None
    shape: tuple[int, ...] | None = None
    type: int = TENSOR_TYPES["FLOAT32"]
    buffer: Buffer | None = None
    quantization: QuantizationParams | None = None
    is_variable: bool = False
    sparsity: SparsityParams | None = None
    shape_signature: tuple[int, ...] | None = None
    has_rank: bool = False
    variant_tensors: list[VariantSubType] | None = None
    external_buffer: ExternalBuffer | None = None

    @property
    def type_name(self) -> str:
        return enum_name("TensorType", self.type)

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of one element, or None for types numpy cannot hold (INT4, STRING, ...)."""
        return TYPE_TO_DTYPE.get(self.type)

    @property
    def is_constant(self) -> bool:
        """Whether the tensor holds data, in the file or (``external_buffer``) outside it."""
        return (self.buffer is not None and self.buffer.data.size > 0) or self.external_buffer is not None

    @property
    def data(self) -> np.ndarray | None:
        """The constant value, typed and shaped (flat for sparse tensors); a view of the buffer."""
        if not self.is_constant:
            return None
        if self.external_buffer is not None:
            group = self.external_buffer.group.name
            raise EngineError(f"tensor {self.name!r}: data is stored outside the model file (in {group!r})")
        if self.type in PACKED_BITS:
            per_byte = 8 // PACKED_BITS[self.type]
            raise EngineError(
                f"tensor {self.name!r}: {self.type_name} data is packed {per_byte} values per byte and has no "
                f"numpy form; read the buffer's bytes"
            )
        if self.dtype is None:
            raise EngineError(f"tensor {self.name!r}: {self.type_name} data has no numpy form")
        assert self.buffer is not None
        raw = self.buffer.data
        if raw.size % self.dtype.itemsize:
            raise EngineError(
                f"tensor {self.name!r}: buffer of {raw.size} bytes is not a whole number of {self.type_name}"
            )
        flat = raw.view(self.dtype)
        if self.sparsity is not None or self.shape is None:
            return flat
        if flat.size != math.prod(self.shape):
            raise EngineError(f"tensor {self.name!r}: buffer holds {flat.size} values, shape {self.shape} needs more")
        return flat.reshape(self.shape)

    @data.setter
    def data(self, array: np.ndarray) -> None:
        """Give the tensor its own new buffer holding ``array`` (its dtype and shape become the tensor's)."""
        array = np.asarray(array)
        self.type = tensor_type(array.dtype)
        self.shape = tuple(int(d) for d in array.shape)
        self.buffer = Buffer.of(array)


@dataclass(eq=False)
class OperatorCode:
    """Which operator an op runs; ``op`` reconciles the deprecated int8 code with the int32 one."""

    builtin_code: int = 0
    custom_code: str | None = None
    version: int = 1
    deprecated_builtin_code: int = 0

    @classmethod
    def builtin(cls, name: str, version: int = 1) -> OperatorCode:
        code = BUILTIN_OPS[name]
        return cls(code, None, version, min(code, PLACEHOLDER_FOR_GREATER_OP_CODES))

    @classmethod
    def custom(cls, name: str, version: int = 1) -> OperatorCode:
        custom = BUILTIN_OPS["CUSTOM"]
        return cls(custom, name, version, custom)

    @property
    def op(self) -> int:
        return max(self.builtin_code, self.deprecated_builtin_code)

    @property
    def name(self) -> str:
        """The builtin operator's name, or the custom code for custom ops."""
        if self.op == BUILTIN_OPS["CUSTOM"] and self.custom_code is not None:
            return self.custom_code
        return enum_name("BuiltinOperator", self.op)

    @property
    def is_custom(self) -> bool:
        return self.op == BUILTIN_OPS["CUSTOM"]


@dataclass(eq=False)
class Operator:
    """One node; ``None`` in ``inputs``/``outputs`` is an omitted optional tensor (index -1 in the file)."""

    opcode: OperatorCode
    inputs: list[Tensor | None] = field(default_factory=list)
    outputs: list[Tensor | None] = field(default_factory=list)
    builtin_options: Table | None = None
    custom_options: np.ndarray | None = None
    custom_options_format: int = 0
    mutating_variable_inputs: np.ndarray | None = None
    intermediates: list[Tensor | None] | None = None
    builtin_options_2: Table | None = None
    debug_metadata_index: int = -1

    @property
    def name(self) -> str:
        return self.opcode.name

    def optional_input(self, index: int | None) -> Tensor | None:
        """Input ``index``, or None where there is no index (an op rule naming none), the op omits it (-1 in the
        file) or it has fewer inputs (an optional bias left off the end)."""
        return self.inputs[index] if index is not None and index < len(self.inputs) else None

    def tensors(self) -> Iterator[Tensor]:
        """Every tensor the operator touches (inputs, outputs, intermediates), omitted ones skipped."""
        for group in (self.inputs, self.outputs, self.intermediates or ()):
            yield from (t for t in group if t is not None)


@dataclass(eq=False)
class Subgraph:
    tensors: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    name: str | None = None
    debug_metadata_index: int = -1

    def producers(self) -> dict[int, Operator]:
        """Map ``id(tensor)`` to the operator that writes it, for passes that look up many tensors."""
        return {id(t): op for op in self.operators for t in op.outputs if t is not None}

    def consumers(self) -> dict[int, list[Operator]]:
        """Map ``id(tensor)`` to the operators that read it, in execution order."""
        users: dict[int, list[Operator]] = {}
        for op in self.operators:
            for t in op.inputs:
                if t is not None:
                    users.setdefault(id(t), []).append(op)
        return users

    def producer_of(self, tensor: Tensor) -> Operator | None:
        return self.producers().get(id(tensor))

    def consumers_of(self, tensor: Tensor) -> list[Operator]:
        return self.consumers().get(id(tensor), [])

    def add_tensor(self, tensor: Tensor) -> Tensor:
        self.tensors.append(tensor)
        return tensor

    def insert_operator(self, index: int, op: Operator) -> Operator:
        """Insert ``op`` at ``index`` (execution order) and register any tensor it uses that is new."""
        for t in op.tensors():
            if t not in self.tensors:  # by identity (Tensor compares so): a scan in C, not a set of every tensor
                self.tensors.append(t)
        self.operators.insert(index, op)
        return op

    def remove_operator(self, op: Operator) -> None:
        """Remove ``op`` (found by identity); the list is replaced, not edited, for callers still walking the old."""
        if op in self.operators:
            at = self.operators.index(op)
            self.operators = self.operators[:at] + self.operators[at + 1 :]

    def replace_uses(self, old: Tensor, new: Tensor) -> None:
        """Make every reader of ``old`` (operators and subgraph outputs) read ``new`` instead."""
        for op in self.operators:
            op.inputs = [new if t is old else t for t in op.inputs]
        self.outputs = [new if t is old else t for t in self.outputs]

    def remove_unused_tensors(self) -> int:
        """Drop tensors no operator, subgraph input/output or kept tensor's quantization refers to.

        Returns how many went.
        """
        used = {id(t) for t in _with_quantization_tensors([*self.inputs, *self.outputs, *_operator_tensors(self)])}
        before = len(self.tensors)
        self.tensors = [t for t in self.tensors if id(t) in used]
        return before - len(self.tensors)


@dataclass
class Metadata:
    name: str | None = None
    buffer: Buffer | None = None


@dataclass(eq=False)
class TensorMap:
    name: str | None
    tensor: Tensor


@dataclass(eq=False)
class SignatureDef:
    subgraph: Subgraph
    inputs: list[TensorMap] | None = None
    outputs: list[TensorMap] | None = None
    signature_key: str | None = None


@dataclass(eq=False)
class Model:
    version: int = 3
    operator_codes: list[OperatorCode] = field(default_factory=list)
    subgraphs: list[Subgraph] = field(default_factory=list)
    description: str | None = None
    metadata_buffer: list[Buffer | None] | None = None
    metadata: list[Metadata] | None = None
    signature_defs: list[SignatureDef] | None = None
    external_buffer_groups: list[ExternalBufferGroup] | None = None
    external_buffers: list[ExternalBuffer] | None = None

    @property
    def main(self) -> Subgraph:
        """The primary subgraph (index 0), the one the interpreter runs."""
        if not self.subgraphs:
            raise EngineError("model has no subgraphs")
        return self.subgraphs[0]

    def opcode(self, name: str, version: int = 1) -> OperatorCode:
        """The model's code for a builtin op (or a custom op, by its custom code), added if missing."""
        custom = name not in BUILTIN_OPS or name == "CUSTOM"
        for code in self.operator_codes:
            if code.name == name and code.version == version and code.is_custom == custom:
                return code
        code = OperatorCode.custom(name, version) if custom else OperatorCode.builtin(name, version)
        self.operator_codes.append(code)
        return code

    def buffers(self) -> list[Buffer]:
        """Distinct buffers in file order: tensors' (subgraph by subgraph), then metadata's."""
        seen: dict[int, Buffer] = {}
        for sg in self.subgraphs:
            for t in all_tensors(sg):
                if t.buffer is not None:
                    seen.setdefault(id(t.buffer), t.buffer)
        for b in self.metadata_buffer or ():
            if b is not None:
                seen.setdefault(id(b), b)
        for m in self.metadata or ():
            if m.buffer is not None:
                seen.setdefault(id(m.buffer), m.buffer)
        return list(seen.values())


def _operator_tensors(sg: Subgraph) -> Iterator[Tensor]:
    for op in sg.operators:
        yield from op.tensors()


def _with_quantization_tensors(tensors: Iterable[Tensor]) -> list[Tensor]:
    """``tensors`` without repeats, followed by the tensors their quantization details refer to."""
    seen: dict[int, Tensor] = {}
    for t in tensors:
        seen.setdefault(id(t), t)
    found = list(seen.values())
    for t in found:  # grows while it is walked: references of references are followed too
        for ref in t.quantization.tensors() if t.quantization is not None else ():
            if id(ref) not in seen:
                seen[id(ref)] = ref
                found.append(ref)
    return found


def all_tensors(sg: Subgraph) -> list[Tensor]:
    """The tensors the writer will store for ``sg``, in index order.

    The subgraph's list, then any tensor its inputs/outputs, operators or quantization details use that it
    does not list.
    """
    return _with_quantization_tensors([*sg.tensors, *sg.inputs, *sg.outputs, *_operator_tensors(sg)])
