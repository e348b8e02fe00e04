"""Which quantized-weight forms LiteRT runs, checked against engine.graph.ops in both runtimes (``tests/runtimes.py``):
the ``hybrid`` column (exactly: every form it claims runs right, every other one is refused or computes garbage) and
``xnnpack_hybrid`` (the claimed forms the default runtime's XNNPACK delegate takes over), ``activation_apart``,
``packed_rows_whole_bytes``, ``DEQUANTIZE_INPUTS`` and ``XNNPACK_FOLDED_DEQUANTIZE``, the FLOAT32 bias a hybrid
filter needs (``XNNPACK_BIAS_TYPES``), and ``max_version``.

Weights are quantized as the engine will: symmetric, zero point 0, int8 codes in [-127, 127], int4 in [-7, 7]
packed two per byte (element 2i in the low nibble), one scale per tensor, per channel along the table's channel
axis, or per block of the input axis (float16 scales).  The reference is the float model holding the dequantized
weights, run with the builtin kernels, so a form that runs right differs from it only by the kernel quantizing
activations on the fly (well above RIGHT_DB), while a misread weight (scales along the wrong axis, one scale taken
for many, codes passed through as they are) falls far below WRONG_DB.  Every form runs in the default runtime
(``Interpreter(model_content=...)``, XNNPACK applied) and with the builtin kernels alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import model_to_bytes, read_model
from engine.format.builder import GraphBuilder
from engine.format.ir import TENSOR_TYPES, Buffer, Model, Operator, QuantizationParams, Table, Tensor
from engine.graph.ops import DEQUANTIZE_INPUTS, RULES, XNNPACK_FOLDED_DEQUANTIZE, rule
from engine.quant import kernels
from engine.quant.metrics import sqnr_db
from tests.runtimes import BOTH_RUNTIMES, RUNTIMES, Refused, delegate_partitions, invoked, make_interpreter, run_model
from tests.weighted_models import BASE_CASES, CASES, IDS, Feeds, weighted_op

RIGHT_DB = 30.0
WRONG_DB = 15.0
GRANULARITIES = ("tensor", "channel")
HYBRID_FORMS = [(label, bits, g) for label in BASE_CASES for bits in (8, 4, 2) for g in GRANULARITIES]
STORED_TYPES = {16: "FLOAT16", 8: "INT8", 4: "INT4", 2: "INT2"}


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


def _blockwise(w: np.ndarray, block: int, name: str) -> tuple[Tensor, np.ndarray]:
    """[out, in] ``w`` as blockwise INT4 (one float16 scale per ``block`` inputs of a row, in a tensor the
    quantization details refer to), and the float32 values it stands for."""
    rows = w.reshape(-1, block)
    scale = (np.abs(rows).max(axis=1, keepdims=True) / 7).astype(np.float16)
    codes = np.clip(np.rint(rows / scale.astype(np.float32)), -7, 7).astype(np.int8)
    scales = Tensor(f"{name}_scales", (w.shape[0], w.shape[1] // block), TENSOR_TYPES["FLOAT16"], Buffer.of(scale))
    details = Table("BlockwiseQuantization", {"scales": scales, "zero_points": None, "block_size": block})
    weight = Tensor(name, w.shape, TENSOR_TYPES["INT4"], Buffer(kernels.pack_int4(codes.reshape(-1))))
    weight.quantization = QuantizationParams(details=details)
    return weight, (codes * scale.astype(np.float32)).reshape(w.shape)


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


def _float16_bias(model: Model) -> Model:
    """The case's model with its op's bias stored as FLOAT16 behind a DEQUANTIZE (MediaPipe's bias form)."""
    op = next(op for op in model.main.operators if op.name != "DEQUANTIZE")
    bias = op.inputs[rule(op.name).bias_input]
    half = Tensor(f"{bias.name}/float16", bias.shape, TENSOR_TYPES["FLOAT16"], Buffer.of(bias.data.astype(np.float16)))
    floated = Tensor(f"{bias.name}/dequantized", bias.shape)
    model.main.insert_operator(0, Operator(model.opcode("DEQUANTIZE"), [half], [floated]))
    op.inputs[rule(op.name).bias_input] = floated
    model.main.remove_unused_tensors()
    return model


# ------------------------------------------------------------------------------------ running


def _invoke(model: bytes, feeds: Feeds, runtime: str) -> tuple[np.ndarray, bool] | None:
    """The output and whether XNNPACK took any of the graph, or None when the model fails to load or to run."""
    try:
        interp = invoked(model, feeds, runtime)
    except Refused:
        return None
    (output,) = interp.get_output_details()
    return interp.get_tensor(output["index"]), delegate_partitions(interp) > 0


def _sqnr(reference: bytes, candidate: bytes, feeds: Feeds, runtime: str) -> tuple[float, bool] | None:
    """SQNR of the candidate in ``runtime`` against the reference (builtin kernels) and whether XNNPACK took any
    of it; None: the candidate failed to load or run."""
    (expected,) = run_model(reference, feeds, "builtin").values()
    got = _invoke(candidate, feeds, runtime)
    return None if got is None else (sqnr_db(expected, got[0]), got[1])


# ------------------------------------------------------------------------------------ hybrid forms


def _xnnpack_takes(label: str, bits: int, granularity: str) -> bool:
    op = weighted_op(CASES[label]()[0])
    return rule(op.name).xnnpack_runs_hybrid(bits, granularity, op.inputs[rule(op.name).weight_input].shape)


def _claimed(label: str, bits: int, granularity: str) -> bool:
    op = weighted_op(CASES[label]()[0])
    r = rule(op.name)
    return r.runs_hybrid(bits, granularity, op.inputs[r.weight_input].shape)


CLAIMED_HYBRID = [f for f in HYBRID_FORMS if _claimed(*f)]


@pytest.mark.parametrize(("label", "bits", "granularity"), HYBRID_FORMS)
@BOTH_RUNTIMES
def test_hybrid_column_is_exactly_what_runs_right(label: str, bits: int, granularity: str, runtime: str) -> None:
    """Claimed forms run right in both runtimes, XNNPACK taking over exactly the ``xnnpack_hybrid`` ones (in the
    default runtime; the others run in the builtin kernel there too); unclaimed forms fail or are wrong in both."""
    model, feeds = CASES[label]()
    outcome = _sqnr(*_forms(model, bits, granularity, dequantize=False), feeds, runtime)
    if _claimed(label, bits, granularity):
        assert outcome is not None, "claimed hybrid form failed to load or run"
        sqnr, delegated = outcome
        assert sqnr > RIGHT_DB
        assert delegated == (runtime == "default" and _xnnpack_takes(label, bits, granularity))
    else:
        assert outcome is None or not outcome[0] >= WRONG_DB, f"unclaimed hybrid form runs right: {outcome[0]:.1f} dB"


@pytest.mark.parametrize(("label", "bits", "granularity"), CLAIMED_HYBRID)
@BOTH_RUNTIMES
def test_claimed_hybrid_forms_need_no_particular_version(label: str, bits: int, granularity: str, runtime: str) -> None:
    """They ran at version 1 above; the highest registered version runs the same kernel."""
    model, feeds = CASES[label]()
    version = rule(weighted_op(model).name).max_version
    sqnr, _ = _sqnr(*_forms(model, bits, granularity, dequantize=False, version=version), feeds, runtime)
    assert sqnr > RIGHT_DB


BIASED_HYBRID = [f for f in CLAIMED_HYBRID if rule(f[0]).bias_input is not None]
# Measured: the ops whose hybrid form XNNPACK takes over but not with a FLOAT16 bias behind DEQUANTIZE.  XNNPACK
# takes TRANSPOSE_CONV with any bias type (test below).
FLOAT32_BIAS_HYBRIDS = {"CONV_2D", "FULLY_CONNECTED"}


@pytest.mark.parametrize(("label", "bits", "granularity"), BIASED_HYBRID)
@BOTH_RUNTIMES
def test_hybrid_filters_need_a_float32_bias_in_xnnpack(label: str, bits: int, granularity: str, runtime: str) -> None:
    """``XNNPACK_BIAS_TYPES``: a filter read quantized wants a FLOAT32 bias.  With a FLOAT16 bias behind DEQUANTIZE
    the default runtime fails to prepare every CONV_2D and FULLY_CONNECTED form XNNPACK takes over ("failed to
    delegate CONV_2D node"); the forms it leaves to the builtin kernel, and the builtin runtime, stay right."""
    model, feeds = CASES[label]()
    reference, candidate = _forms(model, bits, granularity, dequantize=False)
    outcome = _sqnr(reference, model_to_bytes(_float16_bias(read_model(candidate))), feeds, runtime)
    taken = runtime == "default" and _xnnpack_takes(label, bits, granularity)
    if taken and label in FLOAT32_BIAS_HYBRIDS:
        assert outcome is None
    else:
        assert outcome is not None and outcome[0] > RIGHT_DB and outcome[1] == taken


@pytest.mark.parametrize("filter_form", ["float32", "float16", "int8", "hybrid"])
@pytest.mark.parametrize("bias_form", ["float32", "float16"])
def test_xnnpack_takes_transpose_conv_with_any_bias_type(filter_form: str, bias_form: str) -> None:
    """Unlike CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (tests/graph/test_xnnpack_bias.py), TRANSPOSE_CONV is taken
    by XNNPACK and right whatever its filter (float32, float16 or int8 behind DEQUANTIZE, int8 read directly) and
    bias (float32, float16 behind DEQUANTIZE): ``XNNPACK_BIAS_TYPES`` does not apply to it."""
    model, feeds = CASES["TRANSPOSE_CONV"]()
    bits = {"float16": 16, "int8": 8, "hybrid": 8}.get(filter_form)
    if bits is not None:
        model = read_model(_forms(model, bits, "channel", dequantize=filter_form != "hybrid")[1])
    candidate = model_to_bytes(_float16_bias(model) if bias_form == "float16" else model)
    expected = run_model(candidate, feeds, "builtin")["y"]
    got, delegated = _invoke(candidate, feeds, "default")
    assert delegated and sqnr_db(expected, got) > 100.0


@pytest.mark.parametrize(("bits", "row"), [(4, 3), (2, 2), (2, 6)])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@BOTH_RUNTIMES
def test_packed_embedding_lookup_needs_rows_of_whole_bytes(granularity: str, bits: int, row: int, runtime: str) -> None:
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
        sqnr, _ = _sqnr(*_forms(model(), bits, granularity, dequantize=dequantize), {"ids": IDS}, runtime)
        assert sqnr > RIGHT_DB if right else sqnr < WRONG_DB


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("keep_num_dims", [False, True])
@pytest.mark.parametrize("asymmetric", [False, True])
@BOTH_RUNTIMES
def test_fully_connected_hybrid_options(asymmetric: bool, keep_num_dims: bool, bits: int, runtime: str) -> None:
    """asymmetric_quantize_inputs and keep_num_dims both work, on inputs far from zero-mean."""
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    x = b.input("x", (2, 3, 8))
    b.output(b.fully_connected(x, rng.uniform(-1, 1, (6, 8)).astype(np.float32), keep_num_dims=keep_num_dims))
    model = b.build()
    weighted_op(model).builtin_options.fields["asymmetric_quantize_inputs"] = asymmetric
    feeds = {"x": rng.uniform(-0.3, 1.7, (2, 3, 8)).astype(np.float32)}
    sqnr, delegated = _sqnr(*_forms(model, bits, "channel", dequantize=False), feeds, runtime)
    assert sqnr > RIGHT_DB and delegated == (runtime == "default")


def _fully_connected(weight: Tensor | np.ndarray, depth: int, activation: str = "NONE") -> bytes:
    """x [3, depth] -> FULLY_CONNECTED reading ``weight`` (a float array, or a stored tensor and its scales)."""
    b = GraphBuilder()
    if isinstance(weight, Tensor):
        b.graph.add_tensor(weight)
        details = weight.quantization.details
        if details is not None:
            b.graph.add_tensor(details.fields["scales"])
    b.output(b.fully_connected(b.input("x", (3, depth)), weight, activation=activation), "y")
    return model_to_bytes(b.build())


@pytest.mark.parametrize(("bits", "depth"), [(4, 7), (4, 8), (4, 15), (4, 16), (2, 6), (2, 8)])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_xnnpack_takes_packed_fully_connected_only_with_rows_of_whole_bytes(
    bits: int, depth: int, granularity: str
) -> None:
    """Measured beside ``xnnpack_hybrid`` (which claims INT4, and INT2 per channel, for FULLY_CONNECTED): XNNPACK
    takes the packed form over only when each row of the weight fills whole bytes (an even input depth for INT4, a
    multiple of 4 for INT2) and leaves the others to the builtin kernel, which computes them right."""
    w = np.random.default_rng(3).uniform(-1, 1, (5, depth)).astype(np.float32)
    stored, values = _stored(w, bits, 0 if granularity == "channel" else None, "w")
    feeds = {"x": np.random.default_rng(4).uniform(-1, 1, (3, depth)).astype(np.float32)}
    reference, candidate = _fully_connected(values, depth), _fully_connected(stored, depth)
    claimed = granularity in dict(rule("FULLY_CONNECTED").xnnpack_hybrid)[bits]
    taken = claimed and depth * bits % 8 == 0
    assert rule("FULLY_CONNECTED").xnnpack_runs_hybrid(bits, granularity, w.shape) == taken
    for runtime in RUNTIMES:
        sqnr, delegated = _sqnr(reference, candidate, feeds, runtime)
        assert sqnr > RIGHT_DB
        assert delegated == (runtime == "default" and taken)


@pytest.mark.parametrize("activation", ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
@BOTH_RUNTIMES
def test_blockwise_int4_fully_connected(activation: str, runtime: str) -> None:
    """``activation_apart``, measured precisely: XNNPACK computes blockwise INT4 weights right with any fused
    activation; LiteRT 2.3's builtin kernel computes the product right but does not apply the fused activation (RELU
    outputs keep their negative values), which is why the pass writes the activation as an op of its own."""
    assert rule("FULLY_CONNECTED").keeps_activation_apart(4, "block")
    w = np.random.default_rng(5).uniform(-1, 1, (8, 64)).astype(np.float32)
    weight, values = _blockwise(w, 32, "w")
    feeds = {"x": np.random.default_rng(6).uniform(-1, 1, (3, 64)).astype(np.float32)}
    reference = _fully_connected(values, 64, activation)
    sqnr, delegated = _sqnr(reference, _fully_connected(weight, 64, activation), feeds, runtime)
    assert delegated == (runtime == "default")
    if runtime == "default" or activation == "NONE":
        assert sqnr > RIGHT_DB
    else:
        assert sqnr < WRONG_DB


# ------------------------------------------------------------------------------------ DEQUANTIZE forms


DEQUANTIZE_FORMS = [(label, bits, g) for label in BASE_CASES for bits, gs in DEQUANTIZE_INPUTS.items() for g in gs]


@pytest.mark.parametrize(("label", "bits", "granularity"), sorted(DEQUANTIZE_FORMS))
@BOTH_RUNTIMES
def test_dequantize_forms_run_before_every_weighted_op(label: str, bits: int, granularity: str, runtime: str) -> None:
    """Right in both runtimes; XNNPACK takes the op reading a DEQUANTIZE output (where it takes the float op at
    all) when it decodes that DEQUANTIZE at load time (``XNNPACK_FOLDED_DEQUANTIZE``), or the op reads a computed
    weight anyway (``xnnpack_computed_weight``: BATCH_MATMUL)."""
    model, feeds = CASES[label]()
    reference, candidate = _forms(model, bits, granularity, dequantize=True)
    sqnr, delegated = _sqnr(reference, candidate, feeds, runtime)
    assert sqnr > 100.0  # the same float weights: exact, up to XNNPACK summing in another order
    _, float_delegated = _invoke(reference, feeds, runtime)
    folded = STORED_TYPES[bits] in XNNPACK_FOLDED_DEQUANTIZE or rule(label).xnnpack_computed_weight
    assert delegated == (float_delegated and folded)


@pytest.mark.parametrize("axis", [None, 0, 1])
@BOTH_RUNTIMES
def test_dequantize_unpacks_int4_low_nibble_first(axis: int | None, runtime: str) -> None:
    """An odd number of codes (15), per tensor or per channel along either axis, comes back exactly."""
    w = np.random.default_rng(2).uniform(-1, 1, (3, 5)).astype(np.float32)
    stored, values = _stored(w, 4, axis, "w")
    b = GraphBuilder()
    b.output(b.add(b.input("x", w.shape), b.dequantize(b.graph.add_tensor(stored))))
    out, _ = _invoke(model_to_bytes(b.build()), {"x": np.zeros(w.shape, np.float32)}, runtime)
    np.testing.assert_array_equal(out, values)


# ------------------------------------------------------------------------------------ versions


def _resolves(name: str, version: int, runtime: str) -> bool:
    """Whether ``runtime``'s resolver has a kernel for ``name`` at ``version`` (checked when the model loads)."""
    b = GraphBuilder()
    x = b.input("x", (1, 2, 2, 2))
    b.output(b.op(name, [x], [x.shape], version=version)[0])
    try:
        make_interpreter(model_to_bytes(b.build()), runtime)
    except Refused as exc:
        assert "Didn't find op" in str(exc)
        return False
    return True


@pytest.mark.parametrize("name", RULES)
@BOTH_RUNTIMES
def test_max_version_is_the_highest_the_runtime_registers(name: str, runtime: str) -> None:
    top = rule(name).max_version
    assert [_resolves(name, v, runtime) for v in (1, top, top + 1)] == [True, True, False]


def test_xnnpack_leaves_fully_connected_version_8_to_the_builtin_kernel() -> None:
    """A quirk worth knowing before writing versions: the model still runs, just without XNNPACK."""
    for version in (7, 8, 9):
        model, feeds = CASES["FULLY_CONNECTED"]()
        weighted_op(model).opcode.version = version
        data = model_to_bytes(model)
        out, delegated = _invoke(data, feeds, "default")
        assert delegated == (version != 8), version
        np.testing.assert_allclose(out, run_model(data, feeds, "builtin")["y"], rtol=1e-5, atol=1e-6)
