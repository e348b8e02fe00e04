"""schema/tflite_schema.json is the single source of truth; it must match the installed tflite package."""

from __future__ import annotations

import json

import tflite

from engine.schema import SCHEMA, TABLES, UNIONS
from engine.schema.generate import SCHEMA_PATH, build_schema, render


def test_schema_file_matches_the_installed_tflite_package() -> None:
    fresh = build_schema()
    assert fresh["generated_from"] == f"tflite {tflite.__version__}"
    assert render(fresh) == SCHEMA_PATH.read_text(), "schema drift: run `python -m engine.schema.generate`"
    assert json.loads(render(fresh)) == SCHEMA


def test_schema_describes_the_tables_the_engine_relies_on() -> None:
    tensor = {f["name"]: f for f in TABLES["Tensor"]["fields"]}
    assert tensor["shape"] == {"name": "shape", "id": 0, "kind": "vector", "element": "int32"}
    assert tensor["buffer"]["type"] == "uint32"
    buffer = {f["name"]: f for f in TABLES["Buffer"]["fields"]}
    assert set(buffer) == {"data", "offset", "size"}
    assert UNIONS["BuiltinOptions"]["1"] == "Conv2DOptions"
    # Every union member is a table the walker can decode.
    assert all(member in TABLES for members in UNIONS.values() for member in members.values())
    # Deprecated slots are gaps the reader refuses when set (e.g. SignatureDef's old method_name).
    assert TABLES["SignatureDef"]["slots"] == 5
    assert 3 not in {f["id"] for f in TABLES["SignatureDef"]["fields"]}
