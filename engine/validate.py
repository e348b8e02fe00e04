"""Run models in the official LiteRT interpreter and compare a candidate against a reference.

A compressed model is only useful if it still computes what the original did, so this runs both on
the same inputs and reports per-output SQNR, max abs error, cosine similarity and top-1 agreement,
plus the same error figures for every intermediate tensor the two models share.

Choices worth knowing:

* Interpreters are built with ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``: results then come from the
  builtin kernels whether or not XNNPACK would have taken a subgraph, and intermediates are
  observable. Models with custom ops (e.g. MediaPipe's Convolution2DTransposeBias) therefore fail
  with an `EngineError` naming the op.
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
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError

ModelSource = str | Path | bytes
InputData = dict[str, np.ndarray] | np.ndarray | None

_QUANT_DTYPES = (np.int8, np.uint8, np.int16)
_TEXT_INTERMEDIATES = 10


# ---------------------------------------------------------------------------------------- metrics


def _normalized(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both tensors flattened to float64 and divided by their joint peak, so squares never underflow."""
    ref = np.asarray(reference, np.float64).ravel()
    cand = np.asarray(candidate, np.float64).ravel()
    peak = max(float(np.abs(ref).max(initial=0.0)), float(np.abs(cand).max(initial=0.0)))
    if peak == 0.0 or not math.isfinite(peak):
        return ref, cand
    return ref / peak, cand / peak


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when identical, -inf for a zero reference."""
    ref, cand = _normalized(reference, candidate)
    noise = float(np.sum(np.square(ref - cand)))
    signal = float(np.sum(np.square(ref)))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest elementwise |reference - candidate| (0 for empty tensors)."""
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    return float(diff.max()) if diff.size else 0.0


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine of the angle between the flattened tensors; 1 if both are zero, 0 if only one is."""
    a, b = _normalized(reference, candidate)
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


# ----------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class TensorComparison:
    """Error figures for one tensor present in both models."""

    name: str
    shape: tuple[int, ...]
    sqnr_db: float
    max_abs_error: float


@dataclass(frozen=True)
class OutputComparison(TensorComparison):
    """Error figures for one model output; `top1_agreement` is None when not class scores."""

    candidate_name: str
    cosine_similarity: float
    top1_agreement: float | None
    bit_identical: bool


@dataclass
class ValidationReport:
    """Result of `validate`: outputs, intermediates and a summary of the inputs used."""

    outputs: list[OutputComparison]
    intermediates: list[TensorComparison] = field(default_factory=list)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def worst_sqnr_db(self) -> float:
        """Lowest output SQNR (NaN if any output SQNR is NaN, +inf if all outputs are exact)."""
        values = [o.sqnr_db for o in self.outputs]
        if any(math.isnan(v) for v in values):
            return math.nan
        return min(values, default=math.inf)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become the strings "inf", "-inf" and "nan"."""
        return json_safe(
            {
                "worst_sqnr_db": self.worst_sqnr_db,
                "inputs": self.inputs,
                "outputs": [asdict(o) for o in self.outputs],
                "intermediates": [asdict(t) for t in self.intermediates],
            }
        )

    def format_text(self) -> str:
        """Readable table of inputs, outputs and the worst intermediates by SQNR."""
        lines = ["inputs:"]
        for name, info in self.inputs.items():
            lines.append(
                f"  {name}: {info['dtype']}{info['shape']} {info['source']}, "
                f"range [{_num(info['min'])}, {_num(info['max'])}]"
            )
        header = f"{'output':<32} {'shape':<16} {'SQNR dB':>9} {'max|err|':>10} {'cosine':>9} {'top-1':>6}  exact"
        lines += ["", header, "-" * len(header)]
        for o in self.outputs:
            top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}"
            lines.append(
                f"{o.name:<32} {_shape(o.shape):<16} {_num(o.sqnr_db, '.2f'):>9} {_num(o.max_abs_error):>10} "
                f"{o.cosine_similarity:>9.6f} {top1:>6}  {'yes' if o.bit_identical else 'no'}"
            )
        lines.append(f"worst output SQNR: {_num(self.worst_sqnr_db, '.2f')} dB")
        if self.intermediates:
            worst = sorted(self.intermediates, key=lambda t: (not math.isnan(t.sqnr_db), t.sqnr_db))
            shown = worst[:_TEXT_INTERMEDIATES]
            lines += ["", f"intermediates: {len(self.intermediates)} compared, {len(shown)} worst by SQNR:"]
            for t in shown:
                lines.append(
                    f"  {_num(t.sqnr_db, '.2f'):>9} dB  max|err| {_num(t.max_abs_error):<10} "
                    f"{_shape(t.shape):<16} {t.name}"
                )
        return "\n".join(lines)


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
    """Build an interpreter with builtin kernels only (or the default XNNPACK delegate), turning load errors into
    one-line EngineErrors."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        raise EngineError("install the validation extra: pip install 'litert-engine[validate]'") from exc
    source = {"model_content": bytes(model)} if isinstance(model, bytes | bytearray) else {"model_path": str(model)}
    if "model_path" in source and not Path(source["model_path"]).is_file():
        raise EngineError(f"{label}: file not found")
    try:
        interp = Interpreter(
            **source,
            num_threads=num_threads,
            experimental_preserve_all_tensors=preserve_all,
            experimental_op_resolver_type=OpResolverType.AUTO
            if xnnpack
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise _load_error(exc, label) from exc
    return interp


def _load_error(exc: Exception, label: str) -> EngineError:
    custom = sorted(set(re.findall(r"unresolved custom op: (\w+)", str(exc))))
    if custom:
        return EngineError(f"{label} uses custom op(s) the interpreter cannot run: {', '.join(custom)}")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return EngineError(f"{label}: interpreter error: {first}")


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


def load_inputs(path: str | Path) -> dict[str, np.ndarray] | np.ndarray:
    """Load validation data: a .npz keyed by input name, or a single-array .npz/.npy."""
    path = Path(path)
    if path.suffix not in (".npz", ".npy"):
        raise EngineError(f"input data file {path} must be .npz (keyed by input name) or .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read input data file {path}: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    if not arrays:
        raise EngineError(f"input data file {path} holds no arrays")
    return arrays["arr_0"] if list(arrays) == ["arr_0"] else arrays


# -------------------------------------------------------------------------------------- validate


def validate(
    reference: ModelSource,
    candidate: ModelSource,
    data: InputData = None,
    *,
    seed: int = 0,
    intermediates: bool = True,
    num_threads: int = 1,
    class_scores: bool = False,
    xnnpack: bool = False,
) -> ValidationReport:
    """Run reference and candidate on the same inputs and compare outputs (and intermediates).

    `data` is keyed by the reference's input names (see `load_inputs`); None generates seeded data.
    Top-1 agreement is reported for rank-2 [N, C>1] outputs, or with `class_scores=True` for every
    output whose last dim is > 1 (rows = all other dims).  ``xnnpack`` runs both with the interpreter's default
    delegate (its fused partitions hide intermediates, so only outputs are compared).
    """
    ref_label, cand_label = _label(reference, "reference"), _label(candidate, "candidate")
    intermediates = intermediates and not xnnpack
    options = {"preserve_all": intermediates, "num_threads": num_threads, "xnnpack": xnnpack}
    ref = interpreter(reference, ref_label, **options)
    cand = interpreter(candidate, cand_label, **options)

    in_pairs = _pairs(ref.get_input_details(), cand.get_input_details(), "input")
    named = _named_data([r for r, _ in in_pairs], data, ref_label, seed)
    ref_feeds = [(r, _cast_for(named[r["name"]], r, r)) for r, _ in in_pairs]
    _invoke(ref, ref_feeds, ref_label)
    _invoke(
        cand,
        [(c, _cast_for(arr, r, c)) for (r, c), (_, arr) in zip(in_pairs, ref_feeds, strict=True)],
        cand_label,
    )

    outputs = []
    for r, c in _pairs(ref.get_output_details(), cand.get_output_details(), "output"):
        raw_r, raw_c = ref.get_tensor(r["index"]), cand.get_tensor(c["index"])
        if raw_r.shape != raw_c.shape:
            raise EngineError(
                f"output {r['name']!r} has shape {list(raw_r.shape)} in reference, {list(raw_c.shape)} in candidate"
            )
        fr, fc = _as_float(raw_r, r), _as_float(raw_c, c)
        is_scores = raw_r.ndim >= 1 and raw_r.shape[-1] > 1 and (class_scores or raw_r.ndim == 2)
        outputs.append(
            OutputComparison(
                name=r["name"],
                shape=tuple(raw_r.shape),
                sqnr_db=sqnr_db(fr, fc),
                max_abs_error=max_abs_error(fr, fc),
                candidate_name=c["name"],
                cosine_similarity=cosine_similarity(fr, fc),
                top1_agreement=top1_agreement(fr, fc) if is_scores and raw_r.size else None,
                bit_identical=raw_r.dtype == raw_c.dtype and np.array_equal(raw_r, raw_c),
            )
        )
    inputs = {
        r["name"]: {
            "dtype": str(arr.dtype),
            "shape": list(arr.shape),
            "source": "generated" if data is None else "given",
            "min": float(arr.min()) if arr.size else 0.0,
            "max": float(arr.max()) if arr.size else 0.0,
        }
        for r, arr in ref_feeds
    }
    inter = _compare_intermediates(ref, cand) if intermediates else []
    return ValidationReport(outputs=outputs, intermediates=inter, inputs=inputs)


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


def _compare_intermediates(ref: Any, cand: Any) -> list[TensorComparison]:
    """SQNR and max abs error of every shared intermediate, in reference tensor order."""
    ref_t, cand_t = _produced(ref), _produced(cand)
    result = []
    for name, r in sorted(ref_t.items(), key=lambda kv: kv[1]["index"]):
        c = cand_t.get(name)
        if c is None or tuple(r["shape"]) != tuple(c["shape"]):
            continue
        fr = _as_float(ref.get_tensor(r["index"]), r)
        fc = _as_float(cand.get_tensor(c["index"]), c)
        result.append(TensorComparison(name, tuple(int(s) for s in r["shape"]), sqnr_db(fr, fc), max_abs_error(fr, fc)))
    return result
