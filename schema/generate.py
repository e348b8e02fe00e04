"""Generate ``tflite_schema.json`` from flatc's Python output for the TFLite schema.

The engine never hard-codes the TFLite schema: its reader and writer walk the tables described in
``tflite_schema.json``.  That file is produced here by reading the source of the flatc-generated Python
classes with ``ast``: each accessor method tells a field's vtable slot, its kind (scalar, string, table,
vector, union) and its default.  The source is the newest schema available, the one ``ai-edge-litert``
ships as a single module (``ai_edge_litert/schema_py_generated.py``, every class in one file, object-API
``...T`` classes included, which are skipped).  The older ``tflite`` package (one module per class) is read
the same way; the tests use it to check that the JSON only ever adds to what it knew.
``python -m engine.format.schema.generate`` rewrites the file; ``tests/format/test_schema.py`` regenerates it in
memory and fails when the installed ``ai-edge-litert`` drifts.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("tflite_schema.json")


@dataclass(frozen=True)
class Source:
    """flatc Python output inside an installed distribution: one ``.py`` file, or a package of one per class."""

    distribution: str
    path: str


LITERT = Source("ai-edge-litert", "ai_edge_litert/schema_py_generated.py")
TFLITE = Source("tflite", "tflite")

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


def _table_class(node: ast.AST, tables: set[str]) -> str | None:
    """The table a reference accessor instantiates (``obj = Tensor()``), in either layout."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in tables:
            return sub.func.id
    return None


def _default(table: str, method: ast.FunctionDef) -> Any:
    """The constant returned when the field is absent (the method's last statement)."""
    if (table, method.name) in _DEFAULT_OVERRIDES:
        return _DEFAULT_OVERRIDES[table, method.name]
    last = method.body[-1]
    if isinstance(last, ast.Return) and last.value is not None:
        return ast.literal_eval(last.value)
    raise ValueError(f"cannot read the default of {method.name}")


def _takes_index(method: ast.FunctionDef) -> bool:
    """Vector accessors take the element index: ``def Shape(self, j)``."""
    return len(method.args.args) == 2


def _is_vector_helper(name: str, methods: dict[str, ast.FunctionDef]) -> bool:
    """``ShapeLength``, ``ShapeAsNumpy``, ``ShapeIsNone`` serve vector ``Shape``; a field may be called ``Length``."""
    for suffix in ("AsNumpy", "Length", "IsNone"):
        base = methods.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
        if base is not None and _takes_index(base):
            return True
    return False


def _field(
    table: str, method: ast.FunctionDef, methods: dict[str, ast.FunctionDef], tables: set[str]
) -> dict[str, Any] | None:
    """The description of the field a table method reads, or None when the method is not a field accessor."""
    slot = _slot_of(method)
    if slot is None or _is_vector_helper(method.name, methods):
        return None
    name = method.name
    calls = _calls(method)
    takes_index = _takes_index(method)
    field: dict[str, Any] = {"name": _snake(name), "id": slot}
    if "Union" in calls:
        field["kind"] = "union"
    elif takes_index:
        element = _table_class(method, tables)
        if element is not None:
            field.update(kind="vector_table", table=element)
        elif "String" in calls:
            field["kind"] = "vector_string"
        else:
            field.update(kind="vector", element=_number_type(method))
    elif "String" in calls:
        field["kind"] = "string"
    elif "Indirect" in calls:
        field.update(kind="table", table=_table_class(method, tables))
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


def _num_slots(start: ast.FunctionDef) -> int:
    """The vtable size the generated ``<Table>Start`` function declares with ``builder.StartObject(N)``."""
    for sub in ast.walk(start):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "StartObject":
            return sub.args[0].value
    raise ValueError(f"{start.name}: no StartObject call")


def _check_against_builder(table: str, fields: list[dict[str, Any]], functions: dict[str, ast.FunctionDef]) -> None:
    """Cross-check the accessors with the builder: ``<Table>Add<Field>`` sets slot N for exactly these fields."""
    prefix = f"{table}Add"
    from_builder = {}
    for name, function in functions.items():
        if name.startswith(prefix) and name[len(prefix) :][:1].isupper():
            slot = next(
                c.args[0].value
                for c in ast.walk(function)
                if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr.endswith("Slot")
            )
            from_builder[_snake(name[len(prefix) :])] = slot
    from_accessors = {f["name"]: f["id"] for f in fields}
    if from_builder != from_accessors:
        raise ValueError(f"{table}: accessors give fields {from_accessors}, the builder {from_builder}")


def _read(source: Source) -> tuple[str, list[ast.Module]]:
    """The distribution's version and its parsed flatc modules, found through its metadata (nothing imported)."""
    dist = importlib.metadata.distribution(source.distribution)
    location = Path(str(dist.locate_file(source.path)))
    files = [location] if location.suffix == ".py" else sorted(location.glob("*.py"))
    if not files:
        raise ValueError(f"{source.distribution}: no flatc Python output at {location}")
    return dist.version, [ast.parse(f.read_text()) for f in files]


def build_schema(source: Source = LITERT) -> dict[str, Any]:
    """Describe every table, enum and union of the schema in ``source``.

    A class with no methods is an enum; a class with an ``Init`` method and a module-level ``<Name>Start``
    function is a table.  Everything else (object-API ``...T`` classes, helpers) is not part of the wire format.
    """
    version, modules = _read(source)
    classes = [node for tree in modules for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = {node.name: node for tree in modules for node in tree.body if isinstance(node, ast.FunctionDef)}
    enums: dict[str, dict[str, int]] = {}
    table_classes: dict[str, ast.ClassDef] = {}
    for cls in classes:
        methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
        if not methods:
            enums[cls.name] = {
                stmt.targets[0].id: stmt.value.value
                for stmt in cls.body
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
            }
        elif "Init" in methods and f"{cls.name}Start" in functions:
            table_classes[cls.name] = cls
    names = set(table_classes)
    tables: dict[str, Any] = {}
    for name in sorted(table_classes):
        methods = {n.name: n for n in table_classes[name].body if isinstance(n, ast.FunctionDef)}
        fields = [f for f in (_field(name, m, methods, names) for m in methods.values()) if f is not None]
        _check_against_builder(name, fields, functions)
        by_name = {f["name"]: f for f in fields}
        for f in fields:
            if f["kind"] == "union":
                type_field = by_name[f["name"] + "_type"]
                type_field["kind"] = "union_type"
                type_field.pop("default")
                type_field["union"] = f["union"]
        slots = _num_slots(functions[f"{name}Start"])
        tables[name] = {"slots": slots, "fields": sorted(fields, key=lambda f: f["id"])}
    unions = {
        name: {str(value): member for member, value in members.items() if value != 0}
        for name, members in enums.items()
        if "NONE" in members and all(m in tables for m in members if m != "NONE")
    }
    return {
        "generated_from": f"{source.distribution} {version}",
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
