"""The two LiteRT runtimes a model's outputs are checked in, for every test that runs a model.

``"default"`` is the interpreter as users build it, ``Interpreter(model_path=p)`` / ``Interpreter(model_content=b)``
(its default XNNPACK delegate applied; one thread, which is also what it uses when not told); ``"builtin"`` adds
``experimental_op_resolver_type=BUILTIN_WITHOUT_DEFAULT_DELEGATES``: the builtin kernels alone (the only runtime
whose intermediate tensors can be kept, which ``engine.runtime.validate``
compares).  A model is right only when it loads
and computes right in both; a form that loads in one and fails in the other is a bug.

A model that does not load, prepare or run raises ``Refused`` naming the stage, so a test fails with the
interpreter's message, and the tests that map what each runtime takes can tell the stages apart.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from engine.quant.metrics import quantize_array, sqnr_db

RUNTIMES = ("default", "builtin")
# ``@BOTH_RUNTIMES`` on a test taking a ``runtime`` argument runs it once per runtime.
BOTH_RUNTIMES = pytest.mark.parametrize("runtime", RUNTIMES)

Model = str | Path | bytes | bytearray
Inputs = Mapping[str, np.ndarray] | np.ndarray


class Refused(Exception):
    """The interpreter refused the model at ``stage``: "load" (building it), "prepare" (allocating tensors,
    where XNNPACK is applied) or "invoke"."""

    def __init__(self, stage: str, runtime: str, message: str) -> None:
        super().__init__(f"{runtime} runtime, {stage}: {message.strip()}")
        self.stage = stage


def make_interpreter(model: Model, runtime: str) -> Interpreter:
    """An interpreter of ``model`` (a path or the file's bytes) in ``runtime``, tensors not yet allocated."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {RUNTIMES}")
    source = {"model_content": bytes(model)} if isinstance(model, bytes | bytearray) else {"model_path": str(model)}
    options = {}
    if runtime == "builtin":
        options = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    try:
        return Interpreter(**source, num_threads=1, **options)
    except (RuntimeError, ValueError) as exc:
        raise Refused("load", runtime, str(exc)) from None


def _feed(data: np.ndarray, detail: dict) -> np.ndarray:
    """``data`` in the input's dtype: float data for a quantized integer input is quantized with its parameters."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    data = np.asarray(data)
    if dtype.kind in "iu" and scale and data.dtype.kind == "f":
        return quantize_array(data, scale, zero_point, dtype)
    return data.astype(dtype, copy=False)


def invoked(model: Model, inputs: Inputs, runtime: str) -> Interpreter:
    """An interpreter of ``model`` in ``runtime`` that has run once on ``inputs`` (keyed by input name, or one
    array for a single-input model; float data for a quantized input is quantized with its parameters)."""
    interp = make_interpreter(model, runtime)
    try:
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise Refused("prepare", runtime, str(exc)) from None
    details = interp.get_input_details()
    if not isinstance(inputs, Mapping):
        (only,) = details
        inputs = {only["name"]: inputs}
    assert sorted(inputs) == sorted(d["name"] for d in details), (sorted(inputs), [d["name"] for d in details])
    for detail in details:
        interp.set_tensor(detail["index"], _feed(inputs[detail["name"]], detail))
    try:
        interp.invoke()
    except (RuntimeError, ValueError) as exc:
        raise Refused("invoke", runtime, str(exc)) from None
    return interp


def outputs_of(interp: Interpreter) -> dict[str, np.ndarray]:
    """The outputs of an invoked interpreter by tensor name, in the model's output order (raw: not dequantized)."""
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}


def float_outputs(interp: Interpreter) -> dict[str, np.ndarray]:
    """The outputs of an invoked interpreter by tensor name, in float64: quantized ones dequantized with their
    (scale, zero point), so a float and an integer model compare in float space."""
    result = {}
    for detail in interp.get_output_details():
        values = interp.get_tensor(detail["index"]).astype(np.float64)
        scale, zero_point = detail["quantization"]
        result[detail["name"]] = (values - zero_point) * scale if scale else values
    return result


def run_model(model: Model, inputs: Inputs, runtime: str) -> dict[str, np.ndarray]:
    """One inference of ``model`` in ``runtime``: the outputs by name."""
    return outputs_of(invoked(model, inputs, runtime))


def delegate_partitions(interp: Interpreter) -> int:
    """How many partitions a delegate (XNNPACK in the default runtime) took over: 0 when the builtin kernels run
    everything."""
    return [op["op_name"] for op in interp._get_ops_details()].count("DELEGATE")


def builtin_ops(interp: Interpreter) -> list[str]:
    """The ops an allocated interpreter runs on the builtin kernels: every node but those a delegate (XNNPACK in the
    default runtime) replaced, which are the nodes between a DELEGATE node's inputs and its outputs (the interpreter
    lists them too)."""
    nodes = interp._get_ops_details()
    writer = {int(t): d["index"] for d in nodes if d["op_name"] != "DELEGATE" for t in d["outputs"]}
    replaced = set()
    for delegate in (d for d in nodes if d["op_name"] == "DELEGATE"):
        stop, tensors = {int(t) for t in delegate["inputs"]}, [int(t) for t in delegate["outputs"]]
        while tensors:
            node = writer.get(tensors.pop())
            if node is not None and node not in replaced:
                replaced.add(node)
                tensors += [int(t) for t in nodes[node]["inputs"] if int(t) >= 0 and int(t) not in stop]
    return [d["op_name"] for d in nodes if d["op_name"] != "DELEGATE" and d["index"] not in replaced]


# The float outputs ``output_sqnr`` computed, by the model's bytes, the inputs and the runtime (most recent last).
# One interpreter thread runs the same bytes on the same inputs to the same outputs, and most tests judge against
# the same float MediaPipe model on the same photo (and some judge the same session-compressed file), so each run
# is done once per session.  Keyed by content, never by path (a rewritten file is a new key), and by how the
# interpreter was given the model (a path or its bytes), as ``make_interpreter`` builds it.
_RUNS: OrderedDict[tuple[str, str, str, str], dict[str, np.ndarray]] = OrderedDict()
_MAX_BYTES = 256 << 20  # the least recently used runs are dropped beyond this


def _digest(model: Model, inputs: Inputs) -> tuple[str, str, str]:
    from_path = not isinstance(model, bytes | bytearray)
    data = Path(model).read_bytes() if from_path else bytes(model)
    digest = hashlib.sha256()
    for name, value in sorted(inputs.items()) if isinstance(inputs, Mapping) else [(None, inputs)]:
        array = np.ascontiguousarray(value)
        digest.update(repr((name, array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return "path" if from_path else "bytes", hashlib.sha256(data).hexdigest(), digest.hexdigest()


def _float_outputs_once(model: Model, inputs: Inputs, runtime: str) -> dict[str, np.ndarray]:
    """``float_outputs(invoked(model, inputs, runtime))``, run once per (bytes, inputs, runtime); read-only."""
    try:
        key = (*_digest(model, inputs), runtime)
    except OSError:  # no such file: the interpreter says so
        return float_outputs(invoked(model, inputs, runtime))
    if key in _RUNS:
        _RUNS.move_to_end(key)
        return _RUNS[key]
    outputs = float_outputs(invoked(model, inputs, runtime))
    for value in outputs.values():
        value.flags.writeable = False
    _RUNS[key] = outputs
    while len(_RUNS) > 1 and sum(v.nbytes for run in _RUNS.values() for v in run.values()) > _MAX_BYTES:
        _RUNS.popitem(last=False)
    return outputs


def output_sqnr(reference: Model, candidate: Model, inputs: Inputs, runtime: str) -> dict[str, float]:
    """The SQNR of each output of ``candidate`` against ``reference``, both run in ``runtime`` (outputs matched by
    name, quantized ones dequantized)."""
    expected = _float_outputs_once(reference, inputs, runtime)
    got = _float_outputs_once(candidate, inputs, runtime)
    return {name: sqnr_db(value, got[name]) for name, value in expected.items()}


def worst_sqnr(reference: Model, candidate: Model, inputs: Inputs, runtime: str) -> float:
    """The lowest output SQNR of ``candidate`` against ``reference``, both run in ``runtime``."""
    return min(output_sqnr(reference, candidate, inputs, runtime).values())
