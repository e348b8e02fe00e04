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
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from engine.errors import EngineError
from engine.quant.metrics import cosine_similarity, max_abs_error, sqnr_db, top1_agreement
from engine.report import json_safe
from engine.runtime.calibrate import CalibrationSource, InputSpec, load_samples
from engine.runtime.litert import (
    RUNTIME_CHOICES,
    RUNTIME_TITLES,
    RUNTIMES,
    InterpreterError,
    ModelSource,
    as_float,
    cast_input,
    input_data,
    interpreter,
    invoke,
    match_tensors,
    model_label,
    quantization_of,
)

_TEXT_INTERMEDIATES = 10


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

    ``data`` is the calibration format (`engine.runtime.calibrate.load_samples`): samples keyed by the reference's input
    names, one array for a single-input model, or an .npz/.npy file; the leading axis is the sample (a batch-1
    input also takes samples without it).  None generates one seeded sample.  ``runtime`` is "default",
    "builtin" or "both".  Top-1 agreement is reported for rank-2 [N, C>1] outputs, or with
    ``class_scores=True`` for every output whose last dim is > 1 (rows = all other dims).
    """
    if runtime not in RUNTIME_CHOICES:
        raise EngineError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIME_CHOICES)})")
    labels = model_label(reference, "reference"), model_label(candidate, "candidate")
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
        named = input_data(details, None, label, seed)
        samples = [[named[d["name"]] for d in details]]
    else:
        specs = [
            InputSpec(d["name"], tuple(int(n) for n in d["shape_signature"]), np.dtype(d["dtype"]), quantization_of(d))
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
    in_pairs = match_tensors(ref.get_input_details(), cand.get_input_details(), "input")
    out_pairs = match_tensors(ref.get_output_details(), cand.get_output_details(), "output")
    figures: list[list[_Figures]] = [[] for _ in out_pairs]
    shapes: list[tuple[int, ...]] = []
    shared: list[tuple[dict, dict]] | None = None
    worst: list[TensorComparison] = []
    for sample in samples:
        invoke(ref, [(r, arr) for (r, _), arr in zip(in_pairs, sample, strict=True)], labels[0])
        invoke(cand, [(c, cast_input(arr, r, c)) for (r, c), arr in zip(in_pairs, sample, strict=True)], labels[1])
        shapes = []
        for k, (r, c) in enumerate(out_pairs):
            raw_r, raw_c = ref.get_tensor(r["index"]), cand.get_tensor(c["index"])
            if raw_r.shape != raw_c.shape:
                raise EngineError(
                    f"output {r['name']!r} has shape {list(raw_r.shape)} in reference, {list(raw_c.shape)} in candidate"
                )
            fr, fc = as_float(raw_r, r), as_float(raw_c, c)
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
        and (np.dtype(d["dtype"]).kind == "f" or quantization_of(d) is not None)
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
    fr = as_float(ref.get_tensor(r["index"]), r)
    fc = as_float(cand.get_tensor(c["index"]), c)
    return TensorComparison(r["name"], tuple(int(s) for s in r["shape"]), sqnr_db(fr, fc), max_abs_error(fr, fc))


def _worse(a: TensorComparison, b: TensorComparison) -> TensorComparison:
    """The worst figures of one tensor compared on two samples."""
    return TensorComparison(
        a.name, a.shape, _worst([a.sqnr_db, b.sqnr_db]), float(np.max([a.max_abs_error, b.max_abs_error]))
    )
