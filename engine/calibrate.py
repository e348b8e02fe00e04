"""Calibration: run representative samples through the float model and record each activation's range.

Full-integer quantization needs a (scale, zero point) for every tensor the model computes, which only the
values those tensors take on real inputs can give.  ``calibrate`` streams the samples one at a time through an
``Executor`` (LiteRT: XNNPACK on a copy whose outputs include the watched tensors, else the builtin kernels
keeping every intermediate), and feeds each watched tensor's values to its ``Observer`` (engine.observers), so
memory does not grow with the number of samples.

The executor is a small interface (run one sample, read a tensor by index), so another runtime can replace
LiteRT without touching the rest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.errors import EngineError
from engine.ir import Model, Tensor, all_tensors
from engine.observers import Observer
from engine.progress import track
from engine.writer import model_to_bytes

CalibrationSource = str | os.PathLike[str] | Mapping[str, np.ndarray] | np.ndarray


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
        from engine.validate import interpreter

        self._interpreter = interpreter(
            model, "float model", preserve_all=not xnnpack, num_threads=num_threads, xnnpack=xnnpack
        )

    def run(self, feeds: dict[int, np.ndarray]) -> None:
        for index, value in feeds.items():
            self._interpreter.set_tensor(index, value)
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"float model: interpreter error during calibration: {exc}") from exc

    def tensor(self, index: int) -> np.ndarray:
        return self._interpreter.get_tensor(index)


@dataclass
class CalibrationData:
    """Samples for each graph input of the float model, checked against it: ``arrays[name][i]`` is sample i."""

    arrays: dict[str, np.ndarray]
    count: int
    inputs: list[tuple[str, tuple[int, ...], np.dtype]]

    def sample(self, i: int) -> list[np.ndarray]:
        """Sample ``i`` of every input, in input order, shaped and typed as the float model's input."""
        return [np.asarray(self.arrays[name][i]).reshape(shape).astype(dtype, copy=False)
                for name, shape, dtype in self.inputs]  # fmt: skip


def load_calibration(source: CalibrationSource, model: Model) -> CalibrationData:
    """Read and check calibration data for ``model``'s inputs: an .npz keyed by input name (or one array for a
    single-input model, as .npy/.npz or in memory); the leading axis is the sample.  Wrong names, shapes or
    dtypes, no samples, or non-finite values are an error naming the input."""
    inputs = model.main.inputs
    names = [t.name or "" for t in inputs]
    arrays = _read(source)
    if not isinstance(arrays, dict):
        if len(inputs) != 1:
            raise EngineError(f"calibration data is one array but the model has {len(inputs)} inputs "
                              f"({', '.join(names)}); pass an .npz keyed by input name")  # fmt: skip
        arrays = {names[0]: arrays}
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise EngineError(
            f"calibration data for unknown input(s) {', '.join(unknown)}; the model has {', '.join(names)}"
        )
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EngineError(f"calibration data has no samples for input(s) {', '.join(missing)}")
    counts = {}
    for t in inputs:
        arrays[t.name or ""] = _checked(arrays[t.name or ""], t)
        counts[t.name] = len(arrays[t.name or ""])
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise EngineError(f"calibration inputs have different numbers of samples ({detail})")
    specs = [(t.name or "", tuple(t.shape or ()), np.dtype(t.dtype)) for t in inputs]
    return CalibrationData(arrays, next(iter(counts.values())), specs)


def _read(source: CalibrationSource) -> dict[str, np.ndarray] | np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    from engine.validate import load_inputs

    path = Path(source)
    if not path.is_file():
        raise EngineError(f"calibration data {path}: file not found")
    return load_inputs(path)


def _checked(array: np.ndarray, t: Tensor) -> np.ndarray:
    """``array`` as [samples, *input shape]; a model input with batch 1 also takes samples without that axis."""
    name, shape = t.name, tuple(t.shape or ())
    array = np.asarray(array)
    if array.ndim == 0 or array.shape[0] == 0:
        raise EngineError(f"calibration data for input {name!r} holds no samples")
    sample = array.shape[1:]
    if sample != shape and not (shape[:1] == (1,) and sample == shape[1:]):
        raise EngineError(
            f"calibration data for input {name!r} has samples of shape {list(sample)}; the input is {list(shape)} "
            f"(the leading axis of the data is the sample)"
        )
    want = t.dtype
    if want is None or (want.kind == "f") != (array.dtype.kind == "f") or array.dtype.kind not in "fiub":
        raise EngineError(f"calibration data for input {name!r} is {array.dtype}; the input is {t.type_name}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise EngineError(f"calibration data for input {name!r} contains NaN or infinite values")
    return array


def _runner(model: Model, tensors: list[Tensor], executor: type[LiteRTExecutor]) -> tuple[Executor, dict[int, int]]:
    """An executor for ``model`` that can read ``tensors``, and the index of every tensor.

    First choice: XNNPACK on a copy of the model whose outputs include the tensors (the values are the same
    float32 computation up to summation order); where XNNPACK cannot run the graph, the builtin kernels with
    every intermediate kept.
    """
    sg = model.main
    outputs = sg.outputs
    sg.outputs = [*outputs, *(t for t in dict.fromkeys(tensors) if t not in outputs)]
    try:
        index = {id(t): i for i, t in enumerate(all_tensors(sg))}
        with_outputs = bytes(model_to_bytes(model))
    finally:
        sg.outputs = outputs
    try:
        runner = executor(with_outputs, xnnpack=True)
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
    """
    sg = model.main
    runner, index = _runner(model, [t for t, _ in observers.values()], executor)
    watched = [(index[key], t, obs) for key, (t, obs) in observers.items()]
    inputs = [index[id(t)] for t in sg.inputs]
    for sample in track(range(data.count), "calibrating"):
        runner.run(dict(zip(inputs, data.sample(sample), strict=True)))
        for i, t, obs in watched:
            try:
                obs.update(runner.tensor(i))
            except EngineError as exc:
                raise EngineError(f"calibration: tensor {t.name!r}: {exc}") from None
