"""What ``analyze`` and the budgeted search share: the data split, the judge, the units and their ladders, and
building one candidate model from a per-unit assignment.

* **Split.**  The given samples are split once, by a seeded permutation (`split_samples`): a calibration part (the
  ranges of a full-integer model are fitted on it) and a held-out part that judges every candidate.  Weight modes
  fit nothing to data, so there every sample judges.
* **Judge.**  `Judge` runs the float model once on the held-out samples in the default runtime (``Interpreter``
  as users build it, XNNPACK applied, one thread), then each candidate on the same samples (shared among up to
  4 such interpreters running at once, one per CPU, as many as the measured cost of building one pays for: the
  same figures as one interpreter), and keeps per output
  the error power summed over the samples relative to the float output's power summed over them
  (``10 ** (-SQNR / 10)``: one SQNR per output over the held-out set, so that an output that is near zero on one
  sample, a presence score, does not decide alone), the worst output's SQNR, and with labels the top-1 accuracy
  of the first output.  A candidate may be judged on some of the held-out samples only (the search's ranking):
  its noise is then pooled over those.
* **Units and ladders.**  A unit is what gets its own precision: a weight (by its tensor name, as
  ``engine.graph.weights.find_weights`` and the report name it) in the weight modes, an op with an integer kernel
  (by its output tensor name) in the full-integer modes.  Its ladder starts at the requested mode and ends at
  float (None): ``weight-int4 -> weight-int8 -> float16 -> float``, ``int8 -> float island``, ...
* **Candidates.**  An assignment (unit -> rung) is a recipe: the user's, plus one anchored per-tensor entry
  (``^name$``, ``re.escape``) per unit above its first rung, so the chosen one saves as a recipe that reproduces
  the model.  Every candidate is built by ``engine.compress`` itself, the command users run.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import time
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Model
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes
from engine.recipe import LEVEL_OPTIONS, WEIGHT_MODES, Recipe, is_full_integer
from engine.remembered import immutable, remembering
from engine.runtime.calibrate import CalibrationData, CalibrationSource, input_specs, load_calibration, load_samples
from engine.runtime.litert import (
    InterpreterError,
    as_float,
    cast_input,
    interpreter,
    invoke,
    match_tensors,
)

Rung = str | None  # a quantize mode, or None: float (the weight or op left as the input model has it)

# The precision ladder of each requested mode, cheapest first; None is float.  Full-integer ops have two rungs:
# integer, or a float island (int16x8 cannot be set per op in LiteRT's spec; it is tried as a whole-model
# alternative instead, engine.accuracy.search).
LADDERS: dict[str, tuple[Rung, ...]] = {
    "weight-int4": ("weight-int4", "weight-int8", "float16", None),
    "weight-int8": ("weight-int8", "float16", None),
    "float16": ("float16", None),
    "dynamic-int4": ("dynamic-int4", "dynamic-int8", None),
    "dynamic-int8": ("dynamic-int8", None),
    "int8": ("int8", None),
    "int16x8": ("int16x8", None),
}
DEFAULT_HOLDOUT = 0.25
_MAX_JUDGE_WORKERS = 4
_PARALLEL_JUDGE_MAX_BYTES = 64 << 20
_SPLIT_SEED = 0


def rung_name(rung: Rung) -> str:
    return "float" if rung is None else rung


def ladder_for(mode: str | None, what: str) -> tuple[Rung, ...]:
    if mode is None:
        raise EngineError(f"{what} needs a quantize mode to start from (one of {', '.join(LADDERS)})")
    if mode not in LADDERS:
        raise EngineError(f"{what} does not support quantize mode {mode!r} (supported: {', '.join(LADDERS)})")
    return LADDERS[mode]


def anchored(name: str) -> str:
    """The regex matching exactly ``name``."""
    return f"^{re.escape(name)}$"


# ------------------------------------------------------------------------------------------------ data


def split_samples(count: int, holdout: float | int, fitted: bool) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, held-out indices) of ``count`` samples, each sorted.  ``holdout`` is a fraction (0-1)
    or a number of samples; the split is a seeded permutation, so it is the same on every run.  ``fitted``: the
    compression reads samples (full-integer calibration, data-aware rounding); otherwise it fits nothing to the
    data, every sample is held out and the calibration part is empty."""
    if not fitted:
        return np.zeros(0, np.intp), np.arange(count)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float):
        raise EngineError(f"holdout must be a fraction between 0 and 1 or a number of samples, not {holdout!r}")
    held = round(count * holdout) if isinstance(holdout, float) and 0 < holdout < 1 else holdout
    if isinstance(holdout, float) and not 0 < holdout < 1:
        raise EngineError(f"holdout must be a fraction between 0 and 1 or a number of samples, not {holdout!r}")
    held = int(held)
    if count < 2:
        raise EngineError(
            f"calibration data holds {count} sample; a budget on a model fitted to data needs at least 2 (some to "
            "calibrate on, some held out to judge)"
        )
    held = min(max(held, 1), count - 1)
    order = np.random.default_rng(_SPLIT_SEED).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def read_labels(labels: str | os.PathLike[str] | np.ndarray | Sequence[int], count: int) -> np.ndarray:
    """Integer class labels, one per sample (an .npy file or an array)."""
    if isinstance(labels, str | os.PathLike):
        path = Path(labels)
        if not path.is_file():
            raise EngineError(f"labels {path}: file not found")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise EngineError(f"labels {path}: cannot read it: {exc}") from None
        if not isinstance(array, np.ndarray):
            raise EngineError(f"labels {path}: must be one .npy array of class indices")
    else:
        array = np.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise EngineError(f"labels must be a 1-D array of integer class indices, not {array.dtype}{list(array.shape)}")
    if len(array) != count:
        raise EngineError(f"labels hold {len(array)} entries but the data holds {count} samples; one label per sample")
    return array.astype(np.int64)


@dataclass
class Data:
    """The samples, split: ``calibration`` (input name -> samples, for full-integer compress or data-aware
    rounding; None when the compression fits nothing to data), ``held_out`` (each sample as the float model's
    inputs take it), their labels, and the counts."""

    calibration: dict[str, np.ndarray] | None
    held_out: list[list[np.ndarray]]
    labels: np.ndarray | None
    given: int

    @property
    def calibration_count(self) -> int:
        return 0 if self.calibration is None else len(next(iter(self.calibration.values())))

    def describe(self) -> str:
        held = len(self.held_out)
        if self.calibration is None:
            return f"{held} samples judge every candidate (the compression fits nothing to data, so none are set aside)"
        return (
            f"{self.given} samples split once (seeded): {self.calibration_count} calibrate, {held} held out judge "
            "every candidate"
        )


def load_data(
    model: Model,
    source: CalibrationSource | None,
    labels: Any,
    holdout: float | int,
    fitted: bool,
    what: str,
) -> Data:
    if source is None:
        raise EngineError(f"{what} needs data: pass calibration=DATA (--calibration) to judge candidates on")
    loaded: CalibrationData = load_samples(source, input_specs(model), "calibration data")
    cal, held = split_samples(loaded.count, holdout, fitted)
    label_array = None if labels is None else read_labels(labels, loaded.count)[held]
    calibration = {name: array[cal] for name, array in loaded.arrays.items()} if fitted else None
    return Data(calibration, [loaded.sample(int(i)) for i in held], label_array, loaded.count)


# ----------------------------------------------------------------------------------------------- judge


@dataclass
class Measurement:
    """One candidate judged on the held-out samples.  ``noise``: per output, the error power summed over the
    samples over the float output's power summed over them; ``sqnr_db``: the worst output's SQNR so pooled;
    ``accuracy``: top-1 of the first output (with labels); ``error``: the default runtime refused the candidate."""

    noise: np.ndarray
    sqnr_db: float
    output_sqnr_db: dict[str, float]
    accuracy: float | None = None
    bytes: int = 0
    error: str | None = None


def _relative(noise: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Noise power over signal power per output: 0 without noise, inf without signal (or with an infinite or NaN
    error)."""
    out = np.full(noise.shape, np.inf)
    finite = np.isfinite(noise)
    out[finite & (noise == 0)] = 0.0
    ok = finite & (noise > 0) & (signal > 0)
    out[ok] = noise[ok] / signal[ok]
    return out


def noise_db(noise: np.ndarray) -> float:
    """The SQNR (dB) that a relative noise power stands for: the worst cell's."""
    worst = float(np.max(noise)) if noise.size else 0.0
    if worst <= 0.0:
        return float("inf")
    if not np.isfinite(worst):
        return float("-inf")
    return -10.0 * float(np.log10(worst))


class Judge:
    """Runs candidates on the held-out samples in the default runtime and compares them with the float model."""

    def __init__(self, float_bytes: bytes, data: Data) -> None:
        self.data = data
        self.runs = 0
        self.seconds = 0.0
        # What judging has cost so far: seconds building interpreters and how many; seconds running samples (as on
        # one interpreter) and how many.
        self._build_seconds, self._built = 0.0, 0
        self._run_seconds, self._ran = 0.0, 0
        ref = interpreter(float_bytes, "float model", preserve_all=False, num_threads=1, xnnpack=True)
        self._inputs = ref.get_input_details()
        self._outputs = ref.get_output_details()
        self.output_names = [d["name"] for d in self._outputs]
        self.reference: list[list[np.ndarray]] = []
        for sample in data.held_out:
            invoke(ref, list(zip(self._inputs, sample, strict=True)), "float model")
            self.reference.append([as_float(ref.get_tensor(d["index"]), d) for d in self._outputs])
        self.signal = np.array(
            [[float(np.sum(np.square(outs[k]))) for outs in self.reference] for k in range(len(self._outputs))]
        )
        self.float_accuracy = self._accuracy([outs[0] for outs in self.reference]) if data.labels is not None else None

    def _accuracy(self, first_outputs: list[np.ndarray]) -> float:
        assert self.data.labels is not None
        predictions = [int(np.argmax(np.asarray(o).reshape(-1))) for o in first_outputs]
        return float(np.mean(np.asarray(predictions) == self.data.labels))

    def check_labels(self) -> None:
        """Labels are compared with the argmax of the first output, which must then be one row of class scores."""
        shape = tuple(self.reference[0][0].shape) if self.reference else ()
        if int(np.prod(shape)) < 2 or sum(d > 1 for d in shape) != 1:
            raise EngineError(
                f"labels are compared with the argmax of the first output ({self.output_names[0]!r}), but its shape "
                f"{list(shape)} is not one row of class scores"
            )

    def measure(self, candidate: bytes, samples: Sequence[int] | None = None) -> Measurement:
        """Run ``candidate`` on every held-out sample (default runtime, one thread), or only on the held-out samples
        at the positions ``samples`` (the noise then pooled over those; no accuracy).  The samples are shared among
        up to `judge_workers` interpreters running at once, each on one thread, so every output is the one a
        single one-thread interpreter gives."""
        start = time.perf_counter()
        self.runs += 1
        outputs = len(self._outputs)
        chosen = list(range(len(self.reference)) if samples is None else samples)
        power = np.zeros((outputs, len(chosen)))
        firsts: list[Any] = [None] * len(chosen)  # the first output of each sample
        try:
            # Built one at a time: building one silences the process's stderr while LiteRT announces XNNPACK.
            build_start = time.perf_counter()
            workers = [
                interpreter(candidate, "candidate", preserve_all=False, num_threads=1, xnnpack=True)
                for _ in range(judge_workers(len(candidate), len(chosen), self._costs()))
            ]
            self._build_seconds += time.perf_counter() - build_start
            self._built += len(workers)
            runs_start = time.perf_counter()
            in_pairs = match_tensors(self._inputs, workers[0].get_input_details(), "input")
            out_pairs = match_tensors(self._outputs, workers[0].get_output_details(), "output")

            def run_share(w: int) -> None:
                cand = workers[w]
                for j in range(w, len(chosen), len(workers)):
                    sample = self.data.held_out[chosen[j]]
                    feeds = [(c, cast_input(arr, r, c)) for (r, c), arr in zip(in_pairs, sample, strict=True)]
                    invoke(cand, feeds, "candidate")
                    for k, (_, c) in enumerate(out_pairs):
                        value = as_float(cand.get_tensor(c["index"]), c)
                        ref = self.reference[chosen[j]][k]
                        if value.shape != ref.shape:
                            raise EngineError(
                                f"output {c['name']!r} has shape {list(value.shape)}, not {list(ref.shape)}"
                            )
                        with np.errstate(over="ignore", invalid="ignore"):
                            power[k, j] = float(np.sum(np.square(ref - value)))
                        if k == 0:
                            firsts[j] = value

            if len(workers) == 1:
                run_share(0)
            else:
                with ThreadPoolExecutor(len(workers)) as pool:  # LiteRT's invoke releases the GIL
                    for done in [pool.submit(run_share, w) for w in range(len(workers))]:
                        done.result()
            # Wall time of the runs times the interpreters sharing them: what one would have taken.
            self._run_seconds += (time.perf_counter() - runs_start) * len(workers)
            self._ran += len(chosen)
        except InterpreterError as exc:
            self.seconds += time.perf_counter() - start
            return Measurement(np.full(outputs, np.inf), float("-inf"), dict.fromkeys(self.output_names, float("-inf")),
                               0.0, len(candidate), str(exc))  # fmt: skip
        noise = _relative(power.sum(axis=1), self.signal[:, list(chosen)].sum(axis=1))
        accuracy = self._accuracy(firsts) if self.data.labels is not None and samples is None else None
        self.seconds += time.perf_counter() - start
        per_output = {name: noise_db(noise[k]) for k, name in enumerate(self.output_names)}
        return Measurement(noise, noise_db(noise), per_output, accuracy, len(candidate))

    def _costs(self) -> tuple[float, float] | None:
        """(seconds to build one interpreter, seconds to run one sample on one), as measured so far."""
        if not (self._built and self._ran):
            return None
        return self._build_seconds / self._built, self._run_seconds / self._ran

    def drop_points(self, m: Measurement) -> float | None:
        """Accuracy lost against the float model on the held-out samples, in percentage points."""
        if m.accuracy is None or self.float_accuracy is None:
            return None
        return 100.0 * (self.float_accuracy - m.accuracy)


def judge_workers(model_bytes: int, samples: int, costs: tuple[float, float] | None = None) -> int:
    """How many one-thread interpreters judge a candidate at once: at most one per CPU this process may use,
    `_MAX_JUDGE_WORKERS` and one per sample; one for a model over `_PARALLEL_JUDGE_MAX_BYTES`, since each
    interpreter's XNNPACK packs its own copy of the weights.  Interpreters are built one after another (LiteRT
    holds the GIL while XNNPACK packs the weights), so with ``costs`` (seconds to build one, seconds to run a
    sample on one) the count is the one with the least wall time, ``w * build + ceil(samples / w) * run``: one
    when building costs more than the runs it would share."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if model_bytes > _PARALLEL_JUDGE_MAX_BYTES:
        return 1
    most = max(1, min(cpus, _MAX_JUDGE_WORKERS, samples))
    if costs is None:
        return most
    build, run = costs
    return min(range(1, most + 1), key=lambda w: w * build + -(-samples // w) * run)


# ----------------------------------------------------------------------------------------------- units


@dataclass
class Unit:
    """A weight (weight modes) or an op with an integer kernel (full-integer modes) that gets its own rung.
    ``bytes`` estimates what it stores at each rung of the ladder (measured by the uniform runs in weight modes)."""

    name: str
    op: str
    bytes: list[int]
    weight_sqnr_db: list[float | None] = field(default_factory=list)


@dataclass
class Builder:
    """Builds candidates: the input model's bytes, the user's recipe (global quantize = the first rung), the ladder
    and the calibration part, each candidate through ``engine.compress``."""

    source: bytes
    recipe: Recipe
    ladder: tuple[Rung, ...]
    calibration: dict[str, np.ndarray] | None
    compress_options: dict[str, Any] = field(default_factory=dict)
    builds: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        # Every candidate is the same float model compressed another way, so what does not depend on the way is
        # done once for the whole search: the model parsed once (each build gets its own copy, since compress
        # edits the model it is given; the copies share the constant arrays, read-only views of the input's
        # bytes, since passes replace constants rather than edit them), the samples loaded once and remembering
        # their activation statistics (each activation observed once), and each weight's scale search, each
        # folded constant decoder and each constant's hash remembered (``engine.remembered``).
        float_model = read_model(self.source)
        self._shared: list[np.ndarray] = []
        self._parsed = _pickled(float_model, self._shared)
        self._remembered: dict[Hashable, object] = {}
        self._data = None
        if self.calibration is not None:
            self._data = load_calibration(self.calibration, float_model)
            self._data.remembered = {}

    def float_model(self) -> Model:
        """A fresh copy of the input model, as ``read_model(self.source)`` gives it."""
        return _unpickled(self._parsed, self._shared)

    def entry(self, rung: Rung) -> dict[str, Any]:
        """The per-tensor options that put a unit on ``rung``."""
        options: dict[str, Any] = {"quantize": rung}
        if rung is not None and not is_full_integer(rung):
            if self.recipe.sets("bits"):
                options["bits"] = None
            granularity = str(self.recipe.options.get("granularity", "channel"))
            if granularity.startswith("block:") and rung != self.ladder[0]:
                options["granularity"] = "channel"
        return options

    def uniform(self, rung: Rung) -> Recipe:
        """The user's recipe with every unit on ``rung``: on float16 the options of integer levels (bits, scale,
        rounding, ...) are dropped, since they mean nothing there."""
        if rung is None or rung == self.ladder[0]:
            return self.recipe
        if WEIGHT_MODES.get(rung, (None, None))[1] is not None:
            return self.recipe.with_options(**self.entry(rung))
        data = {k: v for k, v in self.recipe.to_dict().items() if k not in LEVEL_OPTIONS}
        return Recipe.from_dict({**data, "quantize": rung})

    def recipe_for(self, assignment: Mapping[str, int], exclude: Sequence[str] = ()) -> Recipe:
        """The user's recipe plus one entry per unit above the first rung (``assignment``: name -> rung index)."""
        data = self.recipe.to_dict()
        tensors = dict(data.get("tensors", {}))
        for name, level in assignment.items():
            if level > 0:
                tensors[anchored(name)] = self.entry(self.ladder[level])
        if tensors:
            data["tensors"] = tensors
        if exclude:
            data["exclude"] = [*data.get("exclude", []), *exclude]
        return Recipe.from_dict(data)

    def build(self, recipe: Recipe, **extra: Any) -> tuple[Model, Any]:
        from engine.api import compress

        start = time.perf_counter()
        self.builds += 1
        options = {**self.compress_options, **extra}
        if self._data is not None and (recipe.fits_to_data() or is_full_integer(recipe.options.get("quantize"))):
            options.setdefault("calibration", self._data)
        try:
            with remembering(self._remembered):
                return compress(self.float_model(), recipe, **options)
        finally:
            self.seconds += time.perf_counter() - start

    def candidate(self, recipe: Recipe, **extra: Any) -> bytes:
        model, _ = self.build(recipe, **extra)
        return bytes(model_to_bytes(model))


def _pickled(model: Model, shared: list[np.ndarray]) -> bytes:
    """``model`` pickled with its immutable arrays left out: appended to ``shared``, pickled by index."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)

    def persistent_id(obj: object) -> int | None:
        if isinstance(obj, np.ndarray) and immutable(obj):
            shared.append(obj)
            return len(shared) - 1
        return None

    pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(model)
    return out.getvalue()


def _unpickled(data: bytes, shared: list[np.ndarray]) -> Model:
    """The model `_pickled` wrote, holding the ``shared`` arrays themselves."""
    unpickler = pickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = shared.__getitem__  # type: ignore[method-assign]
    return unpickler.load()


def weight_units(builder: Builder) -> tuple[list[Unit], dict[int, Any]]:
    """The weights the first rung compresses, with their bytes and weight SQNR on every rung (one uniform run per
    integer or float16 rung: the passes report both per weight), and the uniform runs' reports by rung."""
    reports = {}
    for level, rung in enumerate(builder.ladder):
        if rung is None:
            continue
        _, reports[level] = builder.build(builder.uniform(rung))
    first = {t.name: t for t in reports[0].compressed if t.name and t.name != "<unnamed>"}
    units = []
    for name, t in first.items():
        sizes, sqnrs = [], []
        for level, rung in enumerate(builder.ladder):
            entry = None if rung is None else next((e for e in reports[level].tensors if e.name == name), None)
            done = entry is not None and entry.action == "compressed"
            sizes.append(entry.bytes_after if done else t.bytes_before)
            sqnrs.append(entry.weight_sqnr_db if done else None)
        units.append(Unit(name, t.ops[0] if t.ops else "?", sizes, sqnrs))
    return units, reports


def integer_units(builder: Builder, uniform: Model) -> list[Unit]:
    """The ops the uniform full-integer model runs with integer kernels, by output name, in graph order, with
    the bytes of their constants as integers and as float (estimates: weights 1 byte an element, other
    constants 4)."""
    float_model = builder.float_model()
    from engine.graph.weights import find_weights

    weight_bytes: dict[int, tuple[int, int]] = {}
    for w in find_weights(float_model):
        for op, _ in w.uses[:1]:
            weight_bytes[id(op)] = (w.stored_bytes, w.elements)
    by_output = {}
    for op in float_model.main.operators:
        out = next((t for t in op.outputs if t is not None), None)
        if out is not None and out.name:
            by_output[out.name] = op
    units = []
    seen = set()
    for op in uniform.main.operators:
        out = next((t for t in op.outputs if t is not None), None)
        if op.name in ("QUANTIZE", "DEQUANTIZE") or out is None or not out.name or out.name in seen:
            continue
        # A graph output written by an integer op keeps its name on the float side of its DEQUANTIZE; the op
        # writes NAME/int8 (engine/passes/full_integer/rewrite.py), and the recipe names it by NAME.
        name = out.name if out.name in by_output else out.name.rpartition("/")[0]
        if out.type_name not in ("INT8", "INT16", "UINT8") or name not in by_output or name in seen:
            continue
        seen.add(name)
        source_op = by_output[name]
        float_bytes, int_bytes = weight_bytes.get(id(source_op), (0, 0))
        for t in source_op.inputs:
            if t is not None and t.is_constant and t.type_name == "FLOAT32" and t.data is not None:
                size = int(np.asarray(t.data).size)
                if weight_bytes.get(id(source_op), (0, -1))[1] != size:
                    float_bytes += 4 * size
                    int_bytes += 4 * size
        units.append(Unit(name, op.name, [int_bytes, max(float_bytes, int_bytes)]))
    return units
