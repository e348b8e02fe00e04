"""The models the benchmarks share: the MediaPipe models LiteRT runs, the photos they are scored on, and the
float32 copy ai-edge-quantizer needs to be compared with the engine at all.  Import ``harness`` first, so the
engine imported here is the worktree's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PHOTOS = 3


def real_models(names: list[str] | tuple[str, ...] | None = None) -> dict[str, Path]:
    """The MediaPipe models LiteRT runs (no custom ops), by name in sorted order; only ``names`` when given."""
    from engine.zoo import CUSTOM_OP_MODELS, mediapipe_models

    models = {n: p for n, p in sorted(mediapipe_models().items()) if n not in CUSTOM_OP_MODELS}
    if names is None:
        return models
    unknown = sorted(set(names) - set(models))
    if unknown:
        raise SystemExit(f"unknown or not runnable model(s): {', '.join(unknown)} (choose from {', '.join(models)})")
    return {n: models[n] for n in names}


def judged_models(names: list[str] | None, tmp: Path) -> dict[str, tuple[Path, tuple[float, float]]]:
    """The MediaPipe models LiteRT runs and the MobileNet-sized net of benchmarks/full_integer.py (built into
    ``tmp``), each with its input's pixel range; only ``names`` when given."""
    from engine.zoo import CUSTOM_OP_MODELS, INPUT_RANGES, MODEL_SHA256, mediapipe_model

    models = {n: (mediapipe_model(n), INPUT_RANGES[n]) for n in sorted(MODEL_SHA256) if n not in CUSTOM_OP_MODELS}
    if names is None or "mobilenet_v1_224" in names:
        from full_integer import build_mobilenet

        path = tmp / "mobilenet_v1_224.tflite"
        build_mobilenet(path)
        models["mobilenet_v1_224"] = (path, (-1.0, 1.0))
    return {n: v for n, v in models.items() if names is None or n in names}


def photo_inputs(name: str, path: Path, count: int = PHOTOS) -> list[np.ndarray]:
    """Photos 0..count-1 (``engine.zoo.photo_input``) in the pixel range of ``name``, whose one input is an image."""
    from engine import read_model
    from engine.zoo import INPUT_RANGES, photo_input

    model = read_model(path)
    if len(model.main.inputs) != 1:
        raise SystemExit(f"{name}: expected one image input, found {len(model.main.inputs)}")
    shape = model.main.inputs[0].shape
    return [photo_input(shape, "float32", i, value_range=INPUT_RANGES[name]) for i in range(count)]


def float32_copy(source: Path, output: Path, signature: str | None = None) -> dict[str, Any]:
    """Write the copy of ``source`` that ai-edge-quantizer can quantize: constant decoders folded to float32,
    ``builtin_code`` filled in, and with ``signature`` a signature def of that name over every input and output
    (named as the tensors).

    Why: the quantizer quantizes constant float32 weights only, not float16 (or sparse) ones behind DEQUANTIZE
    (DENSIFY), as MediaPipe stores them; it reads an op's type from ``builtin_code`` only, which older files
    leave at 0 (ADD) with the real code in ``deprecated_builtin_code``; and it calibrates by signature.  The copy
    computes what the original does (both decoders are exact).
    """
    from engine.format.ir import SignatureDef, TensorMap
    from engine.format.reader import read_model
    from engine.format.writer import write_model
    from engine.passes.fold import fold_constant_decoders

    model, folded = fold_constant_decoders(read_model(source))
    unset = 0
    for code in model.operator_codes:
        unset += code.builtin_code < code.deprecated_builtin_code
        code.builtin_code = max(code.builtin_code, code.deprecated_builtin_code)
    sg = model.main
    original_signatures = len(model.signature_defs or [])
    if signature is not None:
        inputs, outputs = [TensorMap(t.name, t) for t in sg.inputs], [TensorMap(t.name, t) for t in sg.outputs]
        model.signature_defs = [SignatureDef(sg, inputs, outputs, signature)]
    write_model(model, output)
    return {
        "folded_decoders": len(folded),
        "opcodes_builtin_code_filled": unset,
        "original_signature_defs": original_signatures,
        "ops": len(sg.operators),
    }
