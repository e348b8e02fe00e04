"""litert-engine: post-training compression of TensorFlow Lite (LiteRT) models, working on the .tflite alone.

Every name is imported on first use (PEP 562), so ``import engine`` costs almost nothing and each command of
``python -m engine`` imports only what it runs: the security commands start without numpy, ``inspect`` without
the quantization modules and Numba.
"""

from __future__ import annotations

import importlib

from engine.errors import EngineError

__version__ = "0.1.0"

_EXPORTS = {
    "engine.format.ir": (
        "Buffer",
        "DimensionMetadata",
        "ExternalBuffer",
        "ExternalBufferGroup",
        "Metadata",
        "Model",
        "Operator",
        "OperatorCode",
        "QuantizationParams",
        "SignatureDef",
        "SparsityParams",
        "Subgraph",
        "Table",
        "Tensor",
        "TensorMap",
        "VariantSubType",
    ),
    "engine.format.reader": ("read_model",),
    "engine.format.writer": ("model_to_bytes", "structural_diff", "write_model"),
    "engine.recipe": ("Recipe",),
    "engine.registry": ("SCALE_METHODS", "load_plugin"),
    "engine.report": ("Report",),
    "engine.api": ("compress",),
    "engine.accuracy.sensitivity": ("analyze",),
    "engine.evaluation": ("evaluate",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> object:
    """Import the module of an exported name when the name is first used."""
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = ["EngineError", *sorted(_MODULE_OF)]
