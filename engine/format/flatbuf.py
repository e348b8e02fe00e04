"""Schema-driven FlatBuffers decoding and encoding of whole TFLite files.

Decoding walks the tables described in ``engine.format.schema`` and checks every offset, vtable and vector length
against the file's size before reading, so a corrupt or hostile file gives one ``EngineError`` that says
where it broke, in time linear in the file size.  (The ``tflite`` package's generated readers read blindly:
a bad offset there raises an arbitrary exception or reads garbage.)  A field the schema does not know, or a
union member it does not know, is refused rather than dropped.

A decoded table is a plain ``dict`` of every schema field (defaults filled in); vectors of numbers are
read-only numpy views into the file; a union is a ``(member table name, dict)`` pair or ``None``; an absent
string, table or vector is ``None``.  Encoding takes the same form back.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import struct
from typing import Any

import flatbuffers
import numpy as np

from engine.errors import EngineError
from engine.format.schema import FILE_IDENTIFIER, TABLES, UNIONS

_STRUCT = {
    "bool": struct.Struct("<?"),
    "int8": struct.Struct("<b"),
    "uint8": struct.Struct("<B"),
    "int16": struct.Struct("<h"),
    "uint16": struct.Struct("<H"),
    "int32": struct.Struct("<i"),
    "uint32": struct.Struct("<I"),
    "int64": struct.Struct("<q"),
    "uint64": struct.Struct("<Q"),
    "float32": struct.Struct("<f"),
    "float64": struct.Struct("<d"),
}
_DTYPE = {name: np.dtype("<u1" if name == "bool" else "<" + np.dtype(name).str[1:]) for name in _STRUCT}
BytesLike = bytes | bytearray | memoryview | mmap.mmap
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
# Integer vectors given as Python lists up to this length are packed by struct; longer ones go through numpy.
_PACKED_LIST_MAX = 64
_INTEGER_CODES = {("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q"}
_INTEGER_CODES.update({("u", width): code.upper() for (_, width), code in _INTEGER_CODES.items()})
_struct = functools.lru_cache(maxsize=None)(struct.Struct)
_MAX_DEPTH = 64
# Vectors at least this large are written from the array itself rather than copied into the builder (and never
# shared with an equal one).
_HOLE_MIN_BYTES = 1 << 16
# Vectors each written on their own even when equal to another: a buffer's data, laid out by the writer.
_UNSHARED = frozenset({("Buffer", "data")})


def corrupt(where: str, problem: str) -> EngineError:
    return EngineError(f"corrupt TFLite file at {where}: {problem}")


def check_range(where: str, pos: int, length: int, size: int) -> None:
    """Refuse ``length`` bytes at ``pos`` unless they lie inside a file of ``size`` bytes."""
    if pos < 0 or length < 0 or pos + length > size:
        raise corrupt(where, f"{length} bytes at offset {pos} run past the end of the {size}-byte file")


class _Decoder:
    """One pass over one file; ``tables_left`` bounds the work so shared or cyclic offsets cannot blow up."""

    def __init__(self, data: BytesLike) -> None:
        self.data = data
        self.size = len(memoryview(data))
        self.tables_left = self.size // 4 + 64

    def check(self, where: str, pos: int, length: int) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:  # the test inline: this runs for every field read
            check_range(where, pos, length, self.size)

    def u32(self, where: str, pos: int) -> int:
        if pos < 0 or pos + 4 > self.size:
            check_range(where, pos, 4, self.size)
        return _U32.unpack_from(self.data, pos)[0]

    def follow(self, where: str, pos: int) -> int:
        """The absolute position an unsigned offset stored at ``pos`` points to."""
        target = pos + self.u32(where, pos)
        self.check(where, target, 4)
        return target

    def table(self, name: str, pos: int, where: str, depth: int = 0) -> dict[str, Any]:
        self.tables_left -= 1
        if self.tables_left < 0:
            raise corrupt(where, "more tables than the file could hold (shared or cyclic offsets)")
        if depth > _MAX_DEPTH:
            raise corrupt(where, f"tables nested deeper than {_MAX_DEPTH}")
        data, size = self.data, self.size
        self.check(where, pos, 4)
        vtable = pos - _I32.unpack_from(data, pos)[0]
        self.check(where, vtable, 4)
        vt_size, table_size = _U16.unpack_from(data, vtable)[0], _U16.unpack_from(data, vtable + 2)[0]
        if vt_size < 4 or vt_size % 2:
            raise corrupt(where, f"vtable size {vt_size} is not a valid vtable size")
        self.check(where, vtable, vt_size)
        self.check(where, pos, table_size)
        known, fields = _layout(name)
        slots = _u16s((vt_size - 4) // 2).unpack_from(data, vtable + 4)
        for slot, field_offset in enumerate(slots):
            if field_offset and slot not in known:
                raise EngineError(
                    f"{where}: {name} field #{slot} is set but not in the supported schema "
                    f"(deprecated or newer than the engine's schema); refusing to drop it"
                )
            if field_offset and field_offset >= table_size:
                raise corrupt(where, f"{name} field #{slot} lies outside its table")
        out: dict[str, Any] = {}
        for field_name, slot, kind, codec, default, field in fields:
            field_offset = slots[slot] if slot < len(slots) else 0
            if kind == "scalar":  # inside the table, which lies inside the file: only its end can run past it
                if not field_offset:
                    out[field_name] = default
                elif pos + field_offset + codec.size <= size:
                    out[field_name] = codec.unpack_from(data, pos + field_offset)[0]
                else:
                    out[field_name] = self.scalar(field["type"], pos + field_offset, f"{where}.{field_name}")
            elif not field_offset:
                out[field_name] = None
            elif kind == "union":
                out[field_name] = self.union(TABLES[name], field, pos, slots, f"{where}.{field_name}", depth)
            else:
                at = f"{where}.{field_name}"
                out[field_name] = self.reference(field, self.follow(at, pos + field_offset), at, depth)
        return out

    def scalar(self, type_name: str, pos: int, where: str) -> Any:
        codec = _STRUCT[type_name]
        self.check(where, pos, codec.size)
        return codec.unpack_from(self.data, pos)[0]

    def union(
        self, schema: dict[str, Any], field: dict[str, Any], pos: int, slots: list[int], where: str, depth: int
    ) -> tuple[str, dict[str, Any]] | None:
        type_field = next(f for f in schema["fields"] if f["name"] == field["name"] + "_type")
        type_offset = slots[type_field["id"]] if type_field["id"] < len(slots) else 0
        type_value = self.scalar("uint8", pos + type_offset, where) if type_offset else 0
        if type_value == 0:
            return None
        member = UNIONS[field["union"]].get(str(type_value))
        if member is None:
            raise EngineError(
                f"{where}: union {field['union']} member #{type_value} is not in the supported schema; "
                f"refusing to drop it"
            )
        target = self.follow(where, pos + slots[field["id"]])
        return member, self.table(member, target, f"{where}<{member}>", depth + 1)

    def reference(self, field: dict[str, Any], target: int, where: str, depth: int) -> Any:
        kind = field["kind"]
        if kind == "table":
            return self.table(field["table"], target, where, depth + 1)
        count = self.u32(where, target)
        start = target + 4
        if kind == "string":
            self.check(where, start, count)
            return bytes(memoryview(self.data)[start : start + count]).decode("utf-8", "surrogateescape")
        if kind == "vector":
            dtype = _DTYPE[field["element"]]
            self.check(where, start, count * dtype.itemsize)
            array = np.frombuffer(self.data, dtype=dtype, count=count, offset=start)
            return array.astype(bool) if field["element"] == "bool" else array
        self.check(where, start, count * 4)
        items = []
        for i in range(count):
            at = f"{where}[{i}]"
            item = self.follow(at, start + 4 * i)
            if kind == "vector_table":
                items.append(self.table(field["table"], item, at, depth + 1))
            else:
                items.append(self.reference({"kind": "string"}, item, at, depth))
        return items


@functools.cache
def _layout(name: str) -> tuple[frozenset[int], tuple[tuple[str, int, str, Any, Any, dict[str, Any]], ...]]:
    """A table's field ids, and for each field it decodes (not union types, read with their union): name, id,
    kind, struct codec (scalars), default, and the schema entry."""
    fields = TABLES[name]["fields"]
    decoded = tuple(
        (f["name"], f["id"], f["kind"], _STRUCT.get(f.get("type", "")), f.get("default"), f)
        for f in fields
        if f["kind"] != "union_type"
    )
    return frozenset(f["id"] for f in fields), decoded


@functools.cache
def _field_names(name: str) -> frozenset[str]:
    return frozenset(f["name"] for f in TABLES[name]["fields"])


@functools.cache
def _encoding(name: str) -> tuple[tuple[tuple[str, dict[str, Any]], ...], tuple[tuple[str, str, int, Any, Any], ...]]:
    """A table's fields as the encoder walks them: the references (tables, vectors, strings, unions) it builds
    first, then every field in schema order (name, kind: scalar, union_type or offset, slot, packer, default) for
    the table itself."""
    fields = TABLES[name]["fields"]
    references = tuple((f["name"], f) for f in fields if f["kind"] not in ("scalar", "union_type"))
    slots = tuple(
        (f["name"], "scalar", f["id"], _STRUCT[f["type"]], f.get("default"))
        if f["kind"] == "scalar"
        else (f["name"], f["kind"], f["id"], _STRUCT["uint8"], 0)
        if f["kind"] == "union_type"
        else (f["name"], "offset", f["id"], _U32, 0)
        for f in fields
    )
    return references, slots


@functools.cache
def _u16s(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}H")


def decode(data: BytesLike, root: str = "Model") -> dict[str, Any]:
    """Decode a whole TFLite flatbuffer into nested dicts, verifying it as it goes."""
    decoder = _Decoder(data)
    if decoder.size < 8:
        raise EngineError(f"not a TFLite file: only {decoder.size} bytes")
    identifier = bytes(memoryview(data)[4:8])
    if identifier != FILE_IDENTIFIER:
        raise EngineError(
            f"not a TFLite file: file identifier is {identifier!r}, expected {FILE_IDENTIFIER.decode()!r}"
        )
    return decoder.table(root, decoder.follow("root", 0), root.lower())


class _Encoder:
    """Builds a flatbuffer bottom-up from the dict form; large numpy vectors are copied once, in place."""

    def __init__(self, size_hint: int, alignments: dict[tuple[str, str], int], share_vectors: bool) -> None:
        self.builder = flatbuffers.Builder(0)
        size = max(1024, min(size_hint, flatbuffers.Builder.MAX_BUFFER_SIZE))
        # Anonymous mapped memory is zeroed lazily: a generous hint costs nothing, and the pages left for
        # large vectors (holes, filled from the arrays at output) never become resident.
        self.builder.Bytes = mmap.mmap(-1, size)
        self.builder.head = size
        self.alignments = alignments
        self.holes: list[tuple[int, np.ndarray]] = []  # (distance of a vector's data from the buffer's end, bytes)
        self.share_vectors = share_vectors
        self.written: dict[tuple, int] = {}  # a small vector's content -> where it was written

    def table(self, name: str, value: dict[str, Any]) -> int:
        unknown = value.keys() - _field_names(name)
        if unknown:
            raise EngineError(f"internal: {name} has no field(s) {sorted(unknown)} in the schema")
        offsets: dict[str, int] = {}
        union_types: dict[str, int] = {}
        references, slots = _encoding(name)
        for fname, field in references:  # children first: a flatbuffer is built bottom-up
            item = value.get(fname)
            if item is None:
                continue
            if field["kind"] == "union":
                member, fields = item
                union_types[fname + "_type"] = _union_value(field["union"], member)
                offsets[fname] = self.table(member, fields)
            else:
                offsets[fname] = self.reference(name, field, item)
        return self._object(TABLES[name]["slots"], slots, value, offsets, union_types)

    def _object(
        self,
        count: int,
        slots: tuple[tuple[str, str, int, struct.Struct, Any], ...],
        value: dict[str, Any],
        offsets: dict[str, int],
        union_types: dict[str, int],
    ) -> int:
        """Write one table's fields and vtable: the bytes flatbuffers.Builder's StartObject, PrependSlot,
        PrependUOffsetTRelativeSlot and EndObject write (a field equal to its default omitted, each field aligned
        to its width, equal vtables shared), in one pass over the fields instead of a dozen calls each.  The
        buffer is zeroed memory written once, so alignment padding is skipped rather than written."""
        b = self.builder
        while b.head < 16 * len(slots) + 2 * count + 16:  # room for the widest fields, padding, vtable
            before = len(b.Bytes)
            b.GrowByteBuffer()
            b.head += len(b.Bytes) - before
        buf, head, size, widest = b.Bytes, b.head, len(b.Bytes), b.minalign
        start = size - head
        vtable = [0] * count
        top = -1  # the highest slot written: the vtable ends there
        for fname, kind, slot, packer, default in slots:
            if kind == "scalar":
                item = value.get(fname, default)
            elif kind == "union_type":
                item = union_types.get(fname, 0)
            elif fname in offsets:
                item = offsets[fname]
            else:
                continue
            if item == default:
                continue
            width = packer.size
            if width > widest:
                widest = width
            head -= ((head - size) & (width - 1)) + width
            if kind == "offset":  # counted from its own position
                item = size - head - item
            packer.pack_into(buf, head, item)
            vtable[slot] = size - head
            if slot > top:
                top = slot
        widest = max(widest, 4)
        head -= ((head - size) & 3) + 4  # the object's offset to its vtable, written below
        at = size - head
        entries = [at - field if field else 0 for field in vtable[: top + 1]]
        key = (*reversed(entries), at - start)
        shared = b.vtables.get(key)
        if shared is None:
            head -= 4 + 2 * len(entries)
            struct.pack_into(f"<{len(entries) + 2}H", buf, head, 4 + 2 * len(entries), at - start, *entries)
            shared = b.vtables[key] = size - head
        _I32.pack_into(buf, size - at, shared - at)
        b.head, b.minalign = head, widest
        return at

    def reference(self, table: str, field: dict[str, Any], item: Any) -> int:
        b = self.builder
        kind = field["kind"]
        if kind == "table":
            return self.table(field["table"], item)
        if kind == "string":
            return b.CreateString(item, errors="surrogateescape")
        if kind == "vector":
            dtype = _DTYPE[field["element"]]
            alignment = max(dtype.itemsize, self.alignments.get((table, field["name"]), 1))
            if not self.share_vectors or (table, field["name"]) in _UNSHARED:
                return self._vector(item, dtype, alignment)
            # Equal small vectors are written once and referenced by every table that holds one (a flatbuffer
            # may point several offsets at one vector): a per-channel tensor's zero points, all zeros, are 8 bytes
            # a channel, 5% of a weight-int8 hand_landmark_lite, and repeat at every channel count.  A list is
            # known by its values (converting it first could wrap one out of range), an array by its bytes.
            if isinstance(item, list | tuple):
                key: tuple = (dtype.str, alignment, "values", tuple(item))
            else:
                item = np.asarray(item).astype(dtype, copy=False).reshape(-1)
                if item.nbytes >= _HOLE_MIN_BYTES:
                    return self._vector(item, dtype, alignment)
                key = (dtype.str, alignment, "bytes", item.tobytes())
            offset = self.written.get(key)
            if offset is None:
                offset = self.written[key] = self._vector(item, dtype, alignment)
            return offset
        if kind == "vector_table":
            children = [self.table(field["table"], child) for child in item]
        else:
            children = [b.CreateString(child, errors="surrogateescape") for child in item]
        # The offsets in one write, as the builder's PrependUOffsetTRelative would place them one by one: the
        # vector's start is aligned and has room (StartVector), and each offset counts from its own position.
        b.StartVector(4, len(children), 4)
        count, end = len(children), b.Offset()
        b.head -= 4 * count
        struct.pack_into(f"<{count}I", b.Bytes, b.head, *(end + 4 * (count - i) - c for i, c in enumerate(children)))
        return b.EndVector()

    def _vector(self, item: Any, dtype: np.dtype, alignment: int) -> int:
        if isinstance(item, list | tuple):
            if dtype.kind in "iu" and len(item) <= _PACKED_LIST_MAX:
                with contextlib.suppress(struct.error):  # not integers in range: numpy converts, or refuses
                    code = _INTEGER_CODES[dtype.kind, dtype.itemsize]
                    return self._packed(f"<{len(item)}{code}", item, alignment)
            item = np.array(item, dtype)
        return self.numbers(np.asarray(item).astype(dtype, copy=False).reshape(-1), alignment)

    def numbers(self, array: np.ndarray, alignment: int) -> int:
        """A vector of numbers: small ones copied into the builder, large ones left as a hole to fill later."""
        b = self.builder
        array = np.ascontiguousarray(array).reshape(-1)
        self._vector_room(array.nbytes, alignment)
        b.head -= array.nbytes
        if array.nbytes >= _HOLE_MIN_BYTES:
            self.holes.append((len(b.Bytes) - b.head, array.view(np.uint8)))
        else:
            # A memoryview slice copies in place (a bytearray slice would copy the value twice).
            memoryview(b.Bytes)[b.head : b.head + array.nbytes] = memoryview(array).cast("B")
        return self._vector_length(array.size)

    def _packed(self, layout: str, values: list[Any] | tuple[Any, ...], alignment: int) -> int:
        """A short vector of Python integers packed straight into the builder (no numpy array on the way)."""
        packer = _struct(layout)
        b = self.builder
        self._vector_room(packer.size, alignment)
        packer.pack_into(b.Bytes, b.head - packer.size, *values)  # raises before anything moves
        b.head -= packer.size
        return self._vector_length(len(values))

    def _vector_room(self, nbytes: int, alignment: int) -> None:
        """What flatbuffers.Builder.StartVector does, without its calls: room and alignment for ``nbytes`` of
        elements after their uint32 length, padding skipped (the buffer is zeroed memory written once)."""
        b = self.builder
        for size in (4, alignment):
            if size > b.minalign:
                b.minalign = size
            pad = (b.head - len(b.Bytes) - nbytes) & (size - 1)
            while b.head < pad + size + nbytes:
                before = len(b.Bytes)
                b.GrowByteBuffer()
                b.head += len(b.Bytes) - before
            b.head -= pad

    def _vector_length(self, count: int) -> int:
        """What flatbuffers.Builder.EndVector does: the length before the elements (room already made)."""
        b = self.builder
        b.head -= 4
        _U32.pack_into(b.Bytes, b.head, count)
        return len(b.Bytes) - b.head

    def pieces(self) -> list[memoryview]:
        """The finished buffer as consecutive pieces: builder memory between holes, and the holes' arrays."""
        b = self.builder
        flat = memoryview(b.Bytes)[b.head :]
        end = len(flat)
        out, position = [], 0
        for distance, data in sorted(self.holes, key=lambda hole: -hole[0]):
            start = end - distance
            out += [flat[position:start], memoryview(data)]
            position = start + data.size
        out.append(flat[position:])
        return out


def _union_value(union: str, member: str) -> int:
    for value, name in UNIONS[union].items():
        if name == member:
            return int(value)
    raise EngineError(f"internal: {member} is not a member of union {union}")


def encode_pieces(
    tree: dict[str, Any],
    root: str = "Model",
    *,
    size_hint: int = 1 << 20,
    alignments: dict[tuple[str, str], int] | None = None,
    share_vectors: bool = True,
) -> list[memoryview]:
    """Encode the dict form of a table tree as a finished flatbuffer with the TFLite file identifier.

    ``alignments`` maps (table, vector field) to the byte alignment of that vector's data, e.g. 16 for
    buffer data so kernels can read it in place.  ``share_vectors``: equal small vectors of numbers (not buffer
    data) are written once, every table holding one pointing at it.  The result is the file as consecutive
    pieces, so large arrays go from their own memory to the file without an intermediate copy.
    """
    encoder = _Encoder(size_hint, alignments or {}, share_vectors)
    try:
        root_offset = encoder.table(root, tree)
        encoder.builder.Finish(root_offset, file_identifier=FILE_IDENTIFIER)
    except flatbuffers.builder.BuilderSizeError as exc:
        raise EngineError("the model's flatbuffer would exceed 2 GB; write its buffers outside it") from exc
    return encoder.pieces()


def encode(tree: dict[str, Any], root: str = "Model", **options: Any) -> bytes:
    """``encode_pieces`` joined into one ``bytes``."""
    return b"".join(encode_pieces(tree, root, **options))
