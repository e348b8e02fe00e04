"""Inference latency in LiteRT: what a compressed form costs or saves at run time, against its input.

Two forms are compared by timing them together, not one after the other: every model is loaded first, then
each round invokes every model once, starting at a different model each round, so a slow spell of the
machine (another process, frequency scaling) hits all of them alike and the ratio between two models stays
stable even when absolute times drift.  Only ``invoke`` is timed (``time.perf_counter``); the median is the
figure to compare, the 90th percentile shows a slow tail.

Runtimes (``engine.runtime.litert.RUNTIMES``, built by ``engine.runtime.litert.interpreter``): ``default`` is the
interpreter as a user loads it (``Interpreter(model_path=..., num_threads=...)``: XNNPACK applied where it takes the
graph), ``builtin`` the builtin kernels alone (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.runtime.litert import (
    RUNTIMES,
    InputData,
    cast_input,
    input_data,
    interpreter,
    invoke,
    match_tensors,
    model_label,
)


@dataclass(frozen=True)
class Latency:
    """One model's invoke time in milliseconds: the median and the 90th percentile over the timed runs."""

    median_ms: float
    p90_ms: float


def measure_latency(
    models: Sequence[str | Path | bytes],
    data: InputData = None,
    *,
    runtime: str = "default",
    num_threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
) -> list[Latency]:
    """Time ``models`` interleaved in one LiteRT runtime; one `Latency` per model, in the order given.

    ``data`` is keyed by the first model's input names (or one array for a single-input model) and is cast to
    each model's input dtype, float data quantized with the tensor's scale and zero point for int8/uint8 inputs;
    None generates seeded data.  Models whose input names differ from the first model's are fed by position.
    A model that does not load (or run) in ``runtime`` raises an `EngineError` naming it and the runtime.
    """
    if runtime not in RUNTIMES:
        raise EngineError(f"unknown runtime {runtime!r} (runtimes: {', '.join(RUNTIMES)})")
    if runs < 1 or warmup < 0:
        raise EngineError(f"runs must be at least 1 and warmup at least 0, got runs={runs}, warmup={warmup}")
    labels = [f"{model_label(model, 'model')} ({runtime} runtime)" for model in models]
    interps = [
        interpreter(model, label, preserve_all=False, num_threads=num_threads, xnnpack=runtime == "default")
        for model, label in zip(models, labels, strict=True)
    ]
    if not interps:
        return []
    first = interps[0].get_input_details()
    named = input_data(first, data, labels[0], seed=0)
    for interp, label in zip(interps, labels, strict=True):  # inputs set once, with one untimed invoke
        pairs = match_tensors(first, interp.get_input_details(), "input")
        invoke(interp, [(c, cast_input(named[r["name"]], r, c)) for r, c in pairs], label)
    count = len(interps)
    times: list[list[float]] = [[] for _ in interps]
    for round_ in range(warmup + runs):
        for k in range(count):
            i = (round_ + k) % count
            start = time.perf_counter()
            interps[i].invoke()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[i].append(elapsed)
    return [Latency(1e3 * float(np.median(t)), 1e3 * float(np.percentile(t, 90))) for t in times]


def median_latency_ms(models: Sequence[str | Path | bytes], data: InputData = None, **options: Any) -> list[float]:
    """The median invoke time in ms of each model, timed interleaved as `measure_latency` does (same options)."""
    return [m.median_ms for m in measure_latency(models, data, **options)]
