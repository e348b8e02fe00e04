"""Which quantized-weight forms LiteRT runs, checked against engine.ops: the ``hybrid`` column (exactly: every
form it claims runs right, every other one is refused or computes garbage), ``packed_rows_whole_bytes``,
``DEQUANTIZE_INPUTS`` and ``max_version``.

Weights are quantized as the engine will: symmetric, zero point 0, int8 codes in [-127, 127], int4 in [-7, 7]
packed two per byte (element 2i in the low nibble), one scale per tensor or per channel along the table's
channel axis.  The reference is the float model holding the dequantized weights, so a form that runs right
differs from it only by the kernel quantizing activations on the fly (well above RIGHT_DB), while a misread
weight (scales along the wrong axis, one scale taken for many, codes passed through as they are) falls far
below WRONG_DB.  Each form runs in the builtin kernels and with the default XNNPACK delegate, which takes some
hybrid forms over and leaves the others to the builtin kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from engine import kernels, model_to_bytes
from engine.builder import GraphBuilder
from engine.ir import TENSOR_TYPES, Buffer, Model, Operator, QuantizationParams, Tensor
from engine.ops import DEQUANTIZE_INPUTS, RULES, rule
from engine.validate import sqnr_db
from tests.weighted_models import BASE_CASES, CASES, IDS, Feeds, weighted_op

RIGHT_DB = 30.0
WRONG_DB = 15.0
GRANULARITIES = ("tensor", "channel")
HYBRID_FORMS = [(label, bits, g) for label in BASE_CASES for bits in (8, 4, 2) for g in GRANULARITIES]
# The hybrid forms XNNPACK takes over (op, bits, granularity); it leaves every other one to the builtin kernels.
XNNPACK_HYBRID = {
    *((op, bits, g) for op, bits in [("FULLY_CONNECTED", 8), ("FULLY_CONNECTED", 4), ("CONV_2D", 8),
                                      ("TRANSPOSE_CONV", 8), ("BATCH_MATMUL", 8)] for g in GRANULARITIES),
    ("FULLY_CONNECTED", 2, "channel"),
}  # fmt: skip
RUNTIMES = pytest.mark.parametrize("xnnpack", [False, True], ids=["builtin", "xnnpack"])


# ------------------------------------------------------------------------------------ quantized weights


def _quantize(w: np.ndarray, bits: int, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes in [-(2^(bits-1) - 1), 2^(bits-1) - 1] and their scales (one, or one per slice of ``axis``),
    shaped to broadcast against ``w``."""
    qmax = 2 ** (bits - 1) - 1
    others = None if axis is None else tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.abs(w).max(axis=others, keepdims=True), 1e-12) / qmax
    return np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8), scale.astype(np.float32)


_PACKERS = {4: kernels.pack_int4, 2: kernels.pack_int2}


def _stored(w: np.ndarray, bits: int, axis: int | None, name: str) -> tuple[Tensor, np.ndarray]:
    """The constant tensor storing ``w`` with ``bits`` (16: FLOAT16), and the float32 values it stands for."""
    if bits == 16:
        half = w.astype(np.float16)
        return Tensor(name, w.shape, TENSOR_TYPES["FLOAT16"], Buffer.of(half)), half.astype(np.float32)
    codes, scale = _quantize(w, bits, axis)
    params = QuantizationParams(scale.reshape(-1), np.zeros(scale.size, np.int64), quantized_dimension=axis or 0)
    data = Buffer.of(codes) if bits == 8 else Buffer(_PACKERS[bits](codes))
    tensor = Tensor(name, w.shape, TENSOR_TYPES[f"INT{bits}"], data, quantization=params)
    return tensor, (codes * scale).astype(np.float32)


def _forms(model: Model, bits: int, granularity: str, *, dequantize: bool, version: int = 1) -> tuple[bytes, bytes]:
    """(reference, candidate): the float model holding the dequantized weight, and the model storing it quantized,
    read by the op directly (hybrid) or through a DEQUANTIZE.  The op declares ``version``."""
    op = weighted_op(model)
    r = rule(op.name)
    op.opcode.version = version
    weight = op.inputs[r.weight_input]
    axis = r.channel_axis(op.builtin_options) % len(weight.shape) if granularity == "channel" else None
    stored, values = _stored(weight.data, bits, axis, f"{weight.name}/stored")
    weight.data = values
    reference = model_to_bytes(model)
    if dequantize:
        floated = Tensor(f"{weight.name}/dequantized", weight.shape)
        model.main.insert_operator(0, Operator(model.opcode("DEQUANTIZE"), [stored], [floated]))
        op.inputs[r.weight_input] = floated
    else:
        op.inputs[r.weight_input] = model.main.add_tensor(stored)
    model.main.remove_unused_tensors()
    return reference, model_to_bytes(model)


# ------------------------------------------------------------------------------------ running


def _interpreter(model: bytes, xnnpack: bool) -> Interpreter:
    """Builtin kernels only, or the default resolver with its XNNPACK delegate."""
    resolver = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    return Interpreter(model_content=model, num_threads=1, **resolver)


def _invoke(model: bytes, feeds: Feeds, xnnpack: bool = False) -> tuple[np.ndarray, bool] | None:
    """The output and whether a delegate ran, or None when the model fails to load or to run."""
    try:
        interp = _interpreter(model, xnnpack)
        interp.allocate_tensors()
        for detail in interp.get_input_details():
            interp.set_tensor(detail["index"], feeds[detail["name"]])
        interp.invoke()
    except (RuntimeError, ValueError):
        return None
    (output,) = interp.get_output_details()
    delegated = any(op["op_name"] == "DELEGATE" for op in interp._get_ops_details())
    return interp.get_tensor(output["index"]), delegated


def _sqnr(reference: bytes, candidate: bytes, feeds: Feeds, xnnpack: bool = False) -> tuple[float, bool] | None:
    """SQNR of the candidate against the reference (builtin kernels) and whether a delegate ran; None: failed."""
    expected = _invoke(reference, feeds)
    assert expected is not None
    got = _invoke(candidate, feeds, xnnpack)
    return None if got is None else (sqnr_db(expected[0], got[0]), got[1])


# ------------------------------------------------------------------------------------ hybrid forms


def _claimed(label: str, bits: int, granularity: str) -> bool:
    op = weighted_op(CASES[label]()[0])
    r = rule(op.name)
    return r.runs_hybrid(bits, granularity, op.inputs[r.weight_input].shape)


@pytest.mark.parametrize(("label", "bits", "granularity"), HYBRID_FORMS)
@RUNTIMES
def test_hybrid_column_is_exactly_what_runs_right(label: str, bits: int, granularity: str, xnnpack: bool) -> None:
    model, feeds = CASES[label]()
    outcome = _sqnr(*_forms(model, bits, granularity, dequantize=False), feeds, xnnpack)
    if _claimed(label, bits, granularity):
        assert outcome is not None, "claimed hybrid form failed to load or run"
        sqnr, delegated = outcome
        assert sqnr > RIGHT_DB
        assert delegated == (xnnpack and (label, bits, granularity) in XNNPACK_HYBRID)
    else:
        assert outcome is None or not outcome[0] >= WRONG_DB, f"unclaimed hybrid form runs right: {outcome[0]:.1f} dB"


@pytest.mark.parametrize(("label", "bits", "granularity"), [f for f in HYBRID_FORMS if _claimed(*f)])
def test_claimed_hybrid_forms_need_no_particular_version(label: str, bits: int, granularity: str) -> None:
    """They ran at version 1 above; the highest registered version runs the same kernel."""
    model, feeds = CASES[label]()
    version = rule(weighted_op(model).name).max_version
    sqnr, _ = _sqnr(*_forms(model, bits, granularity, dequantize=False, version=version), feeds)
    assert sqnr > RIGHT_DB


@pytest.mark.parametrize(("bits", "row"), [(4, 3), (2, 2), (2, 6)])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_packed_embedding_lookup_needs_rows_of_whole_bytes(granularity: str, bits: int, row: int) -> None:
    """Rows that end inside a byte: the kernel starts the next row a part of a byte off; DEQUANTIZE is right."""
    shape = (len(IDS), row)
    assert not rule("EMBEDDING_LOOKUP").runs_hybrid(bits, granularity, shape)
    assert rule("EMBEDDING_LOOKUP").runs_hybrid(bits, granularity, (len(IDS), 8 // bits))

    def model() -> Model:
        b = GraphBuilder()
        table = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        b.output(b.embedding_lookup(b.input("ids", IDS.shape, np.int32), table))
        return b.build()

    for dequantize, right in [(False, False), (True, True)]:
        sqnr, _ = _sqnr(*_forms(model(), bits, granularity, dequantize=dequantize), {"ids": IDS})
        assert sqnr > RIGHT_DB if right else sqnr < WRONG_DB


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("keep_num_dims", [False, True])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_fully_connected_hybrid_options(asymmetric: bool, keep_num_dims: bool, bits: int) -> None:
    """asymmetric_quantize_inputs and keep_num_dims both work, on inputs far from zero-mean."""
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    x = b.input("x", (2, 3, 8))
    b.output(b.fully_connected(x, rng.uniform(-1, 1, (6, 8)).astype(np.float32), keep_num_dims=keep_num_dims))
    model = b.build()
    weighted_op(model).builtin_options.fields["asymmetric_quantize_inputs"] = asymmetric
    feeds = {"x": rng.uniform(-0.3, 1.7, (2, 3, 8)).astype(np.float32)}
    forms = _forms(model, bits, "channel", dequantize=False)
    for xnnpack in (False, True):
        sqnr, delegated = _sqnr(*forms, feeds, xnnpack)
        assert sqnr > RIGHT_DB and delegated == xnnpack


# ------------------------------------------------------------------------------------ DEQUANTIZE forms


DEQUANTIZE_FORMS = [(label, bits, g) for label in BASE_CASES for bits, gs in DEQUANTIZE_INPUTS.items() for g in gs]


@pytest.mark.parametrize(("label", "bits", "granularity"), sorted(DEQUANTIZE_FORMS))
@RUNTIMES
def test_dequantize_forms_run_before_every_weighted_op(label: str, bits: int, granularity: str, xnnpack: bool) -> None:
    model, feeds = CASES[label]()
    sqnr, _ = _sqnr(*_forms(model, bits, granularity, dequantize=True), feeds, xnnpack)
    assert sqnr > 100.0  # the same float weights: exact, up to XNNPACK summing in another order


@pytest.mark.parametrize("axis", [None, 0, 1])
@RUNTIMES
def test_dequantize_unpacks_int4_low_nibble_first(axis: int | None, xnnpack: bool) -> None:
    """An odd number of codes (15), per tensor or per channel along either axis, comes back exactly."""
    w = np.random.default_rng(2).uniform(-1, 1, (3, 5)).astype(np.float32)
    stored, values = _stored(w, 4, axis, "w")
    b = GraphBuilder()
    b.output(b.add(b.input("x", w.shape), b.dequantize(b.graph.add_tensor(stored))))
    out, _ = _invoke(model_to_bytes(b.build()), {"x": np.zeros(w.shape, np.float32)}, xnnpack)
    np.testing.assert_array_equal(out, values)


# ------------------------------------------------------------------------------------ versions


def _resolves(name: str, version: int) -> bool:
    """Whether the builtin resolver has a kernel for ``name`` at ``version`` (checked when the model loads)."""
    b = GraphBuilder()
    x = b.input("x", (1, 2, 2, 2))
    b.output(b.op(name, [x], [x.shape], version=version)[0])
    try:
        _interpreter(model_to_bytes(b.build()), xnnpack=False)
    except ValueError as exc:
        assert "Didn't find op" in str(exc)
        return False
    return True


@pytest.mark.parametrize("name", RULES)
def test_max_version_is_the_highest_the_runtime_registers(name: str) -> None:
    top = rule(name).max_version
    assert [_resolves(name, v) for v in (1, top, top + 1)] == [True, True, False]


def test_xnnpack_leaves_fully_connected_version_8_to_the_builtin_kernel() -> None:
    """A quirk worth knowing before writing versions: the model still runs, just without XNNPACK."""
    for version in (7, 8, 9):
        model, feeds = CASES["FULLY_CONNECTED"]()
        weighted_op(model).opcode.version = version
        _, delegated = _invoke(model_to_bytes(model), feeds, xnnpack=True)
        assert delegated == (version != 8), version
