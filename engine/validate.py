"""Run models in the official LiteRT interpreter and compare a candidate against a reference.

A compressed model is only useful if it still computes what the original did, so this runs both on
the same inputs and reports per-output SQNR (worst and median over the samples), max abs error, cosine
similarity and top-1 agreement, plus the same error figures for every intermediate tensor the two models share.

Choices worth knowing:

* Two runtimes (``RUNTIMES``), both run by default, each reported on its own: ``default``, the interpreter
  exactly as users build it (``Interpreter(model_path=...)``, which applies the XNNPACK delegate; one thread),
  the judge of a model; and ``builtin``, the builtin kernels alone (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``),
  which some users run.  The worse of the two decides.  A candidate that fails to load or run in a runtime the
  reference runs in is a failure, reported with the interpreter's first error line; a runtime the reference
  itself fails in is not compared (MediaPipe's selfie segmentation models use a custom op only XNNPACK has),
  and a reference that runs in none is an `EngineError`.
* Intermediates come from the builtin kernels only: XNNPACK's fused partitions hide them, and only the
  builtin runtime can keep every tensor (``experimental_preserve_all_tensors``).
* Quantized (int8/uint8/int16 with a scale) inputs take float data quantized with the tensor's
  (scale, zero_point); quantized outputs are dequantized, so a float and an int8 model compare in
  float space.
* Intermediates are the tensors written by an op (from the interpreter's op list, so constants and
  graph inputs are excluded), not graph outputs, present in both models under the same unique name
  with the same shape and a float or quantized dtype. Outputs of DEQUANTIZE ops on fp16/int8
  weights count too: they show the weight error directly.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.calibrate import CalibrationSource, InputSpec, load_samples
from engine.errors import EngineError

ModelSource = str | Path | bytes
InputData = dict[str, np.ndarray] | np.ndarray | None

RUNTIMES = ("default", "builtin")
RUNTIME_TITLES = {"default": "default runtime (XNNPACK)", "builtin": "builtin kernels"}
RUNTIME_CHOICES = ("both", *RUNTIMES)  # what `validate`'s runtime= (and --runtime) takes

_QUANT_DTYPES = (np.int8, np.uint8, np.int16)
_TEXT_INTERMEDIATES = 10


class InterpreterError(EngineError):
    """The interpreter refused to load or run the model ``label`` names.  `validate` records it as that runtime's
    result instead of stopping: a model that runs in one runtime and not the other is what it must report."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


# ---------------------------------------------------------------------------------------- metrics


def _normalized(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both tensors flattened to float64 and divided by their joint peak, so squares never underflow."""
    ref = np.asarray(reference, np.float64).ravel()
    cand = np.asarray(candidate, np.float64).ravel()
    peak = max(float(np.abs(ref).max(initial=0.0)), float(np.abs(cand).max(initial=0.0)))
    if peak == 0.0 or not math.isfinite(peak):
        return ref, cand
    return ref / peak, cand / peak


def _difference(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """reference - candidate, 0 where they are equal (equal infinities too), NaN where either is NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(reference == candidate, 0.0, np.subtract(reference, candidate, dtype=np.float64))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: +inf when identical, -inf for a zero reference or an infinite
    error, NaN when either holds NaN or both are infinite.  Never raises: the inf outputs of a model whose weights
    overflow are exactly what validation has to report."""
    ref, cand = _normalized(reference, candidate)
    with np.errstate(over="ignore"):
        noise = float(np.sum(np.square(_difference(ref, cand))))
        signal = float(np.sum(np.square(ref)))
    if math.isnan(noise) or math.isnan(signal):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * (math.log10(signal) - math.log10(noise))  # the ratio itself could underflow to 0


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest elementwise |reference - candidate| (0 for empty tensors, NaN if either holds NaN)."""
    diff = np.abs(_difference(np.asarray(reference, np.float64), np.asarray(candidate, np.float64)))
    return float(diff.max()) if diff.size else 0.0


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine of the angle between the flattened tensors; 1 if both are zero, 0 if only one is, NaN with
    infinities or NaN."""
    a, b = _normalized(reference, candidate)
    with np.errstate(invalid="ignore", over="ignore"):
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if na == 0.0 or nb == 0.0:
            return 1.0 if na == nb else 0.0
        return float(np.dot(a, b) / (na * nb))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows (all dims but the last) whose argmax over the last dim agrees."""
    ref = np.asarray(reference)
    rows_ref = ref.reshape(-1, ref.shape[-1])
    rows_cand = np.asarray(candidate).reshape(rows_ref.shape)
    return float(np.mean(rows_ref.argmax(axis=1) == rows_cand.argmax(axis=1)))


def quantize_array(values: np.ndarray, scale: float, zero_point: int, dtype: type | np.dtype) -> np.ndarray:
    """Affine-quantize float values to an integer dtype, rounding to nearest and saturating."""
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(values, np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_array(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Map affine-quantized integers back to float64."""
    return (np.asarray(values, np.float64) - zero_point) * scale


def _worst(values: list[float]) -> float:
    """The lowest of SQNR-like figures: NaN if any is NaN (unknown is not good), +inf for none."""
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values, default=math.inf)


# ----------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class TensorComparison:
    """Error figures for one tensor present in both models; over several samples, the worst of each."""

    name: str
    shape: tuple[int, ...]
    sqnr_db: float
    max_abs_error: float


@dataclass(frozen=True)
class OutputComparison(TensorComparison):
    """Error figures for one model output over the samples: ``sqnr_db`` is the worst sample's SQNR and
    ``median_sqnr_db`` the median, with the largest error and lowest cosine; ``top1_agreement`` is the mean over
    the samples, None when the output is not class scores."""

    median_sqnr_db: float
    candidate_name: str
    cosine_similarity: float
    top1_agreement: float | None
    bit_identical: bool


@dataclass
class RuntimeResult:
    """One runtime's comparison.  ``error``: the candidate failed to load or run where the reference runs (the
    interpreter's first error line), a validation failure; ``skipped``: the reference itself fails here, so
    nothing was compared.  ``intermediates`` is None where they cannot be observed (the default runtime)."""

    runtime: str
    outputs: list[OutputComparison] = field(default_factory=list)
    intermediates: list[TensorComparison] | None = None
    error: str | None = None
    skipped: str | None = None

    @property
    def title(self) -> str:
        return RUNTIME_TITLES[self.runtime]

    @property
    def decides(self) -> bool:
        """Whether this result counts: compared (or failed) here."""
        return self.skipped is None

    @property
    def worst_sqnr_db(self) -> float | None:
        """Lowest output SQNR: NaN if any is NaN, +inf if every output is exact, -inf if the candidate failed,
        None when nothing was compared."""
        if self.skipped is not None:
            return None
        return -math.inf if self.error is not None else _worst([o.sqnr_db for o in self.outputs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "decides": self.decides,
            "worst_sqnr_db": self.worst_sqnr_db,
            "error": self.error,
            "skipped": self.skipped,
            "outputs": [asdict(o) for o in self.outputs],
            "intermediates": None if self.intermediates is None else [asdict(t) for t in self.intermediates],
        }

    def format_text(self, medians: bool) -> str:
        """This runtime's section: its outputs table and worst SQNR, or why there is none."""
        if self.skipped is not None:
            return f"{self.title}: not compared, the reference fails here: {self.skipped}"
        if self.error is not None:
            return f"{self.title}: FAILED: {self.error}"
        lines = [f"{self.title}:"]
        median = f" {'median':>9}" if medians else ""
        header = (
            f"{'output':<32} {'shape':<16} {'SQNR dB':>9}{median} {'max|err|':>10} {'cosine':>9} {'top-1':>6}  exact"
        )
        lines += [header, "-" * len(header)]
        for o in self.outputs:
            top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}"
            median = f" {_num(o.median_sqnr_db, '.2f'):>9}" if medians else ""
            lines.append(
                f"{o.name:<32} {_shape(o.shape):<16} {_num(o.sqnr_db, '.2f'):>9}{median} {_num(o.max_abs_error):>10} "
                f"{o.cosine_similarity:>9.6f} {top1:>6}  {'yes' if o.bit_identical else 'no'}"
            )
        worst = _worst([o.sqnr_db for o in self.outputs])
        lines.append(f"worst output SQNR in the {self.title}: {_num(worst, '.2f')} dB")
        return "\n".join(lines)


@dataclass
class ValidationReport:
    """Result of `validate`: one `RuntimeResult` per runtime run, the inputs used and how many samples."""

    runtimes: list[RuntimeResult]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: int = 1

    @property
    def deciding(self) -> list[RuntimeResult]:
        """The runtimes whose results count."""
        return [r for r in self.runtimes if r.decides]

    @property
    def worst_sqnr_db(self) -> float:
        """Lowest output SQNR over the deciding runtimes: NaN if any is NaN, -inf if the candidate failed in one."""
        return _worst([r.worst_sqnr_db for r in self.deciding if r.worst_sqnr_db is not None])

    @property
    def failures(self) -> list[str]:
        """One line per deciding runtime the candidate failed in: the runtime and the interpreter's error."""
        return [f"{r.title}: {r.error}" for r in self.deciding if r.error is not None]

    @property
    def outputs(self) -> list[OutputComparison]:
        """Per output, the worse comparison among the deciding runtimes that ran (what `worst_sqnr_db` is the
        lowest of); each runtime's own are in ``runtimes``."""
        ran = [r.outputs for r in self.deciding if r.error is None]
        return [min(group, key=_badness) for group in zip(*ran, strict=True)]

    @property
    def intermediates(self) -> list[TensorComparison]:
        """The intermediates compared in the builtin kernels (the only runtime that keeps them)."""
        return next((r.intermediates or [] for r in self.runtimes if r.runtime == "builtin"), [])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become the strings "inf", "-inf" and "nan"."""
        return json_safe(
            {
                "worst_sqnr_db": self.worst_sqnr_db,
                "samples": self.samples,
                "failures": self.failures,
                "inputs": self.inputs,
                "runtimes": {r.runtime: r.to_dict() for r in self.runtimes},
            }
        )

    def format_text(self) -> str:
        """Readable report: the inputs, a section per runtime, the worst intermediates, the verdict."""
        lines = [f"inputs ({self.samples} sample{'s' if self.samples != 1 else ''}):"]
        for name, info in self.inputs.items():
            lines.append(
                f"  {name}: {info['dtype']}{info['shape']} {info['source']}, "
                f"range [{_num(info['min'])}, {_num(info['max'])}]"
            )
        for r in self.runtimes:
            lines += ["", r.format_text(medians=self.samples > 1)]
        if self.intermediates:
            worst = sorted(self.intermediates, key=_badness)
            shown = worst[:_TEXT_INTERMEDIATES]
            lines += [
                "",
                f"intermediates: builtin kernels only; {len(self.intermediates)} compared, {len(shown)} worst by SQNR:",
            ]
            for t in shown:
                lines.append(
                    f"  {_num(t.sqnr_db, '.2f'):>9} dB  max|err| {_num(t.max_abs_error):<10} "
                    f"{_shape(t.shape):<16} {t.name}"
                )
        judges = " and the ".join(r.title for r in self.deciding)
        lines += ["", f"worst output SQNR: {_num(self.worst_sqnr_db, '.2f')} dB (judged by the {judges})"]
        lines += [f"FAILED in the {failure}" for failure in self.failures]
        return "\n".join(lines)


def _badness(t: TensorComparison) -> tuple[bool, float]:
    """Sort key putting the worst comparison first: NaN (unknown), then the lowest SQNR."""
    return not math.isnan(t.sqnr_db), t.sqnr_db


def _num(value: float, spec: str = ".4g") -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings ("inf", "-inf", "nan") and tuples as lists: valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ interpreter


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
        raise EngineError("install the validation extra: pip install 'litert-engine[validate]'") from exc
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


def _label(model: ModelSource, role: str) -> str:
    return f"{role} ({len(model)} bytes)" if isinstance(model, bytes | bytearray) else f"{role} {model}"


def _quant(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a quantized integer tensor, None for float and plain integer tensors."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]) in _QUANT_DTYPES and scale != 0.0:
        return float(scale), int(zero_point)
    return None


def _as_float(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Tensor values in float64, dequantized when the tensor is quantized."""
    q = _quant(detail)
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


def _named_data(details: list[dict[str, Any]], data: InputData, label: str, seed: int) -> dict[str, np.ndarray]:
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


def _cast_for(arr: np.ndarray, source: dict[str, Any], target: dict[str, Any]) -> np.ndarray:
    """Convert data prepared for tensor `source` into the dtype of tensor `target`.

    Integer data in a quantized source's own dtype is taken as already quantized: it passes through
    when the target has the same dtype and parameters, and is dequantized first otherwise.
    """
    dtype = np.dtype(target["dtype"])
    src_q, dst_q = _quant(source), _quant(target)
    if src_q and arr.dtype == np.dtype(source["dtype"]):
        if dst_q == src_q and dtype == arr.dtype:
            return arr
        arr = dequantize_array(arr, *src_q)
    if dst_q and arr.dtype.kind == "f":
        return quantize_array(arr, *dst_q, dtype)
    return arr.astype(dtype, copy=False)


def _pairs(ref: list[dict[str, Any]], cand: list[dict[str, Any]], what: str) -> list[tuple[dict, dict]]:
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


def _invoke(interp: Any, feeds: list[tuple[dict[str, Any], np.ndarray]], label: str) -> None:
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
    label = _label(model, "model")
    interp = interpreter(model, label, preserve_all=False, num_threads=num_threads, xnnpack=xnnpack)
    details = interp.get_input_details()
    data = _named_data(details, inputs, label, seed=0)
    _invoke(interp, [(d, _cast_for(data[d["name"]], d, d)) for d in details], label)
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}


# -------------------------------------------------------------------------------------- validate


def validate(
    reference: ModelSource,
    candidate: ModelSource,
    data: CalibrationSource | None = None,
    *,
    seed: int = 0,
    intermediates: bool = True,
    num_threads: int = 1,
    class_scores: bool = False,
    runtime: str = "both",
) -> ValidationReport:
    """Run reference and candidate on the same samples in each runtime and compare outputs (and intermediates).

    ``data`` is the calibration format (`engine.calibrate.load_samples`): samples keyed by the reference's input
    names, one array for a single-input model, or an .npz/.npy file; the leading axis is the sample (a batch-1
    input also takes samples without it).  None generates one seeded sample.  ``runtime`` is "default",
    "builtin" or "both".  Top-1 agreement is reported for rank-2 [N, C>1] outputs, or with
    ``class_scores=True`` for every output whose last dim is > 1 (rows = all other dims).
    """
    if runtime not in RUNTIME_CHOICES:
        raise EngineError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIME_CHOICES)})")
    labels = _label(reference, "reference"), _label(candidate, "candidate")
    prepared: tuple[list[list[np.ndarray]], dict[str, dict[str, Any]]] | None = None
    results = []
    for name in RUNTIMES if runtime == "both" else (runtime,):
        result = RuntimeResult(name)
        keep = intermediates and name == "builtin"
        options = {"preserve_all": keep, "num_threads": num_threads, "xnnpack": name == "default"}
        try:
            ref = interpreter(reference, labels[0], **options)
            if prepared is None:  # read and checked once, against the first runtime the reference loads in
                prepared = _samples(ref.get_input_details(), data, labels[0], seed)
            cand = interpreter(candidate, labels[1], **options)
            result.outputs, compared = _compare(ref, cand, prepared[0], labels, class_scores, keep)
            result.intermediates = compared if name == "builtin" else None
        except InterpreterError as exc:
            if exc.label == labels[0]:
                result.skipped = str(exc)
            else:
                result.error = str(exc)
        results.append(result)
    if prepared is None or not any(r.decides for r in results):
        reasons: dict[str, list[str]] = {}
        for r in results:
            reasons.setdefault(str(r.skipped), []).append(r.title)
        raise EngineError("; ".join(f"{' and '.join(titles)}: {reason}" for reason, titles in reasons.items()))
    samples, inputs = prepared
    return ValidationReport(results, inputs, len(samples))


def _samples(
    details: list[dict[str, Any]], data: CalibrationSource | None, label: str, seed: int
) -> tuple[list[list[np.ndarray]], dict[str, dict[str, Any]]]:
    """Every sample as the reference's inputs take it (in input order), and a summary of each input's values."""
    if data is None:
        named = _named_data(details, None, label, seed)
        samples = [[named[d["name"]] for d in details]]
    else:
        specs = [
            InputSpec(d["name"], tuple(int(n) for n in d["shape_signature"]), np.dtype(d["dtype"]), _quant(d))
            for d in details
        ]
        loaded = load_samples(data, specs, "validation data")
        samples = [loaded.sample(i) for i in range(loaded.count)]
    samples = samples or [[]]  # a model without inputs runs once
    summary = {}
    for k, d in enumerate(details):
        values = [s[k] for s in samples if s[k].size]
        summary[d["name"]] = {
            "dtype": str(samples[0][k].dtype),
            "shape": list(samples[0][k].shape),
            "source": "generated" if data is None else "given",
            "min": min((float(v.min()) for v in values), default=0.0),
            "max": max((float(v.max()) for v in values), default=0.0),
        }
    return samples, summary


class _Figures(NamedTuple):
    """One output compared on one sample."""

    sqnr_db: float
    max_abs_error: float
    cosine_similarity: float
    top1_agreement: float | None
    bit_identical: bool


def _compare(
    ref: Any, cand: Any, samples: list[list[np.ndarray]], labels: tuple[str, str], class_scores: bool, keep: bool
) -> tuple[list[OutputComparison], list[TensorComparison]]:
    """Run both interpreters on every sample; each output's figures over the samples, and with ``keep`` the
    worst figures of each shared intermediate."""
    in_pairs = _pairs(ref.get_input_details(), cand.get_input_details(), "input")
    out_pairs = _pairs(ref.get_output_details(), cand.get_output_details(), "output")
    figures: list[list[_Figures]] = [[] for _ in out_pairs]
    shapes: list[tuple[int, ...]] = []
    shared: list[tuple[dict, dict]] | None = None
    worst: list[TensorComparison] = []
    for sample in samples:
        _invoke(ref, [(r, arr) for (r, _), arr in zip(in_pairs, sample, strict=True)], labels[0])
        _invoke(cand, [(c, _cast_for(arr, r, c)) for (r, c), arr in zip(in_pairs, sample, strict=True)], labels[1])
        shapes = []
        for k, (r, c) in enumerate(out_pairs):
            raw_r, raw_c = ref.get_tensor(r["index"]), cand.get_tensor(c["index"])
            if raw_r.shape != raw_c.shape:
                raise EngineError(
                    f"output {r['name']!r} has shape {list(raw_r.shape)} in reference, {list(raw_c.shape)} in candidate"
                )
            fr, fc = _as_float(raw_r, r), _as_float(raw_c, c)
            is_scores = raw_r.ndim >= 1 and raw_r.shape[-1] > 1 and (class_scores or raw_r.ndim == 2)
            figures[k].append(
                _Figures(
                    sqnr_db(fr, fc),
                    max_abs_error(fr, fc),
                    cosine_similarity(fr, fc),
                    top1_agreement(fr, fc) if is_scores and raw_r.size else None,
                    raw_r.dtype == raw_c.dtype and np.array_equal(raw_r, raw_c),
                )
            )
            shapes.append(tuple(raw_r.shape))
        if keep:
            shared = _shared_intermediates(ref, cand) if shared is None else shared
            now = [_compare_tensor(ref, cand, r, c) for r, c in shared]
            worst = [_worse(a, b) for a, b in zip(worst, now, strict=True)] if worst else now
    outputs = [
        _over_samples(r["name"], c["name"], shape, per_sample)
        for (r, c), shape, per_sample in zip(out_pairs, shapes, figures, strict=True)
    ]
    return outputs, worst


def _over_samples(name: str, candidate_name: str, shape: tuple[int, ...], figures: list[_Figures]) -> OutputComparison:
    """One output's comparison over the samples: the worst SQNR decides, the median shows the typical one."""
    sqnrs = [f.sqnr_db for f in figures]
    top1 = [f.top1_agreement for f in figures if f.top1_agreement is not None]
    with np.errstate(invalid="ignore"):  # the median of +inf and -inf is NaN, as it should be
        median = float(np.median(sqnrs))
    return OutputComparison(
        name=name,
        shape=shape,
        sqnr_db=_worst(sqnrs),
        max_abs_error=float(np.max([f.max_abs_error for f in figures])),
        median_sqnr_db=median,
        candidate_name=candidate_name,
        cosine_similarity=float(np.min([f.cosine_similarity for f in figures])),
        top1_agreement=float(np.mean(top1)) if top1 else None,
        bit_identical=all(f.bit_identical for f in figures),
    )


def _produced(interp: Any) -> dict[str, dict[str, Any]]:
    """Comparable op-written tensors by name: not graph outputs, float or quantized, name unique."""
    ops = getattr(interp, "_get_ops_details", None)
    if ops is None:
        raise EngineError("this ai-edge-litert cannot list ops; validate with intermediates=False")
    written = {int(i) for op in ops() for i in op["outputs"] if i >= 0}
    written -= {d["index"] for d in interp.get_output_details()}
    details = interp.get_tensor_details()
    counts = Counter(d["name"] for d in details)
    return {
        d["name"]: d
        for d in details
        if d["index"] in written
        and counts[d["name"]] == 1
        and (np.dtype(d["dtype"]).kind == "f" or _quant(d) is not None)
    }


def _shared_intermediates(ref: Any, cand: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The intermediates both models have under the same name and shape, in reference tensor order."""
    ref_t, cand_t = _produced(ref), _produced(cand)
    return [
        (r, cand_t[name])
        for name, r in sorted(ref_t.items(), key=lambda kv: kv[1]["index"])
        if name in cand_t and tuple(r["shape"]) == tuple(cand_t[name]["shape"])
    ]


def _compare_tensor(ref: Any, cand: Any, r: dict[str, Any], c: dict[str, Any]) -> TensorComparison:
    fr = _as_float(ref.get_tensor(r["index"]), r)
    fc = _as_float(cand.get_tensor(c["index"]), c)
    return TensorComparison(r["name"], tuple(int(s) for s in r["shape"]), sqnr_db(fr, fc), max_abs_error(fr, fc))


def _worse(a: TensorComparison, b: TensorComparison) -> TensorComparison:
    """The worst figures of one tensor compared on two samples."""
    return TensorComparison(
        a.name, a.shape, _worst([a.sqnr_db, b.sqnr_db]), float(np.max([a.max_abs_error, b.max_abs_error]))
    )
