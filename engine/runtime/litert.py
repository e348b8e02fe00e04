"""Run models in the official LiteRT interpreter, in the two runtimes users have.

``default`` is the interpreter exactly as users build it (``Interpreter(model_path=...)``, which applies the
XNNPACK delegate); ``builtin`` the builtin kernels alone (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), which some
users run and which alone can keep every intermediate tensor.  Load and run errors become one-line
`InterpreterError`s naming the model.  Quantized (int8/uint8/int16 with a scale) inputs take float data
quantized with the tensor's (scale, zero_point).  Validation, calibration and latency measurement build on this.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.quant.metrics import dequantize_array, quantize_array

ModelSource = str | Path | bytes
InputData = dict[str, np.ndarray] | np.ndarray | None

RUNTIMES = ("default", "builtin")
RUNTIME_TITLES = {"default": "default runtime (XNNPACK)", "builtin": "builtin kernels"}
RUNTIME_CHOICES = ("both", *RUNTIMES)  # what `validate`'s runtime= (and --runtime) takes

_QUANT_DTYPES = (np.int8, np.uint8, np.int16)


class InterpreterError(EngineError):
    """The interpreter refused to load or run the model ``label`` names.  `validate` records it as that runtime's
    result instead of stopping: a model that runs in one runtime and not the other is what it must report."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


def interpreter(
    model: ModelSource, label: str, *, preserve_all: bool, num_threads: int = 1, xnnpack: bool = False
) -> Any:
    """Build an interpreter, turning load errors into one-line `InterpreterError`s.

    ``xnnpack``: the default runtime, built exactly as ``Interpreter(model_path=...)`` (or ``model_content``)
    with ``num_threads``, so XNNPACK is applied as users get it; otherwise the builtin kernels alone, which can
    also keep every intermediate tensor (``preserve_all``).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        raise EngineError(
            "running a model (calibration, validation, latency) needs LiteRT: pip install 'litert-engine[validate]' "
            "(ai-edge-litert); weight compression alone does not"
        ) from exc
    if xnnpack and preserve_all:
        raise ValueError("intermediate tensors are only kept by the builtin kernels")
    source = {"model_content": bytes(model)} if isinstance(model, bytes | bytearray) else {"model_path": str(model)}
    if "model_path" in source and not Path(source["model_path"]).is_file():
        raise EngineError(f"{label}: file not found")
    builtin = {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "experimental_preserve_all_tensors": preserve_all,
    }
    try:
        interp = Interpreter(**source, num_threads=num_threads, **({} if xnnpack else builtin))
        with _native_stderr_silenced():
            interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise _load_error(exc, label) from exc
    return interp


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """LiteRT's C++ code writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to stderr (fd 2) when
    it applies XNNPACK, which would break the command line's promise of one ``error:`` line on stderr; its
    errors come back as exceptions, so nothing else is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load_error(exc: Exception, label: str) -> InterpreterError:
    custom = sorted(set(re.findall(r"unresolved custom op: (\w+)", str(exc))))
    if custom:
        return InterpreterError(f"{label} uses custom op(s) the interpreter cannot run: {', '.join(custom)}", label)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InterpreterError(f"{label}: interpreter error: {first}", label)


def model_label(model: ModelSource, role: str) -> str:
    return f"{role} ({len(model)} bytes)" if isinstance(model, bytes | bytearray) else f"{role} {model}"


def quantization_of(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a quantized integer tensor, None for float and plain integer tensors."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]) in _QUANT_DTYPES and scale != 0.0:
        return float(scale), int(zero_point)
    return None


def as_float(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Tensor values in float64, dequantized when the tensor is quantized."""
    q = quantization_of(detail)
    return dequantize_array(values, *q) if q else np.asarray(values, np.float64)


def _generate(detail: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Seeded stand-in data for an input: floats in [-1, 1], full-range small ints, small indices."""
    shape = tuple(int(d) for d in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype in _QUANT_DTYPES:
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, shape).astype(dtype)
    raise EngineError(f"cannot generate data for input {detail['name']!r} of dtype {dtype}; pass data")


def input_data(details: list[dict[str, Any]], data: InputData, label: str, seed: int) -> dict[str, np.ndarray]:
    """Match user data to the model inputs by name, or generate it; shapes are checked at invoke."""
    names = [d["name"] for d in details]
    if data is None:
        rng = np.random.default_rng(seed)
        return {d["name"]: _generate(d, rng) for d in details}
    if not isinstance(data, dict):
        if len(details) != 1:
            raise EngineError(f"{label} has {len(details)} inputs ({', '.join(names)}); pass data keyed by name")
        data = {names[0]: data}
    unknown = sorted(set(data) - set(names))
    missing = [n for n in names if n not in data]
    if unknown:
        raise EngineError(f"data for unknown input(s) {', '.join(unknown)}; {label} has {', '.join(names)}")
    if missing:
        raise EngineError(f"no data for input(s) {', '.join(missing)} of {label}")
    return {d["name"]: np.asarray(data[d["name"]]) for d in details}


def cast_input(arr: np.ndarray, source: dict[str, Any], target: dict[str, Any]) -> np.ndarray:
    """Convert data prepared for tensor `source` into the dtype of tensor `target`.

    Integer data in a quantized source's own dtype is taken as already quantized: it passes through
    when the target has the same dtype and parameters, and is dequantized first otherwise.
    """
    dtype = np.dtype(target["dtype"])
    src_q, dst_q = quantization_of(source), quantization_of(target)
    if src_q and arr.dtype == np.dtype(source["dtype"]):
        if dst_q == src_q and dtype == arr.dtype:
            return arr
        arr = dequantize_array(arr, *src_q)
    if dst_q and arr.dtype.kind == "f":
        return quantize_array(arr, *dst_q, dtype)
    return arr.astype(dtype, copy=False)


def match_tensors(ref: list[dict[str, Any]], cand: list[dict[str, Any]], what: str) -> list[tuple[dict, dict]]:
    """Match reference and candidate tensors by name, or by position when names differ."""
    by_name = {d["name"]: d for d in cand}
    if {d["name"] for d in ref} == set(by_name) and len(by_name) == len(cand):
        return [(d, by_name[d["name"]]) for d in ref]
    if len(ref) == len(cand):
        return list(zip(ref, cand, strict=True))
    raise EngineError(
        f"reference has {len(ref)} {what}s ({', '.join(d['name'] for d in ref)}) but candidate has "
        f"{len(cand)} ({', '.join(d['name'] for d in cand)})"
    )


def invoke(interp: Any, feeds: list[tuple[dict[str, Any], np.ndarray]], label: str) -> None:
    """Resize dynamic inputs to the data, set them, and run one inference."""
    resized = False
    for detail, arr in feeds:
        fixed = [int(s) for s in detail["shape_signature"]]
        if arr.ndim != len(fixed) or any(f not in (-1, a) for f, a in zip(fixed, arr.shape, strict=True)):
            raise EngineError(f"input {detail['name']!r} of {label} expects shape {fixed}, got {list(arr.shape)}")
        if tuple(detail["shape"]) != arr.shape:
            interp.resize_tensor_input(detail["index"], list(arr.shape), strict=True)
            resized = True
    try:
        if resized:
            interp.allocate_tensors()
        for detail, arr in feeds:
            interp.set_tensor(detail["index"], arr)
        interp.invoke()
    except (RuntimeError, ValueError) as exc:
        raise _load_error(exc, label) from exc


def run(model: ModelSource, inputs: InputData, *, num_threads: int = 1, xnnpack: bool = False) -> dict[str, np.ndarray]:
    """Run one inference and return the raw outputs keyed by output tensor name.

    `inputs` is a dict keyed by input name (or one array for a single-input model); float data for
    a quantized input is quantized with the tensor's parameters.  ``xnnpack`` runs with the interpreter's
    default delegate instead of the builtin kernels.
    """
    label = model_label(model, "model")
    interp = interpreter(model, label, preserve_all=False, num_threads=num_threads, xnnpack=xnnpack)
    details = interp.get_input_details()
    data = input_data(details, inputs, label, seed=0)
    invoke(interp, [(d, cast_input(data[d["name"]], d, d)) for d in details], label)
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
