"""An independent view of a .tflite file through the ``tflite`` package's generated readers.

Used to check the engine's writer against code it does not share: every field of the schema the ``tflite``
package knows (an older one than the engine's) is read with the generated accessor of the same name, and
buffer indices are replaced by the bytes they point at, so two files that differ only in buffer numbering or
storage (inline vs offset/size) dump equal.  A union member the package does not know (e.g. blockwise
quantization details) dumps as its number alone.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import tflite

from engine.format.schema.generate import TFLITE, build_schema

_LAYOUT_FIELDS = {("Buffer", "offset"), ("Buffer", "size"), ("Model", "buffers")}
_LARGE = ("large_custom_options_offset", "large_custom_options_size")


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


@cache
def tflite_schema() -> dict[str, Any]:
    """The schema as the ``tflite`` package's generated readers know it."""
    return build_schema(TFLITE)


class _Dumper:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.model = tflite.Model.GetRootAs(data, 0)
        self.tables = tflite_schema()["tables"]
        self.unions = tflite_schema()["unions"]

    def buffer_bytes(self, index: int) -> bytes | None:
        if index == 0:
            return None
        buf = self.model.Buffers(index)
        if buf.Offset() > 1:
            return self.data[buf.Offset() : buf.Offset() + buf.Size()]
        return b"" if buf.DataIsNone() else buf.DataAsNumpy().tobytes()

    def table(self, name: str, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in self.tables[name]["fields"]:
            fname, kind = field["name"], field["kind"]
            if (name, fname) in _LAYOUT_FIELDS or kind == "union_type" or fname in _LARGE:
                continue
            getter = getattr(obj, _camel(fname))
            if kind == "scalar":
                value = getter()
                if (name, fname) in (("Tensor", "buffer"), ("Metadata", "buffer")):
                    value = self.buffer_bytes(value)
                out[fname] = value
            elif kind == "string":
                out[fname] = getter()
            elif kind == "table":
                sub = getter()
                out[fname] = None if sub is None else self.table(field["table"], sub)
            elif kind == "union":
                number = getattr(obj, _camel(fname) + "Type")()
                member = self.unions[field["union"]].get(str(number))
                tab = getter()
                if tab is None:
                    out[fname] = None
                elif member is None:
                    out[fname] = (f"#{number}", None)
                else:
                    sub = getattr(tflite, member)()
                    sub.Init(tab.Bytes, tab.Pos)
                    out[fname] = (member, self.table(member, sub))
            elif getattr(obj, _camel(fname) + "IsNone")():
                out[fname] = None
            elif kind == "vector":
                values = getattr(obj, _camel(fname) + "AsNumpy")()
                out[fname] = np.asarray(values).tolist()
            else:
                n = getattr(obj, _camel(fname) + "Length")()
                items = [getter(j) for j in range(n)]
                out[fname] = [self.table(field["table"], x) for x in items] if kind == "vector_table" else items
        if name == "Operator" and obj.LargeCustomOptionsSize() > 0:
            start = obj.LargeCustomOptionsOffset()
            out["custom_options"] = list(self.data[start : start + obj.LargeCustomOptionsSize()])
        if name == "Model" and out.get("metadata_buffer") is not None:
            out["metadata_buffer"] = [self.buffer_bytes(i) for i in out["metadata_buffer"]]
        return out


def dump(data: bytes) -> dict[str, Any]:
    """Every schema field of the file, read by the ``tflite`` package, with buffers resolved to bytes."""
    dumper = _Dumper(data)
    return dumper.table("Model", dumper.model)
