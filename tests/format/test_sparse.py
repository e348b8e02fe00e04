"""engine.format.sparse: encode_sparse is the exact inverse of weights.densify, writes what LiteRT's converter writes
(MediaPipe's sparse filters re-encode to the same bytes), survives the writer and reader, and sizes add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import model_to_bytes, read_model
from engine.errors import EngineError
from engine.format.builder import GraphBuilder
from engine.format.ir import SparsityParams, Table, Tensor
from engine.format.sparse import (
    encode_sparse,
    fewest_index_bytes,
    index_bytes,
    index_vector,
    kept_count,
    sparse_bytes,
    sparse_cannot_save,
)
from engine.graph.weights import densify, find_weights

DTYPES = [np.float32, np.float16, np.int8]
BLOCKS = [(1, 1), (1, 4), (4, 1), (2, 2), (4, 4), (1, 16), (8, 1), (3, 2)]


def _plain(s: SparsityParams) -> tuple:
    """Sparsity parameters as comparable lists, with each index vector's type."""

    def vector(v: Table | None) -> tuple | None:
        return None if v is None else (v.type, v.fields["values"].dtype.name, v.fields["values"].tolist())

    order = None if s.traversal_order is None else s.traversal_order.tolist()
    block_map = None if s.block_map is None else s.block_map.tolist()
    dims = [(d.format, d.dense_size, vector(d.array_segments), vector(d.array_indices)) for d in s.dim_metadata]
    return order, block_map, dims


def _decoded(values: np.ndarray, sparsity: SparsityParams, shape: tuple[int, ...]) -> np.ndarray:
    return densify(values, shape, Tensor("t", shape, sparsity=sparsity))


@st.composite
def _sparse_arrays(draw: st.DrawFn, blocked: bool) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Random arrays at a random density (0: all zero, 1: fully dense), some rows zeroed, with a fitting block."""
    block = draw(st.sampled_from(BLOCKS)) if blocked else None
    if blocked:
        shape = (draw(st.integers(0, 4)) * block[0], draw(st.integers(0, 4)) * block[1])
    else:
        shape = tuple(draw(st.lists(st.integers(0, 6), min_size=draw(st.sampled_from([1, 2, 4])), max_size=4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    values = rng.integers(-127, 128, shape).astype(dtype)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    values[rng.random(shape) >= density] = 0
    if values.ndim > 1 and values.shape[0] and draw(st.booleans()):
        values[rng.integers(values.shape[0])] = 0
    return values, block


@settings(max_examples=300, deadline=None)
@given(_sparse_arrays(blocked=False))
def test_round_trip(case: tuple[np.ndarray, None]) -> None:
    dense, _ = case
    values, sparsity = encode_sparse(dense)
    # All zero: one explicit zero is kept, as LiteRT reads an empty buffer as a computed tensor.
    assert values.dtype == dense.dtype and values.size == max(np.count_nonzero(dense), min(dense.size, 1))
    np.testing.assert_array_equal(_decoded(values, sparsity, dense.shape), dense)


@settings(max_examples=300, deadline=None)
@given(_sparse_arrays(blocked=True))
def test_blocked_round_trip(case: tuple[np.ndarray, tuple[int, int]]) -> None:
    dense, block = case
    values, sparsity = encode_sparse(dense, block)
    r, c = block
    kept = np.count_nonzero(dense.reshape(dense.shape[0] // r, r, -1, c).any(axis=(1, 3))) if dense.size else 0
    assert values.size == max(kept, min(dense.size, 1)) * r * c
    np.testing.assert_array_equal(_decoded(values, sparsity, dense.shape), dense)


def test_layouts() -> None:
    dense = np.zeros((4, 8), np.float32)
    dense[0, 5] = dense[3, 0] = dense[3, 7] = 1
    _, flat = encode_sparse(dense)
    assert flat.traversal_order.tolist() == [0, 1] and flat.block_map is None
    assert [(d.format, d.dense_size) for d in flat.dim_metadata] == [(0, 4), (1, 0)]
    assert flat.dim_metadata[1].array_segments.fields["values"].tolist() == [0, 1, 1, 1, 3]
    assert flat.dim_metadata[1].array_indices.fields["values"].tolist() == [5, 0, 7]
    values, blocked = encode_sparse(dense, (2, 4))
    assert blocked.traversal_order.tolist() == [0, 1, 2, 3] and blocked.block_map.tolist() == [0, 1]
    assert [(d.format, d.dense_size) for d in blocked.dim_metadata] == [(0, 2), (1, 0), (0, 2), (0, 4)]
    assert blocked.dim_metadata[1].array_segments.fields["values"].tolist() == [0, 1, 3]
    assert blocked.dim_metadata[1].array_indices.fields["values"].tolist() == [1, 0, 1]
    assert values.tolist() == [0, 1, 0, 0, 0, 0, 0, 0] + [0] * 4 + [1, 0, 0, 0] + [0] * 3 + [0, 0, 0, 0, 1]


def test_negative_zeros_are_kept_bit_exact() -> None:
    dense = np.array([[0.0, -0.0, 2.0]], np.float32)
    values, sparsity = encode_sparse(dense)
    assert values.tobytes() == np.array([-0.0, 2.0], np.float32).tobytes()
    assert _decoded(values, sparsity, dense.shape).tobytes() == dense.tobytes()


@pytest.mark.parametrize(
    ("top", "table"),
    [(0, "Uint8Vector"), (255, "Uint8Vector"), (256, "Uint16Vector"), (65535, "Uint16Vector"), (65536, "Int32Vector")],
)
def test_index_vectors_are_the_smallest_that_hold_them(top: int, table: str) -> None:
    vector = index_vector(np.array([0, top]))
    assert vector.type == table and vector.fields["values"].tolist() == [0, top]


def test_segments_and_indices_size_independently() -> None:
    """300 nonzeros in a 2x150 matrix: segments need 16 bits, column indices fit 8."""
    _, sparsity = encode_sparse(np.ones((2, 150), np.float32))
    csr = sparsity.dim_metadata[1]
    assert (csr.array_segments.type, csr.array_indices.type) == ("Uint16Vector", "Uint8Vector")
    _, wide = encode_sparse(np.eye(1, 300, 299, dtype=np.float32))
    assert (wide.dim_metadata[1].array_segments.type, wide.dim_metadata[1].array_indices.type) == (
        "Uint8Vector", "Uint16Vector")  # fmt: skip


@pytest.mark.parametrize(("shape", "block"), [((4, 6), (4, 4)), ((2, 3, 4), (1, 4)), ((4, 4), (0, 1))])
def test_blocks_must_tile_a_matrix(shape: tuple[int, ...], block: tuple[int, int]) -> None:
    with pytest.raises(EngineError, match="does not tile"):
        encode_sparse(np.ones(shape, np.float32), block)


def test_scalars_are_refused() -> None:
    with pytest.raises(EngineError, match="scalar"):
        encode_sparse(np.float32(1))


def test_sparse_bytes_counts_values_and_index_vectors() -> None:
    dense = np.zeros((4, 300), np.float32)
    dense[:, 299] = 1
    values, sparsity = encode_sparse(dense)
    assert sparse_bytes(values, sparsity) == 4 * 4 + 5 * 1 + 4 * 2  # values, uint8 segments, uint16 indices


def test_mediapipe_filters_re_encode_to_their_parameters_or_fewer_bytes(mediapipe: dict[str, Path]) -> None:
    """Every sparse weight of the sparse face detector: decode, encode, get its stored values and metadata back,
    except where another dimension traversed last takes fewer index bytes (1x1 filters with more than 255 input
    channels and at most 256 outputs: one-byte indices; or more outputs than inputs: fewer segments): fewer
    bytes, the same dense weight."""
    model = read_model(mediapipe["face_detection_full_range_sparse"])
    weights = [w for w in find_weights(model) if w.source.sparsity is not None]
    assert len(weights) > 40
    moved = 0
    for w in weights:
        dense = densify(w.source.data, w.shape, w.source)
        values, sparsity = encode_sparse(dense)
        if sparsity.traversal_order.tolist() == list(range(dense.ndim)):
            assert values.tobytes() == w.source.data.tobytes(), w.name
            assert _plain(sparsity) == _plain(w.source.sparsity), w.name
            assert sparse_bytes(values, sparsity) == w.stored_bytes
        else:
            moved += 1
            assert sparse_bytes(values, sparsity) < w.stored_bytes, w.name
            np.testing.assert_array_equal(_decoded(values, sparsity, dense.shape), dense)
    assert 4 <= moved < len(weights)


def test_the_csr_dimension_is_the_one_indexed_in_fewest_bytes() -> None:
    """[8, 300] at 30%: 9 two-byte segments and 720 two-byte indices, or 301 two-byte segments and 720 one-byte
    indices; the second is smaller, so the rows are traversed last (order [1, 0])."""
    dense = np.zeros((8, 300), np.float32)
    dense[:, ::10] = dense[:, 1::10] = dense[:, 2::10] = 1
    values, sparsity = encode_sparse(dense)
    assert sparsity.traversal_order.tolist() == [1, 0] and sparsity.dim_metadata[0].dense_size == 300
    assert sparse_bytes(values, sparsity) == 720 * 4 + 301 * 2 + 720 * 1
    np.testing.assert_array_equal(_decoded(values, sparsity, dense.shape), dense)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 300), min_size=1, max_size=4).filter(lambda s: int(np.prod(s)) <= 20_000),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_fewest_index_bytes_bounds_what_encode_sparse_writes(shape: list[int], density: float, seed: int) -> None:
    """The float16 pass decides from ``fewest_index_bytes`` whether re-encoding can pay, before encoding: never
    less than encode_sparse writes (indices that stay small may take narrower vectors), and equal when the last
    index of every dimension is used."""
    dense = (np.random.default_rng(seed).random(shape) < density).astype(np.float32)
    values, sparsity = encode_sparse(dense)
    assert kept_count(dense) == kept_count(values) == values.size
    assert index_bytes(sparsity) <= fewest_index_bytes(tuple(shape), values.size)
    dense[...] = 1
    values, sparsity = encode_sparse(dense)
    assert index_bytes(sparsity) == fewest_index_bytes(tuple(shape), values.size)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_sparse_arrays(blocked=False), _sparse_arrays(blocked=True)))
def test_sparse_cannot_save_is_a_lower_bound(case: tuple[np.ndarray, tuple[int, int] | None]) -> None:
    """The passes skip encoding a weight when ``sparse_cannot_save`` says so: whenever it does, the encoding is
    indeed no smaller than the dense bytes (a fully dense array always says so)."""
    dense, block = case
    if sparse_cannot_save(dense, block):
        values, sparsity = encode_sparse(dense, block)
        assert sparse_bytes(values, sparsity) >= dense.nbytes
    if dense.size and np.count_nonzero(dense) == dense.size:
        assert sparse_cannot_save(dense, block)


@pytest.mark.parametrize("block", [None, (2, 4)])
def test_written_and_read_back_unchanged(block: tuple[int, int] | None) -> None:
    dense = np.random.default_rng(3).integers(-1, 2, (4, 8)).astype(np.float32)
    values, sparsity = encode_sparse(dense, block)
    b = GraphBuilder()
    stored = b.constant(values, "w")
    stored.shape, stored.sparsity = dense.shape, sparsity
    b.output(b.add(b.input("x", dense.shape), b.op("DENSIFY", [stored], [dense.shape])[0]))
    (back,) = [t for t in read_model(model_to_bytes(b.build())).main.tensors if t.name == "w"]
    assert _plain(back.sparsity) == _plain(sparsity)
    np.testing.assert_array_equal(densify(back.data, dense.shape, back), dense)
