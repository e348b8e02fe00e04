"""Encode a dense constant in TFLite's sparse format (SparsityParameters), the inverse of ``weights.densify``.

Kept apart from ``engine.graph.weights`` (which finds the weights of a graph and decodes them): this is a pure
format function on arrays that passes call to re-encode what they produce.

Layouts, as TFLite documents them (``traversal_order`` lists the levels, a blocked dimension adds a level
whose original dimension ``block_map`` names) and as LiteRT's converter writes them:

- unblocked, rank n: no block map, every level DENSE but the last, which is CSR; traversal order [0..n-1]
  (MediaPipe's sparse OHWI filters: O, H, W dense, I CSR; [out, in] matrices: [DENSE, CSR]), or with one
  dimension moved to the end when indexing it takes fewer bytes (both runtimes decode either; a CSR level inside
  a block, the other way to narrow the indices, crashes both with SIGFPE);
- blocked R x C (2-D [out, in] only): traversal order [0, 1, 2, 3], block map [0, 1], levels out/R DENSE,
  in/C CSR (the block columns holding a nonzero), then the block's R rows and C columns DENSE, so each kept
  block stores all R*C of its values, zeros included.

A CSR level has ``dense_size`` 0 (as the converter writes it); its segments (one start per node of the
level above, plus the end) and indices each take the smallest SparseIndexVector that holds them.
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineError
from engine.format.ir import DimensionMetadata, SparsityParams, Table, Tensor

DENSE, SPARSE_CSR = 0, 1
# The SparseIndexVector union members, smallest first: (table, element dtype).
INDEX_VECTORS = (("Uint8Vector", np.uint8), ("Uint16Vector", np.uint16), ("Int32Vector", np.int32))


def index_vector(values: np.ndarray) -> Table:
    """The smallest SparseIndexVector holding ``values`` (non-negative), as the reader produces it."""
    name, dtype = _index_type(int(values.max()) if values.size else 0)
    return Table(name, {"values": values.astype(dtype)})


def _index_type(top: int) -> tuple[str, type]:
    """The smallest SparseIndexVector member (name, element dtype) holding indices up to ``top``."""
    for name, dtype in INDEX_VECTORS:
        if top <= np.iinfo(dtype).max:
            return name, dtype
    raise EngineError(f"sparse index {top} does not fit the format's int32 index vectors")


def _stored(dense: np.ndarray) -> np.ndarray:
    """Where ``dense`` must keep a value: nonzeros, and negative zeros so the round trip is bit-exact.  At least
    one (the first) even when all are zero: LiteRT takes a constant with an empty buffer for a computed tensor,
    and DENSIFY refuses that input (the model does not load)."""
    keep = dense != 0
    keep = keep | np.signbit(dense) if dense.dtype.kind == "f" else keep
    if keep.size and not keep.any():
        keep.flat[0] = True
    return keep


def kept_count(values: np.ndarray) -> int:
    """How many of ``values`` (a dense tensor, or a sparse constant's stored values) ``encode_sparse`` keeps."""
    return int(np.count_nonzero(_stored(np.asarray(values))))


def _csr(mask: np.ndarray) -> DimensionMetadata:
    """A CSR level over the columns of 2-D ``mask``: one segment per row, the kept columns' indices."""
    segments = np.concatenate([[0], np.cumsum(mask.sum(axis=1), dtype=np.int64)])
    return DimensionMetadata(SPARSE_CSR, 0, index_vector(segments), _column_indices(mask))


def _column_indices(mask: np.ndarray) -> Table:
    """``index_vector(np.nonzero(mask)[1])``, a block of rows at a time: np.nonzero's row indices and int64
    column indices took 16 bytes per kept value (128 MB on a half-pruned 4096x4096 weight)."""
    used = np.flatnonzero(mask.any(axis=0))
    name, dtype = _index_type(int(used[-1]) if used.size else 0)
    columns = np.empty(int(np.count_nonzero(mask)), dtype)
    step, at = max(1, (1 << 20) // max(1, mask.shape[1])), 0
    for start in range(0, mask.shape[0], step):
        kept = np.nonzero(mask[start : start + step])[1]
        columns[at : at + kept.size] = kept
        at += kept.size
    return Table(name, {"values": columns})


def encode_sparse(dense: np.ndarray, block: tuple[int, int] | None = None) -> tuple[np.ndarray, SparsityParams]:
    """The stored values (flat, ``dense``'s dtype) and sparsity parameters of ``dense``.

    ``block`` (rows, columns) stores whole blocks of a 2-D [out, in] weight; both must divide its shape.
    """
    dense = np.asarray(dense)
    if dense.ndim == 0:
        raise EngineError("a scalar cannot be stored sparse")
    if block is None:
        keep = _stored(dense)  # its one forced value, when all are zero, is the first in any traversal order
        last = _csr_dimension(dense.shape, int(np.count_nonzero(keep)))
        order = [*(d for d in range(dense.ndim) if d != last), last]
        moved, keep = np.transpose(dense, order), np.transpose(keep, order)  # views; no copy in the identity order
        rows = moved.reshape(int(np.prod(moved.shape[:-1])), moved.shape[-1])
        mask = keep.reshape(rows.shape)
        dims = [DimensionMetadata(DENSE, int(d)) for d in moved.shape[:-1]]
        return rows[mask], SparsityParams(np.array(order, np.int32), None, [*dims, _csr(mask)])
    r, c = (int(b) for b in block)
    if dense.ndim != 2 or r < 1 or c < 1 or dense.shape[0] % r or dense.shape[1] % c:
        raise EngineError(f"block {block} does not tile a 2-D weight of shape {dense.shape}")
    blocks = dense.reshape(dense.shape[0] // r, r, dense.shape[1] // c, c).transpose(0, 2, 1, 3)
    mask = _stored(blocks).any(axis=(2, 3))
    dims = [DimensionMetadata(DENSE, dense.shape[0] // r), _csr(mask), DimensionMetadata(DENSE, r),
            DimensionMetadata(DENSE, c)]  # fmt: skip
    order = np.arange(4, dtype=np.int32)
    return blocks[mask].reshape(-1), SparsityParams(order, np.array([0, 1], np.int32), dims)


def _csr_dimension(shape: tuple[int, ...], stored: int) -> int:
    """The dimension the CSR level indexes, traversed last (the others DENSE, in order): the last one, unless
    another needs fewer index bytes (``_csr_index_bytes``).  MediaPipe's 1x1 filters [O, 1, 1, I] with I > 255 and
    O <= 256 index O in one byte instead of I in two: a third of pose_detection's index bytes."""
    last = len(shape) - 1
    return min(range(len(shape)), key=lambda d: (_csr_index_bytes(shape, stored, d), d != last))


def _csr_index_bytes(shape: tuple[int, ...], stored: int, d: int) -> int:
    """Index bytes of ``stored`` values with the CSR level on dimension ``d``: segments, one per node of the
    levels above plus the end, and indices, one per stored value, as wide as that dimension needs."""
    segments = int(np.prod(shape)) // max(1, shape[d]) + 1
    return segments * _index_width(stored) + stored * _index_width(shape[d] - 1)


def fewest_index_bytes(shape: tuple[int, ...], stored: int) -> int:
    """The index bytes ``encode_sparse`` (unblocked) writes for ``stored`` values of a tensor of ``shape``, known
    before encoding it: at most that (an index vector whose largest value is small takes a narrower type)."""
    return _csr_index_bytes(shape, stored, _csr_dimension(shape, stored))


def sparse_int8_saves(values: np.ndarray) -> bool:
    """Whether int8 codes that keep the zeros of ``values`` take fewer bytes stored sparse (unblocked) than
    dense: where they do, data-aware rounding keeps those zeros (``quantize_weight(keep_zeros=True)``)."""
    stored = kept_count(values)
    return stored + fewest_index_bytes(np.shape(values), stored) < np.size(values)


def sparse_cannot_save(values: np.ndarray, block: tuple[int, int] | None = None) -> bool:
    """Whether ``values`` stored sparse (by ``block``s, or unblocked) certainly take at least the bytes they take
    dense, known without encoding them (seconds on a large weight): every nonzero is stored, with an index of at
    least one byte per stored value (per block)."""
    nonzero = int(np.count_nonzero(values))
    per_index = 1 if block is None else block[0] * block[1]
    return nonzero * values.itemsize + -(-nonzero // per_index) >= values.nbytes


def _index_width(top: int) -> int:
    return int(np.dtype(_index_type(max(0, top))[1]).itemsize)


def index_bytes(sparsity: SparsityParams) -> int:
    """Bytes of the segment and index vectors: part of what a sparse constant costs in the file."""
    vectors = [v for d in sparsity.dim_metadata or [] for v in (d.array_segments, d.array_indices) if v is not None]
    return sum(int(np.asarray(v.fields["values"]).nbytes) for v in vectors)


def sparse_bytes(values: np.ndarray, sparsity: SparsityParams) -> int:
    """Bytes of a sparse constant (values plus index vectors), to compare with its dense size."""
    return int(np.asarray(values).nbytes) + index_bytes(sparsity)


def constant_bytes(t: Tensor) -> int:
    """What a constant takes in the file: its buffer, plus index vectors when sparse."""
    assert t.buffer is not None
    return int(t.buffer.data.size) + (index_bytes(t.sparsity) if t.sparsity is not None else 0)
