"""The TFLite schema the engine supports, as data: the single source of truth for the reader and writer.

``tflite_schema.json`` lists every table (fields with vtable slot, kind, type and default), enum and union of
the TFLite FlatBuffers schema.  It is generated from the ``tflite`` package by ``generate.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA: dict[str, Any] = json.loads(Path(__file__).with_name("tflite_schema.json").read_text())
TABLES: dict[str, Any] = SCHEMA["tables"]
ENUMS: dict[str, dict[str, int]] = SCHEMA["enums"]
UNIONS: dict[str, dict[str, str]] = SCHEMA["unions"]
FILE_IDENTIFIER: bytes = SCHEMA["file_identifier"].encode()


# Per enum, value -> member name (the first member listed with that value), built on first use: op and type names
# are looked up hundreds of thousands of times while a model is compressed.
_NAMES: dict[str, dict[int, str]] = {}


def enum_name(enum: str, value: int) -> str:
    """The member name of an enum value, or the number itself when the schema does not know it."""
    names = _NAMES.get(enum)
    if names is None:
        names = {}
        for name, member in ENUMS[enum].items():
            names.setdefault(member, name)
        _NAMES[enum] = names
    name = names.get(value)
    return str(value) if name is None else name
