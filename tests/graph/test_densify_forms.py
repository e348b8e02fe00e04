"""What LiteRT's DENSIFY runs, checked against engine.graph.ops in both runtimes (``tests/runtimes.py``): every form
``DENSIFY_INPUTS`` claims (stored type, block shape, each index vector type, 2-D and 4-D) decodes the engine's
encoding bit-exactly, with the builtin kernels and in the default runtime (XNNPACK); unclaimed types are refused;
``DENSIFY_XNNPACK_READERS`` and the readers XNNPACK gets wrong are what the comment says; and a sparse filter's
bias must go with it as ``XNNPACK_BIAS_TYPES`` says, or the default runtime reads garbage.

A candidate stores the weight sparse behind DENSIFY (then DEQUANTIZE for FLOAT16 and INT8, per channel); the
reference is the same graph storing it dense.  Both run in the same runtime, so the outputs must be equal bit
for bit: the weighted op sees the same dense weight only if DENSIFY rebuilt it exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine import model_to_bytes
from engine.format.builder import GraphBuilder
from engine.format.ir import TENSOR_TYPES, Model, QuantizationParams, Table, Tensor
from engine.format.sparse import INDEX_VECTORS, encode_sparse
from engine.graph.ops import DENSIFY_INPUTS, DENSIFY_XNNPACK_READERS, XNNPACK_BIAS_TYPES, XNNPACK_FOLDED_DEQUANTIZE
from tests.runtimes import BOTH_RUNTIMES, RUNTIMES, Refused, run_model

Feeds = dict[str, np.ndarray]
Reader = Callable[[GraphBuilder, Tensor, Feeds], None]
FORMS = sorted(
    [(t, b, 2) for t, blocks in DENSIFY_INPUTS.items() for b in blocks] + [(t, None, 4) for t in DENSIFY_INPUTS],
    key=str,
)
UNCLAIMED_TYPES = ["UINT8", "INT16", "INT32", "INT64", "FLOAT64", "BOOL"]
_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
           "INT32": np.int32, "INT64": np.int64, "FLOAT64": np.float64, "BOOL": np.bool_}  # fmt: skip


def _weight(type_name: str, shape: tuple[int, ...], block: tuple[int, int] | None, seed: int) -> Tensor:
    """A pruned weight stored dense as ``type_name``: ~70% zeros, or (blocked) ~60% of blocks zero."""
    rng = np.random.default_rng(seed)
    if block is None:
        keep = rng.random(shape) < 0.3
    else:
        r, c = block
        keep = np.kron(rng.random((shape[0] // r, shape[1] // c)) < 0.4, np.ones(block, bool))
        keep &= rng.random(shape) < 0.8  # zeros inside kept blocks too
    codes = rng.integers(-127, 128, shape) * keep
    t = Tensor("w", shape, TENSOR_TYPES[type_name])
    if type_name == "INT8":
        scale = rng.uniform(0.001, 0.01, shape[0]).astype(np.float32)
        t.quantization = QuantizationParams(scale, np.zeros(shape[0], np.int64), quantized_dimension=0)
        t.data = codes.astype(np.int8)
    else:
        t.data = (codes / 127).astype(_DTYPES[type_name])
    return t


def _sparsified(t: Tensor, block: tuple[int, int] | None, index_type: str | None = None) -> Tensor:
    """``t`` stored sparse, each index vector as ``index_type`` (a SparseIndexVector member) where that holds it."""
    values, sparsity = encode_sparse(t.data, block)
    if index_type is not None:
        dtype = dict(INDEX_VECTORS)[index_type]
        for dim in sparsity.dim_metadata:
            for name in ("array_segments", "array_indices"):
                vector = getattr(dim, name)
                if vector is not None and vector.fields["values"].max(initial=0) <= np.iinfo(dtype).max:
                    setattr(dim, name, Table(index_type, {"values": vector.fields["values"].astype(dtype)}))
    shape = t.shape
    t.data = values
    t.shape, t.sparsity = shape, sparsity
    return t


def _model(weight: Tensor, reader: Reader, feeds: Feeds) -> Model:
    """``weight`` -> DENSIFY (if sparse) -> DEQUANTIZE (unless FLOAT32) -> ``reader``."""
    b = GraphBuilder()
    w = b.graph.add_tensor(weight)
    if weight.sparsity is not None:
        w = b.op("DENSIFY", [w], [weight.shape])[0]
        w.quantization = weight.quantization
    if weight.type_name != "FLOAT32":
        w = b.dequantize(w)
    reader(b, w, feeds)
    return b.build()


def _fully_connected(b: GraphBuilder, w: Tensor, feeds: Feeds) -> None:
    feeds["x"] = np.random.default_rng(7).uniform(-1, 1, (2, w.shape[1])).astype(np.float32)
    b.output(b.fully_connected(b.input("x", feeds["x"].shape), w))


def _conv2d(b: GraphBuilder, w: Tensor, feeds: Feeds) -> None:
    feeds["x"] = np.random.default_rng(7).uniform(-1, 1, (1, 5, 5, w.shape[3])).astype(np.float32)
    b.output(b.conv2d(b.input("x", feeds["x"].shape), w))


def _run(model: Model, feeds: Feeds, runtime: str) -> list[np.ndarray] | None:
    """The outputs, or None when the model fails to load or run."""
    try:
        return list(run_model(model_to_bytes(model), feeds, runtime).values())
    except Refused:
        return None


def _compare(
    type_name: str,
    shape: tuple[int, ...],
    block: tuple[int, int] | None,
    reader: Reader,
    runtime: str,
    index_type: str | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(reference outputs, candidate outputs or None) for one form."""
    feeds: Feeds = {}
    reference = _run(_model(_weight(type_name, shape, block, 0), reader, feeds), feeds, runtime)
    assert reference is not None
    candidate = _model(_sparsified(_weight(type_name, shape, block, 0), block, index_type), reader, feeds)
    return reference, _run(candidate, feeds, runtime)


@pytest.mark.parametrize(("type_name", "block", "rank"), FORMS)
@pytest.mark.parametrize("index_type", [name for name, _ in INDEX_VECTORS])
@BOTH_RUNTIMES
def test_claimed_forms_decode_exactly(
    type_name: str, block: tuple[int, int] | None, rank: int, index_type: str, runtime: str
) -> None:
    """FULLY_CONNECTED [16, 32] (any block of 16 fits) and CONV_2D OHWI [16, 3, 3, 16]."""
    shape, reader = ((16, 32), _fully_connected) if rank == 2 else ((16, 3, 3, 16), _conv2d)
    reference, candidate = _compare(type_name, shape, block, reader, runtime, index_type)
    assert candidate is not None, "claimed DENSIFY form failed to load or run"
    for want, got in zip(reference, candidate, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("type_name", sorted(DENSIFY_INPUTS))
@pytest.mark.parametrize(("shape", "reader"), [((8, 300), _fully_connected), ((8, 1, 1, 300), _conv2d)])
@BOTH_RUNTIMES
def test_a_dimension_moved_last_decodes_exactly(
    type_name: str, shape: tuple[int, ...], reader: Reader, runtime: str
) -> None:
    """300 input channels index in two bytes, 8 outputs in one: the encoder traverses the outputs last (the
    traversal order permuted), which both runtimes decode exactly."""
    _, sparsity = encode_sparse(_weight(type_name, shape, None, 0).data)
    assert sparsity.traversal_order.tolist()[-1] == 0
    assert sparsity.dim_metadata[-1].array_indices.type == "Uint8Vector"
    reference, candidate = _compare(type_name, shape, None, reader, runtime)
    assert candidate is not None, "a permuted traversal order failed to load or run"
    for want, got in zip(reference, candidate, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("block", [None, (1, 4)])
@pytest.mark.parametrize("type_name", UNCLAIMED_TYPES)
@BOTH_RUNTIMES
def test_unclaimed_types_are_refused(type_name: str, block: tuple[int, int] | None, runtime: str) -> None:
    assert type_name not in DENSIFY_INPUTS
    weight = _sparsified(_weight(type_name, (8, 16), block, 1), block)
    b = GraphBuilder()
    b.output(b.op("DENSIFY", [b.graph.add_tensor(weight)], [weight.shape])[0])
    assert _run(b.build(), {}, runtime) is None


def _input(b: GraphBuilder, feeds: Feeds, name: str, shape: tuple[int, ...]) -> Tensor:
    feeds[name] = np.random.default_rng(5).uniform(-1, 1, shape).astype(np.float32)
    return b.input(name, shape)


READERS: dict[str, Reader] = {
    "FULLY_CONNECTED": _fully_connected,
    "CONV_2D": lambda b, w, f: _conv2d(b, b.reshape(w, (w.shape[0], 1, 1, w.shape[1])), f),
    "BATCH_MATMUL": lambda b, w, f: b.output(b.batch_matmul(_input(b, f, "y", (2, w.shape[0])), w)),
    "ADD": lambda b, w, f: b.output(b.add(_input(b, f, "y", w.shape), w)),
}


@pytest.mark.parametrize("type_name", sorted(DENSIFY_INPUTS))
@pytest.mark.parametrize("reader", sorted(DENSIFY_XNNPACK_READERS))
@BOTH_RUNTIMES
def test_xnnpack_readers_see_the_exact_weight(reader: str, type_name: str, runtime: str) -> None:
    """CONV_2D here reads the weight through a RESHAPE: still exact."""
    reference, candidate = _compare(type_name, (16, 32), None, READERS[reader], runtime)
    assert candidate is not None
    for want, got in zip(reference, candidate, strict=True):
        np.testing.assert_array_equal(got, want)


def _as_output(b: GraphBuilder, w: Tensor, feeds: Feeds) -> None:
    b.output(w)


def _beside_fully_connected(b: GraphBuilder, w: Tensor, feeds: Feeds) -> None:
    _fully_connected(b, w, feeds)
    b.output(w)


def _embedding_lookup(b: GraphBuilder, w: Tensor, feeds: Feeds) -> None:
    feeds["ids"] = np.array([0, 7, 3], np.int32)
    b.output(b.embedding_lookup(b.input("ids", (3,), np.int32), w))


@pytest.mark.parametrize(
    ("reader", "type_name"),
    [(_as_output, "FLOAT32"), (_beside_fully_connected, "FLOAT32"), (_embedding_lookup, "FLOAT16"),
     (_embedding_lookup, "INT8")],
    ids=["graph-output", "output-beside-fully-connected", "embedding-lookup-float16", "embedding-lookup-int8"],
)  # fmt: skip
def test_xnnpack_gets_other_readers_wrong(reader: Reader, type_name: str) -> None:
    """The builtin kernels are exact; with XNNPACK the dense form is right and the sparse one fails or is wrong.
    Compared: the last output, the weight itself or the lookup (XNNPACK's FULLY_CONNECTED sums in another order)."""
    feeds: Feeds = {}
    truth = _run(_model(_weight(type_name, (8, 16), None, 0), reader, feeds), feeds, "builtin")
    runs = {
        (sparse, runtime): _run(
            _model(_sparsified(_weight(type_name, (8, 16), None, 0), None) if sparse else
                   _weight(type_name, (8, 16), None, 0), reader, feeds), feeds, runtime)
        for sparse in (False, True) for runtime in RUNTIMES
    }  # fmt: skip
    right = {key: out is not None and np.array_equal(out[-1], truth[-1]) for key, out in runs.items()}
    expected = {(False, "builtin"): True, (True, "builtin"): True, (False, "default"): True, (True, "default"): False}
    assert right == expected


@pytest.mark.parametrize("type_name", ["FLOAT16", "INT8"])
@pytest.mark.parametrize("sparse", [False, True])
def test_xnnpack_cannot_output_a_dequantized_constant(sparse: bool, type_name: str) -> None:
    weight = _weight(type_name, (8, 16), None, 0)
    model = _model(_sparsified(weight, None) if sparse else weight, _as_output, {})
    assert _run(model, {}, "builtin") is not None
    assert _run(model, {}, "default") is None


# How XNNPACK sees a filter stored as each type behind DENSIFY (-> DEQUANTIZE): a FLOAT16 DEQUANTIZE it drops and reads
# the half-precision data, an INT8 one it decodes to FLOAT32 at load time (as in tests/graph/test_xnnpack_bias.py).
SEEN_AS = {"FLOAT32": "FLOAT32", "FLOAT16": "FLOAT16", "INT8": "FLOAT32"}
# Readers with a bias: the weight's shape and the op on an input (16 output channels each).
BIASED_READERS: dict[str, tuple[tuple[int, ...], Callable[[GraphBuilder, Tensor, Tensor, Feeds], Tensor]]] = {
    "FULLY_CONNECTED": ((16, 32), lambda b, w, bias, f: b.fully_connected(_input(b, f, "x", (2, 32)), w, bias)),
    "CONV_2D": ((16, 1, 1, 32), lambda b, w, bias, f: b.conv2d(_input(b, f, "x", (1, 4, 4, 32)), w, bias)),
    "DEPTHWISE_CONV_2D": (
        (1, 3, 3, 16),
        lambda b, w, bias, f: b.depthwise_conv2d(_input(b, f, "x", (1, 4, 4, 16)), w, bias),
    ),
}


def _with_bias(name: str, bias_type: str) -> Reader:
    """``name`` reading the weight, with a bias stored as ``bias_type`` (FLOAT16 behind DEQUANTIZE, as MediaPipe's)."""

    def reader(b: GraphBuilder, w: Tensor, feeds: Feeds) -> None:
        bias = np.random.default_rng(6).uniform(-1, 1, 16)
        if bias_type == "FLOAT32":
            stored = b.constant(bias.astype(np.float32))
        else:
            stored = b.dequantize(b.constant(bias.astype(np.float16)))
        b.output(BIASED_READERS[name][1](b, w, stored, feeds))

    return reader


@pytest.mark.parametrize("bias_type", ["FLOAT32", "FLOAT16"])
@pytest.mark.parametrize("type_name", sorted(DENSIFY_INPUTS))
@pytest.mark.parametrize("reader", sorted(BIASED_READERS))
@BOTH_RUNTIMES
def test_a_sparse_filter_needs_the_bias_type_xnnpack_takes(
    reader: str, type_name: str, bias_type: str, runtime: str
) -> None:
    """Where XNNPACK refuses the op for its bias type (``XNNPACK_BIAS_TYPES``) but claims the DENSIFY ->
    DEQUANTIZE before it (an INT8 filter, whose DEQUANTIZE it decodes at load time: ``XNNPACK_FOLDED_DEQUANTIZE``),
    the builtin kernel that runs the op reads a weight nobody wrote: garbage, different from run to run (an INT8
    sparse filter with MediaPipe's FLOAT16 bias).  Every other pair is exact in both runtimes, DEPTHWISE_CONV_2D
    included (which ``DENSIFY_XNNPACK_READERS`` does not list)."""
    reference, candidate = _compare(type_name, BIASED_READERS[reader][0], None, _with_bias(reader, bias_type), runtime)
    assert candidate is not None
    refused = bias_type not in XNNPACK_BIAS_TYPES[SEEN_AS[type_name]]
    garbage = runtime == "default" and refused and type_name in XNNPACK_FOLDED_DEQUANTIZE
    assert np.array_equal(candidate[0], reference[0]) != garbage
