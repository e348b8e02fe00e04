"""litert-engine: post-training compression of TensorFlow Lite (LiteRT) models, working on the .tflite alone."""

from engine.errors import EngineError
from engine.ir import (
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
from engine.reader import read_model
from engine.writer import model_to_bytes, structural_diff, write_model

__version__ = "0.1.0"

__all__ = [
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
    "SignatureDef",
    "SparsityParams",
    "Subgraph",
    "Table",
    "Tensor",
    "TensorMap",
    "VariantSubType",
    "model_to_bytes",
    "read_model",
    "structural_diff",
    "write_model",
]
