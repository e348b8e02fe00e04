"""Generate ``tflite_schema.json`` from the generated readers of the ``tflite`` PyPI package.

The engine never hard-codes the TFLite schema: its reader and writer walk the tables described in
``tflite_schema.json``.  That file is produced here by reading the source of the flatc-generated Python
classes (``tflite/*.py``) with ``ast``: each accessor method tells a field's vtable slot, its kind (scalar,
string, table, vector, union) and its default.  ``python -m engine.schema.generate`` rewrites the file;
``tests/test_schema.py`` regenerates it in memory and fails when the installed ``tflite`` package drifts.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("tflite_schema.json")

# flatc's Python number types -> numpy-style scalar type names used in the JSON.
_NUMBER_TYPES = {
    "BoolFlags": "bool",
    "Int8Flags": "int8",
    "Uint8Flags": "uint8",
    "Int16Flags": "int16",
    "Uint16Flags": "uint16",
    "Int32Flags": "int32",
    "Uint32Flags": "uint32",
    "Int64Flags": "int64",
    "Uint64Flags": "uint64",
    "Float32Flags": "float32",
    "Float64Flags": "float64",
}

# The generated code does not name the union enum behind a union field; these are the schema's.
_UNION_OF_FIELD = {
    ("Operator", "builtin_options"): "BuiltinOptions",
    ("Operator", "builtin_options_2"): "BuiltinOptions2",
    ("QuantizationParameters", "details"): "QuantizationDetails",
    ("DimensionMetadata", "array_segments"): "SparseIndexVector",
    ("DimensionMetadata", "array_indices"): "SparseIndexVector",
}

# The tflite package hand-patches OperatorCode.BuiltinCode to fall back to deprecated_builtin_code, which
# hides the schema default (0, ADD) from the generated code.
_DEFAULT_OVERRIDES = {("OperatorCode", "BuiltinCode"): 0}

# Field names whose snake_case form cannot be recovered from flatc's CamelCase unambiguously.
_FIELD_NAME_OVERRIDES = {"BuiltinOptions2": "builtin_options_2", "BuiltinOptions2Type": "builtin_options_2_type"}


def _snake(camel: str) -> str:
    if camel in _FIELD_NAME_OVERRIDES:
        return _FIELD_NAME_OVERRIDES[camel]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", camel).lower()


def _slot_of(node: ast.AST) -> int | None:
    """The vtable offset passed to ``self._tab.Offset(N)`` inside a method, if any."""
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr == "Offset"
            and sub.args
            and isinstance(sub.args[0], ast.Constant)
        ):
            return (sub.args[0].value - 4) // 2
    return None


def _number_type(node: ast.AST) -> str | None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in _NUMBER_TYPES:
            return _NUMBER_TYPES[sub.attr]
    return None


def _calls(node: ast.AST) -> set[str]:
    return {
        sub.func.attr for sub in ast.walk(node) if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
    }


def _imported_class(node: ast.AST) -> str | None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("tflite."):
            return sub.names[0].name
    return None


def _default(table: str, method: ast.FunctionDef) -> Any:
    """The constant returned when the field is absent (the method's last statement)."""
    if (table, method.name) in _DEFAULT_OVERRIDES:
        return _DEFAULT_OVERRIDES[table, method.name]
    last = method.body[-1]
    if isinstance(last, ast.Return) and last.value is not None:
        return ast.literal_eval(last.value)
    raise ValueError(f"cannot read the default of {method.name}")


def _field(table: str, method: ast.FunctionDef) -> dict[str, Any] | None:
    slot = _slot_of(method)
    if slot is None:
        return None
    name = method.name
    suffixes = ("AsNumpy", "Length", "IsNone")
    if name.endswith(suffixes) and not name.endswith("Type"):
        return None
    calls = _calls(method)
    takes_index = len(method.args.args) == 2
    field: dict[str, Any] = {"name": _snake(name), "id": slot}
    if "Union" in calls:
        field["kind"] = "union"
    elif takes_index:
        element = _imported_class(method)
        if element is not None:
            field.update(kind="vector_table", table=element)
        elif "String" in calls:
            field["kind"] = "vector_string"
        else:
            field.update(kind="vector", element=_number_type(method))
    elif "String" in calls:
        field["kind"] = "string"
    elif "Indirect" in calls:
        field.update(kind="table", table=_imported_class(method))
    elif "Init" in calls:
        raise ValueError(f"{table}.{name}: structs are not supported by the engine's schema walker")
    else:
        field.update(kind="scalar", type=_number_type(method), default=_default(table, method))
    if field["kind"] == "union":
        union = _UNION_OF_FIELD.get((table, field["name"]))
        if union is None:
            raise ValueError(f"{table}.{field['name']}: union field with no known union enum; extend _UNION_OF_FIELD")
        field["union"] = union
    return field


def _num_slots(tree: ast.Module, table: str) -> int:
    """The vtable size the generated builder declares with ``builder.StartObject(N)``."""
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "StartObject":
            return sub.args[0].value
    raise ValueError(f"{table}: no StartObject call")


def build_schema() -> dict[str, Any]:
    """Describe every table, enum and union of the installed ``tflite`` package."""
    package = importlib.import_module("tflite")
    root = Path(package.__file__).parent
    tables: dict[str, Any] = {}
    enums: dict[str, dict[str, int]] = {}
    for info in sorted(pkgutil.iter_modules([str(root)]), key=lambda m: m.name):
        source = (root / f"{info.name}.py").read_text()
        tree = ast.parse(source)
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == info.name]
        if not classes:
            continue
        cls = classes[0]
        methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        if not methods:
            enums[cls.name] = {
                stmt.targets[0].id: stmt.value.value
                for stmt in cls.body
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
            }
            continue
        fields = [f for f in (_field(cls.name, m) for m in methods) if f is not None]
        by_name = {f["name"]: f for f in fields}
        for f in fields:
            if f["kind"] == "union":
                type_field = by_name[f["name"] + "_type"]
                type_field["kind"] = "union_type"
                type_field.pop("default")
                type_field["union"] = f["union"]
        tables[cls.name] = {"slots": _num_slots(tree, cls.name), "fields": sorted(fields, key=lambda f: f["id"])}
    unions = {
        name: {str(value): member for member, value in members.items() if value != 0}
        for name, members in enums.items()
        if "NONE" in members and all(m in tables for m in members if m != "NONE")
    }
    return {
        "generated_from": f"tflite {package.__version__}",
        "file_identifier": "TFL3",
        "root_table": "Model",
        "tables": tables,
        "enums": {k: v for k, v in enums.items() if k not in unions},
        "unions": unions,
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_PATH.write_text(render(build_schema()))
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
