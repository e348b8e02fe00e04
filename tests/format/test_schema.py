"""schema/tflite_schema.json is the single source of truth; it must match the installed ai-edge-litert schema."""

from __future__ import annotations

import importlib.metadata
import json

from engine.format.schema import ENUMS, SCHEMA, TABLES, UNIONS
from engine.format.schema.generate import LITERT, SCHEMA_PATH, build_schema, render
from tests.tflite_dump import tflite_schema


def test_schema_file_matches_the_installed_ai_edge_litert() -> None:
    fresh = build_schema(LITERT)
    assert fresh["generated_from"] == f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    assert render(fresh) == SCHEMA_PATH.read_text(), "schema drift: run `python -m engine.format.schema.generate`"
    assert json.loads(render(fresh)) == SCHEMA


def test_schema_extends_the_tflite_package_schema_without_changing_it() -> None:
    """Every table, field (same slot, kind, type, default), enum member and union member tflite 2.18 knows."""
    old = tflite_schema()
    assert old["generated_from"] == "tflite 2.18.0"
    for name, table in old["tables"].items():
        assert TABLES[name]["slots"] >= table["slots"], name
        fields = {f["id"]: f for f in TABLES[name]["fields"]}
        for field in table["fields"]:
            assert fields.get(field["id"]) == field, f"{name}.{field['name']}"
    for name, members in old["enums"].items():
        assert ENUMS[name].items() >= members.items(), name
    for name, members in old["unions"].items():
        assert UNIONS[name].items() >= members.items(), name
    # What is new matters for quantized models: sub-byte types and blockwise scales.
    new_types = ENUMS["TensorType"].keys() - old["enums"]["TensorType"].keys()
    assert {"INT2", "UINT4"} <= new_types
    assert UNIONS["QuantizationDetails"]["2"] == "BlockwiseQuantization"
    assert "BlockwiseQuantization" not in old["tables"]


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
    # A field named like a vector helper (ExternalBuffer.length, not a "...Length" accessor) is a field.
    assert [f["name"] for f in TABLES["ExternalBuffer"]["fields"]] == ["id", "group", "offset", "length", "packing"]
    blockwise = {f["name"]: f["kind"] for f in TABLES["BlockwiseQuantization"]["fields"]}
    assert blockwise == {"scales": "scalar", "zero_points": "scalar", "block_size": "scalar", "block_shape": "vector"}
