"""What a model holds: ``python -m engine inspect`` (here, so that it imports only the reader and this), and what a
compression run changed."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from engine.format.ir import Model, Tensor, all_tensors
from engine.format.reader import read_model
from engine.secure import cli as secure_cli


def _tensor_brief(t: Tensor) -> dict[str, Any]:
    brief: dict[str, Any] = {"name": t.name, "shape": list(t.shape or ()), "dtype": t.type_name}
    if t.shape_signature is not None and any(d < 0 for d in t.shape_signature):
        brief["shape_signature"] = list(t.shape_signature)
    q = t.quantization
    if q is not None and q.scale is not None and q.scale.size:
        brief["quantization"] = {
            "scale": q.scale.tolist() if q.scale.size <= 4 else f"{q.scale.size} per-channel scales",
            "zero_point": q.zero_point.tolist() if q.zero_point is not None and q.zero_point.size <= 4 else "...",
            "quantized_dimension": q.quantized_dimension,
        }
    return brief


def _elements(t: Tensor) -> int:
    """Logical (dense) element count of a constant: what the weights represent, however they are stored."""
    return int(np.prod(t.shape, dtype=np.int64)) if t.shape is not None else 0


def stored_bytes(t: Tensor) -> int:
    """Bytes of a constant's data in the file (in the file's external buffer, if it lives there)."""
    return t.external_buffer.length if t.external_buffer is not None else int(t.buffer.data.size)


def constant_bytes_by_dtype(model: Model) -> dict[str, int]:
    """Bytes of constant data by stored type, types in sorted order: ``summarize``'s ``constants_by_dtype``
    without the rest of the summary, for a report made on every build of the accuracy search."""
    by_dtype: Counter[str] = Counter()
    for sg in model.subgraphs:
        for t in all_tensors(sg):
            if t.is_constant:
                by_dtype[t.type_name] += stored_bytes(t)
    return dict(sorted(by_dtype.items()))


def summarize(model: Model, file_size: int | None = None) -> dict[str, Any]:
    """A JSON-ready description of the model: graph interface, ops, constants by dtype, sparsity, metadata."""
    ops: Counter[str] = Counter()
    custom: Counter[str] = Counter()
    by_dtype: dict[str, dict[str, int]] = {}
    sparse = []
    parameters = 0
    subgraphs = []
    for sg in model.subgraphs:
        tensors = all_tensors(sg)
        for op in sg.operators:
            ops[op.name] += 1
            if op.opcode.is_custom:
                custom[op.name] += 1
        for t in tensors:
            if not t.is_constant:
                continue
            stored = stored_bytes(t)
            entry = by_dtype.setdefault(t.type_name, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += stored
            parameters += _elements(t)
            if t.sparsity is not None:
                sparse.append({"name": t.name, "shape": list(t.shape or ()), "stored_bytes": stored})
        subgraphs.append(
            {
                "name": sg.name,
                "tensors": len(tensors),
                "operators": len(sg.operators),
                "inputs": [_tensor_brief(t) for t in sg.inputs],
                "outputs": [_tensor_brief(t) for t in sg.outputs],
            }
        )
    return {
        "file_bytes": file_size,
        "version": model.version,
        "description": model.description,
        "subgraphs": subgraphs,
        "operators": dict(ops.most_common()),
        "custom_ops": dict(custom.most_common()),
        "constants_by_dtype": dict(sorted(by_dtype.items())),
        "constant_bytes": sum(e["bytes"] for e in by_dtype.values()),
        "parameters": parameters,
        "sparse_tensors": sparse,
        "metadata": [
            {"name": m.name, "bytes": 0 if m.buffer is None else int(m.buffer.data.size)} for m in model.metadata or []
        ],
        "signatures": [
            {
                "key": s.signature_key,
                "inputs": [m.name for m in s.inputs or []],
                "outputs": [m.name for m in s.outputs or []],
            }
            for s in model.signature_defs or []
        ],
    }


def _io_line(t: dict[str, Any]) -> str:
    line = f"    {t['name']}: {t['dtype']}{t['shape']}"
    if "shape_signature" in t:
        line += f" (dynamic {t['shape_signature']})"
    if "quantization" in t:
        q = t["quantization"]
        line += f" scale={q['scale']} zero_point={q['zero_point']}"
    return line


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as readable text."""
    lines = []
    if summary["file_bytes"] is not None:
        lines.append(f"file: {summary['file_bytes']:,} bytes, schema version {summary['version']}")
    if summary["description"]:
        lines.append(f"description: {summary['description']}")
    for i, sg in enumerate(summary["subgraphs"]):
        lines.append(f"subgraph {i} {sg['name'] or ''}: {sg['tensors']} tensors, {sg['operators']} operators")
        lines.append("  inputs:")
        lines += [_io_line(t) for t in sg["inputs"]]
        lines.append("  outputs:")
        lines += [_io_line(t) for t in sg["outputs"]]
    lines.append("operators: " + ", ".join(f"{name} x{n}" for name, n in summary["operators"].items()))
    if summary["custom_ops"]:
        lines.append("custom ops: " + ", ".join(f"{name} x{n}" for name, n in summary["custom_ops"].items()))
    lines.append(f"parameters: {summary['parameters']:,} in {summary['constant_bytes']:,} bytes of constants")
    for dtype, entry in summary["constants_by_dtype"].items():
        lines.append(f"  {dtype:<8} {entry['tensors']:>5} tensors {entry['bytes']:>12,} bytes")
    if summary["sparse_tensors"]:
        stored = sum(s["stored_bytes"] for s in summary["sparse_tensors"])
        lines.append(f"sparse tensors: {len(summary['sparse_tensors'])} ({stored:,} bytes stored)")
    if summary["metadata"]:
        lines.append("metadata: " + ", ".join(f"{m['name']} ({m['bytes']} bytes)" for m in summary["metadata"]))
    if "embedded_signature" in summary:  # added by inspect (engine.secure.embedded.describe)
        signed = summary["embedded_signature"]
        signer = f"key sha256:{signed['signer_key_sha256']}" if signed["signer_key_sha256"] else "unknown"
        lines.append(f"signed (embedded model_signing bundle): signer {signer}; status: {signed['status']}")
    for s in summary["signatures"]:
        lines.append(f"signature {s['key']}: inputs {s['inputs']} outputs {s['outputs']}")
    if not summary["signatures"]:
        lines.append("signatures: none")
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    model = read_model(args.model)
    summary = summarize(model, Path(args.model).stat().st_size)
    signature = secure_cli.signature_summary(args.model, model)
    if signature is not None:
        summary["embedded_signature"] = signature
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def add_parsers(commands: Any) -> None:
    """Add inspect to the ``python -m engine`` subcommands."""
    p = commands.add_parser("inspect", help="describe a .tflite model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_inspect)
