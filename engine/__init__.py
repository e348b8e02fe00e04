"""litert-engine: post-training compression of TensorFlow Lite (LiteRT) models, working on the .tflite alone."""

from engine.errors import EngineError
from engine.format.ir import (
    Buffer,
    DimensionMetadata,
    ExternalBuffer,
    ExternalBufferGroup,
    Metadata,
    Model,
    Operator,
    OperatorCode,
    QuantizationParams,
    SignatureDef,
    SparsityParams,
    Subgraph,
    Table,
    Tensor,
    TensorMap,
    VariantSubType,
)
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes, structural_diff, write_model
from engine.recipe import Recipe
from engine.registry import SCALE_METHODS, load_plugin
from engine.report import Report

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``engine.compress`` (and ``analyze``, ``evaluate``) is imported on first use: it pulls in the Numba kernels,
    ``import engine`` does not."""
    if name == "compress":
        from engine.api import compress

        return compress
    if name == "analyze":
        from engine.accuracy.sensitivity import analyze

        return analyze
    if name == "evaluate":
        from engine.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "SCALE_METHODS",
    "Buffer",
    "DimensionMetadata",
    "EngineError",
    "ExternalBuffer",
    "ExternalBufferGroup",
    "Metadata",
    "Model",
    "Operator",
    "OperatorCode",
    "QuantizationParams",
    "Recipe",
    "Report",
    "SignatureDef",
    "SparsityParams",
    "Subgraph",
    "Table",
    "Tensor",
    "TensorMap",
    "VariantSubType",
    "analyze",
    "compress",
    "evaluate",
    "load_plugin",
    "model_to_bytes",
    "read_model",
    "structural_diff",
    "write_model",
]
