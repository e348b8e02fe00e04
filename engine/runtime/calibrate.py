"""Calibration: run representative samples through the float model and record each activation's range.

Full-integer quantization needs a (scale, zero point) for every tensor the model computes, which only the
values those tensors take on real inputs can give.  ``calibrate`` streams the samples one at a time through an
``Executor`` (LiteRT: XNNPACK on a copy whose outputs include the watched tensors, else the builtin kernels
keeping every intermediate), and feeds each watched tensor's values to its ``Observer`` (engine.quant.observers), so
memory does not grow with the number of samples.

The executor is a small interface (run one sample, read a tensor by index), so another runtime can replace
LiteRT without touching the rest.  One that can lend a tensor's buffer without a copy may also offer
``borrow(index)`` (LiteRTExecutor does), which the observers then read.

``load_samples`` reads and checks sample data for calibration and for validation (``--data``) alike: one
format, one loader, one set of errors.
"""

from __future__ import annotations

import copy
import hashlib
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Model, Table, Tensor, all_tensors
from engine.format.reader import release_pages
from engine.format.writer import model_to_bytes
from engine.progress import track
from engine.quant.metrics import quantize_array
from engine.quant.observers import Observer
from engine.remembered import digest
from engine.runtime.litert import interpreter

# A zip member's local header before its name and extra field; the readers of the .npy headers by format version.
_LOCAL_HEADER = 30
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# Values the finiteness check of sample data reads at a time.
_FINITE_CHUNK = 1 << 20


class Executor(Protocol):
    """Runs one model on one sample at a time and exposes every tensor it computed, by tensor index."""

    def run(self, feeds: dict[int, np.ndarray]) -> None:
        """Run one inference with these values for the input tensors (by index)."""

    def tensor(self, index: int) -> np.ndarray:
        """The value tensor ``index`` of the main subgraph took in the last run."""


class LiteRTExecutor:
    """The official interpreter.  ``xnnpack``: its default XNNPACK delegate, which computes only what a graph
    output needs, so the tensors to read must be graph outputs (``calibrate`` makes them so); otherwise the
    builtin kernels with every intermediate tensor kept, about 4x slower on conv nets."""

    def __init__(self, model: bytes, xnnpack: bool = False, num_threads: int = min(4, os.cpu_count() or 1)) -> None:
        self._interpreter = interpreter(
            model, "float model", preserve_all=not xnnpack, num_threads=num_threads, xnnpack=xnnpack
        )

    def run(self, feeds: dict[int, np.ndarray]) -> None:
        for index, value in feeds.items():
            self._interpreter.set_tensor(index, value)
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            if "reference to internal data" in str(exc):  # LiteRT's refusal while a ``borrow``ed buffer is held
                raise EngineError(
                    "calibration: values lent to an observer's update() were kept past the sample (the "
                    "interpreter's own buffer): an observer must copy what it keeps (np.array(values))"
                ) from None
            raise EngineError(f"float model: interpreter error during calibration: {exc}") from exc

    def tensor(self, index: int) -> np.ndarray:
        return self._interpreter.get_tensor(index)

    def borrow(self, index: int) -> np.ndarray:
        """``tensor(index)`` without a copy, for a reader that keeps no reference to it (the observers): the
        interpreter's own buffer, valid until the next run (``get_tensor`` copies: about 0.1 s of calibrating a
        MobileNet on 100 samples).  LiteRT refuses the next run while a reference to it is left."""
        return self._interpreter.tensor(index)()


class InputSpec(NamedTuple):
    """One model input as samples must fit it.  ``shape`` may hold -1 for a dynamic dimension; ``quantization``
    is the (scale, zero point) of an integer input that takes float samples, quantized with them."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: tuple[float, int] | None = None


@dataclass
class CalibrationData:
    """Samples for each graph input, checked against it: ``arrays[name][i]`` is sample i, in the input's rank."""

    arrays: dict[str, np.ndarray]
    count: int
    inputs: list[InputSpec]
    # With a dict: what the samples gave on a model, kept for the next build from the same model (the accuracy
    # search builds many candidates from one float model): observers fed every sample, by ("observer", model
    # fingerprint, tensor name, observer spec), and layer inputs, by ("layer inputs", fingerprint, weight name).
    remembered: dict[tuple[str, ...], Any] | None = None

    def sample(self, i: int) -> list[np.ndarray]:
        """Sample ``i`` of every input, in input order, as the input takes it (float data for a quantized input
        quantized with its parameters)."""
        values = []
        for spec in self.inputs:
            value = self.arrays[spec.name][i]
            if spec.quantization is not None and value.dtype.kind == "f":
                values.append(quantize_array(value, *spec.quantization, spec.dtype))
            else:
                values.append(value.astype(spec.dtype, copy=False))
        return values


# Samples as a file, arrays by input name, one array, or data already loaded (and checked) for the same inputs.
CalibrationSource = str | os.PathLike[str] | Mapping[str, np.ndarray] | np.ndarray | CalibrationData


def input_specs(model: Model) -> list[InputSpec]:
    """What samples for ``model``'s graph inputs must look like."""
    specs = []
    for t in model.main.inputs:
        if t.dtype is None:
            raise EngineError(f"input {t.name!r} is {t.type_name}, which no samples can be given for")
        q, quantization = t.quantization, None
        if q is not None and q.scale is not None and q.scale.size == 1 and t.dtype.kind in "iu":
            zero_point = q.zero_point[0] if q.zero_point is not None and q.zero_point.size else 0
            quantization = (float(q.scale[0]), int(zero_point))
        specs.append(InputSpec(t.name or "", tuple(t.shape or ()), t.dtype, quantization))
    return specs


def load_calibration(source: CalibrationSource, model: Model) -> CalibrationData:
    """Read and check calibration data for ``model``'s inputs (see `load_samples`); data already loaded for
    inputs like these is taken as it is."""
    specs = input_specs(model)
    if isinstance(source, CalibrationData):
        if [(s.name, s.shape, s.dtype) for s in source.inputs] != [(s.name, s.shape, s.dtype) for s in specs]:
            raise EngineError("calibration data was loaded for other inputs than this model's")
        return source
    return load_samples(source, specs, "calibration data")


def load_samples(source: CalibrationSource, inputs: list[InputSpec], what: str) -> CalibrationData:
    """Read and check samples for ``inputs``: an .npz keyed by input name, or one array for a single-input model
    (an .npy, an .npz holding one array under any name, or in memory); the leading axis is the sample, and a
    batch-1 input also takes samples without the batch axis.  Calibration and validation data are the same
    format, read here.  Wrong names, shapes or dtypes, no samples, or non-finite values are one error naming the
    input; ``what`` says which data it is."""
    names = [spec.name for spec in inputs]
    arrays = _read(source, len(inputs), what)
    if not isinstance(arrays, dict):
        if len(inputs) != 1:
            raise EngineError(f"{what} is one array but the model has {len(inputs)} inputs "
                              f"({', '.join(names)}); pass an .npz keyed by input name")  # fmt: skip
        arrays = {names[0]: arrays}
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise EngineError(f"{what} for unknown input(s) {', '.join(unknown)}; the model has {', '.join(names)}")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EngineError(f"{what} has no samples for input(s) {', '.join(missing)}")
    checked = {spec.name: _checked(arrays[spec.name], spec, what) for spec in inputs}
    counts = {name: len(array) for name, array in checked.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise EngineError(f"{what}: inputs have different numbers of samples ({detail})")
    return CalibrationData(checked, next(iter(counts.values()), 0), list(inputs))


def _read(source: CalibrationSource, inputs: int, what: str) -> dict[str, np.ndarray] | np.ndarray:
    """The arrays of ``source``: a file's by name (one array when a single-input model's file holds only one,
    whatever np.savez named it), or the caller's."""
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    path = Path(source)
    if not path.is_file():
        raise EngineError(f"{what} {path}: file not found")
    if path.suffix not in (".npz", ".npy"):
        raise EngineError(f"{what} {path}: must be .npz (keyed by input name) or .npy")
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
        arrays = _mapped_npz(path)
        if arrays is None:
            with np.load(path, allow_pickle=False) as loaded:
                arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise EngineError(f"{what} {path}: cannot read it: {exc}") from None
    if not arrays:
        raise EngineError(f"{what} {path}: holds no arrays")
    return next(iter(arrays.values())) if len(arrays) == 1 and inputs == 1 else arrays


def _mapped_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an uncompressed .npz (``np.savez``'s) as read-only views of the file mapped into memory, or
    None when a member is compressed, encrypted or not a plain .npy (``np.load`` reads those).

    A sample is then read from the OS's file cache when it is used instead of being copied out of the archive
    first (``np.load`` copied a MobileNet's 60 MB of samples in 0.04-0.15 s of a 1.6 s full-int8 run), and data
    larger than memory can still calibrate.  The views are unaligned (members start where the zip headers end),
    which numpy and the interpreter's ``set_tensor`` take as they are."""
    with zipfile.ZipFile(path) as archive, path.open("rb") as f:
        places = []
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or not info.filename.endswith(".npy"):
                return None
            f.seek(info.header_offset)
            local = f.read(_LOCAL_HEADER)
            if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                return None
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADERS:
                return None
            shape, fortran, dtype = _NPY_HEADERS[version](f)
            offset = f.tell()
            count = math.prod(shape)
            if dtype.hasobject or offset + count * dtype.itemsize > start + info.file_size:
                return None
            places.append((info.filename[: -len(".npy")], shape, fortran, dtype, offset, count))
        if not places:
            return None
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return {
        name: np.frombuffer(mapped, dtype, count, offset).reshape(shape, order="F" if fortran else "C")
        for name, shape, fortran, dtype, offset, count in places
    }


def _checked(array: np.ndarray, spec: InputSpec, what: str) -> np.ndarray:
    """``array`` as [samples, *input shape]; a model input with batch 1 also takes samples without that axis
    (added back here, as a view)."""
    name, shape = spec.name, spec.shape
    array = np.asarray(array)
    if array.ndim == 0 or array.shape[0] == 0:
        raise EngineError(f"{what} for input {name!r} holds no samples")
    sample = array.shape[1:]
    if not _fits(sample, shape):
        if not (shape[:1] == (1,) and _fits(sample, shape[1:])):
            raise EngineError(
                f"{what} for input {name!r} has samples of shape {list(sample)}; the input is {list(shape)} "
                f"(the leading axis of the data is the sample)"
            )
        array = array[:, np.newaxis]
    kinds = "f" if spec.dtype.kind == "f" else "fiub" if spec.quantization is not None else "iub"
    if array.dtype.kind not in kinds:
        raise EngineError(f"{what} for input {name!r} is {array.dtype}; the input is {spec.dtype.name.upper()}")
    if array.dtype.kind == "f" and not _all_finite(array):
        raise EngineError(f"{what} for input {name!r} contains NaN or infinite values")
    return array


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value is finite, read a few MB at a time (no mask the size of the data, which may be a
    mapped file larger than memory)."""
    rows = max(1, _FINITE_CHUNK // max(1, math.prod(array.shape[1:])))
    return all(np.isfinite(array[i : i + rows]).all() for i in range(0, len(array), rows))


def _fits(sample: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a sample of this shape fits an input of ``shape`` (-1: any size)."""
    return len(sample) == len(shape) and all(s in (-1, n) for s, n in zip(shape, sample, strict=True))


def with_outputs(model: Model, tensors: list[Tensor]) -> tuple[bytes, dict[int, int]]:
    """``model`` serialized with ``tensors`` added to its graph outputs, and the index of every tensor in it (the
    model itself is left as it was)."""
    sg = model.main
    outputs = sg.outputs
    sg.outputs = [*outputs, *(t for t in dict.fromkeys(tensors) if t not in outputs)]
    try:
        return bytes(model_to_bytes(model)), {id(t): i for i, t in enumerate(all_tensors(sg))}
    finally:
        sg.outputs = outputs


def runner_for(
    model: Model,
    tensors: list[Tensor],
    executor: type[LiteRTExecutor],
    serialized: tuple[bytes, dict[int, int]] | None = None,
) -> tuple[Executor, dict[int, int]]:
    """An executor for ``model`` that can read ``tensors``, and the index of every tensor.

    First choice: XNNPACK on a copy of the model whose outputs include the tensors (the values are the same
    float32 computation up to summation order); where XNNPACK cannot run the graph, the builtin kernels with
    every intermediate kept.  ``serialized``: that copy (`with_outputs`) when the caller has it already.
    """
    sg = model.main
    serialized_copy, index = serialized if serialized is not None else with_outputs(model, tensors)
    # The interpreter holds the weights twice already (the serialized copy, XNNPACK's packed one): the input file's
    # pages behind them are dropped until a pass reads them again (268 MB of a 268 MB model's peak).
    for t in all_tensors(sg):
        if t.buffer is not None:
            release_pages(t.buffer.data)
    try:
        runner = executor(serialized_copy, xnnpack=True)
        runner.run({index[id(t)]: np.zeros(t.shape, t.dtype) for t in sg.inputs})
        return runner, index
    except EngineError:
        return executor(bytes(model_to_bytes(model))), {id(t): i for i, t in enumerate(all_tensors(sg))}


def calibrate(
    model: Model,
    data: CalibrationData,
    observers: dict[int, tuple[Tensor, Observer]],
    executor: type[LiteRTExecutor] = LiteRTExecutor,
) -> None:
    """Run every sample through ``model`` (float) and update the observer of each watched tensor.

    ``observers`` maps ``id(tensor)`` of main-subgraph tensors to (tensor, observer).  Tensor indices are the
    writer's, so the model is written once and the values are read back by index.  The model is not changed.
    Where ``data`` remembers (``remembered``), observers already fed every sample on this same float model
    replace the fresh ones (copies), only the others run, and they are remembered in turn.
    """
    sg = model.main
    remembered = data.remembered if data.remembered is not None else {}
    memo = _memo_keys(model, observers) if data.remembered is not None else {}
    for key, memo_key in memo.items():
        if memo_key in remembered:
            observers[key] = (observers[key][0], copy.deepcopy(remembered[memo_key]))
    to_run = {k: v for k, v in observers.items() if memo.get(k) not in remembered}
    if not to_run:
        return
    runner, index = runner_for(model, [t for t, _ in to_run.values()], executor)
    watched = [(index[key], t, obs) for key, (t, obs) in to_run.items()]
    read = getattr(runner, "borrow", runner.tensor)  # an executor without it is read by copies
    inputs = [index[id(t)] for t in sg.inputs]
    for sample in track(range(data.count), "calibrating"):
        runner.run(dict(zip(inputs, data.sample(sample), strict=True)))
        for i, t, obs in watched:
            try:
                obs.update(read(i))
            except EngineError as exc:
                raise EngineError(f"calibration: tensor {t.name!r}: {exc}") from None
    for key, (_, obs) in to_run.items():
        if key in memo:
            remembered[memo[key]] = copy.deepcopy(obs)


def _memo_keys(model: Model, observers: dict[int, tuple[Tensor, Observer]]) -> dict[int, tuple[str, ...]]:
    """The memo key of each observer whose tensor's name is unique in the main subgraph."""
    digest = fingerprint(model)
    names = unique_names(model)
    return {
        key: ("observer", digest, t.name, obs.spec)
        for key, (t, obs) in observers.items()
        if t.name in names and obs.spec
    }


def unique_names(model: Model) -> set[str]:
    """The tensor names that occur once in the main subgraph (a memo can key by them)."""
    counts: dict[str, int] = {}
    for t in model.main.tensors:
        counts[t.name or ""] = counts.get(t.name or "", 0) + 1
    return {name for name, n in counts.items() if name and n == 1}


def fingerprint(model: Model) -> str:
    """A digest of what the float model computes: every subgraph's wiring, op codes and options, and every
    tensor's name, shape, type, quantization and constant bytes, as one exact repr per subgraph (arrays by their
    bytes' `digest`, remembered per array in the search).  Walking the IR costs less than serializing the model
    to hash its bytes (pose_detection: ~3 against 30-40 ms)."""
    hasher = hashlib.sha256()
    for sg in model.subgraphs:
        tensors = all_tensors(sg)
        index = {id(t): i for i, t in enumerate(tensors)}
        rows: list[object] = []
        for t in tensors:
            q = t.quantization
            quantization = None if q is None else (_plain(q.scale, index), _plain(q.zero_point, index))
            stored = None if t.buffer is None else _plain(t.buffer.data, index)
            rows.append((t.name, t.shape, t.type, t.is_variable, t.sparsity is not None, quantization, stored))
        for op in sg.operators:
            code = op.opcode
            wiring = (_indices(op.inputs, index), _indices(op.outputs, index))
            custom = _plain(op.custom_options, index)
            rows.append(
                (code.builtin_code, code.custom_code, code.version, wiring, _plain(op.builtin_options, index), custom)
            )
        rows.append((_indices(sg.inputs, index), _indices(sg.outputs, index)))
        hasher.update(repr(rows).encode())
    return hasher.hexdigest()


def _indices(tensors: list[Tensor] | list[Tensor | None], index: dict[int, int]) -> tuple[int, ...]:
    return tuple(-1 if t is None else index.get(id(t), -2) for t in tensors)


def _plain(value: object, index: dict[int, int]) -> object:
    """``value`` as numbers, strings and tuples, whose repr is exact: tensors by index, arrays by their bytes'
    digest, tables by their sorted fields."""
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, digest(value))
    if isinstance(value, Tensor):
        return ("tensor", index.get(id(value), -2))
    if isinstance(value, list | tuple):
        return tuple(_plain(v, index) for v in value)
    if isinstance(value, Table):
        return ("table", value.type, tuple((k, _plain(v, index)) for k, v in sorted(value.fields.items())))
    return repr(value)
