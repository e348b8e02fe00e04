"""``--cluster K``: k-means weight sharing, so each tensor (or output channel) holds at most K distinct values.

Exact 1-D Lloyd (``engine.quant.kernels.kmeans_1d``) per tensor or per output channel, sparsity-preserving: exact
zeros (a pruned weight's) stay zero and do not take a cluster.  Storage:

- ``values``: the weight takes its centroid values in its own float type.  The file shrinks under general
  compression (gzip, app packages); composed with ``--quantize``, the quantized tensor holds at most K
  distinct codes per tensor or channel.
- ``gather``: a UINT8 index tensor plus a K-entry float32 codebook, rebuilt at run time by CAST (uint8 to
  int32: GATHER refuses 8-bit positions) and GATHER, so the file itself shrinks like int8 with non-uniform
  levels.  Per-channel codebooks are gathered row by row (``batch_dims`` 1), which needs the channels on
  axis 0.  The weight is then computed, not constant, so it cannot be quantized afterwards.
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineError
from engine.format.ir import TENSOR_TYPES, Model, Operator, Table, Tensor
from engine.format.reader import released_chunks
from engine.format.sparse import constant_bytes
from engine.graph.weights import Weight, check_finite
from engine.passes.common import entry, float_constant, install, replace_chain, select
from engine.progress import track
from engine.quant import kernels
from engine.quant.metrics import power_ratio_db
from engine.quant.uniform import as_rows
from engine.recipe import Recipe, TensorOptions
from engine.registry import CODEBOOK_METHODS
from engine.report import TensorReport

_CHUNK = 1 << 20  # weights summed, or labels turned into values, at a time


def cluster_weights(model: Model, recipe: Recipe) -> tuple[Model, list[TensorReport]]:
    """Share K values in every weight the recipe clusters; one report entry per weight."""
    if not recipe.sets("cluster"):
        return model, []
    chosen, reports = select(model, recipe, lambda options: options.cluster is not None)
    if chosen:
        kernels.load_in_background()  # while the first weight is read and sorted
    for weight, options in track(chosen, "clustering weights"):
        if options.cluster_storage == "gather" and options.cluster_granularity == "channel" and weight.channel_axis:
            reports.append(entry(weight, options, "gather storage per channel needs the channels on axis 0"))
            continue
        values = weight.decode()
        check_finite(weight.name, values, "clustered")
        rows, restore = as_rows(values, _granularity(weight.channel_axis, options), weight.channel_axis)
        centroids, labels = _cluster(rows, options)
        report = entry(weight, options)
        report.weight_sqnr_db = _weight_sqnr(rows, centroids, labels)  # before the shared values are made: a
        # large weight read from the file is then resident beside its labels only, never beside its new values
        if options.cluster_storage == "gather":
            report.bytes_after = _install_gather(model, weight, centroids, labels)
            report.dtype_after, report.form = "UINT8", "gather"
            report.slow_form = "UINT8 indices rebuilt by CAST + GATHER at every run (a computed filter)"
        else:
            shared = _holding(labels)
            del labels  # now only in the tail of the shared values' buffer, which the shared values overwrite
            clustered = restore(_shared_values(centroids, shared))
            stored = float_constant(weight, clustered.astype(weight.source.dtype, copy=False), options)
            install(model, weight, stored, direct=[])
            report.bytes_after, report.dtype_after, report.form = constant_bytes(stored), stored.type_name, "values"
        report.clusters = int(centroids.shape[1])
        reports.append(report)
    return model, reports


def _cluster(rows: np.ndarray, options: TensorOptions) -> tuple[np.ndarray, np.ndarray]:
    """Codebooks [rows, K] (float32) and labels [rows, n] (uint8) of the weight as rows (``_granularity``: its
    output channels with channel granularity, else one row).  A channel with fewer distinct values than the
    others gets its codebook padded by repeating its last entry, which no label points at."""
    assert options.cluster is not None
    books, labels = [], np.empty(rows.shape, np.uint8) if len(rows) > 1 else None
    for i, row in enumerate(rows):
        book, row_labels = CODEBOOK_METHODS.call(options.cluster_init, np.ascontiguousarray(row), options.cluster)
        if labels is None:  # one row: its labels as they are, no second copy
            labels = np.asarray(row_labels, np.uint8).reshape(rows.shape)
        else:
            labels[i] = row_labels
        book = np.asarray(book, np.float32)
        if not 0 < book.size <= options.cluster or int(labels[i].max(initial=0)) >= book.size:
            raise EngineError(
                f"codebook method {options.cluster_init!r} gave {book.size} values for K={options.cluster}, or "
                "labels beyond them"
            )
        books.append(book)
    width = max(len(b) for b in books)
    return np.stack([np.pad(b, (0, width - len(b)), mode="edge") for b in books]).astype(np.float32), labels


def _holding(labels: np.ndarray) -> np.ndarray:
    """The float32 buffer of the shared values (``labels``' shape), holding a copy of the uint8 labels in its
    last quarter: once the caller drops its labels, the labels and the values never take memory side by side
    (untouched pages of the buffer are not resident until written)."""
    shared = np.empty(labels.shape, np.float32)
    _tail(shared)[:] = labels.reshape(-1)
    return shared


def _tail(shared: np.ndarray) -> np.ndarray:
    """The labels inside ``_holding``'s buffer: its last quarter as uint8, one per value."""
    return shared.reshape(-1).view(np.uint8)[3 * shared.size :]


def _shared_values(codebooks: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """Each row's codebook entries at its labels (float32), written over ``_holding``'s buffer from the front a
    chunk at a time, indexed by the uint8 labels themselves (no intp copy of 8 bytes a weight).  The writes stay
    behind the labels still to read: of N values, those before element e end at byte 4e, and the labels from e
    on start at byte 3N + e >= 4e."""
    labels, flat, n = _tail(shared), shared.reshape(-1), shared.shape[1]
    for i, book in enumerate(codebooks):
        for start in range(i * n, (i + 1) * n, _CHUNK):
            stop = min(start + _CHUNK, (i + 1) * n)
            flat[start:stop] = book[labels[start:stop]]
    return shared


def _weight_sqnr(rows: np.ndarray, codebooks: np.ndarray, labels: np.ndarray) -> float:
    """The clustered weight's SQNR, its two powers summed a chunk at a time in float64 by the Numba kernel: no
    float64 copy of the weight (a 25 M-weight layer's took a second and 400 MB), and the file pages behind each
    chunk of a weight read from the file are released once summed."""
    zero = np.zeros(1, np.float32)
    signal = noise = 0.0
    for row, book, row_labels in zip(rows, codebooks, labels, strict=True):
        for part, start in released_chunks(row, _CHUNK):
            noise += kernels.cluster_error(part, book, row_labels[start : start + part.size])
            signal += kernels.cluster_error(part, zero, np.zeros(part.size, np.uint8))
    return power_ratio_db(signal, noise)


def _granularity(channel_axis: int | None, options: TensorOptions) -> str:
    """The rows that share a codebook: each output channel with channel granularity (where the op has one)."""
    return "channel" if options.cluster_granularity == "channel" and channel_axis is not None else "tensor"


def _install_gather(model: Model, weight: Weight, codebook: np.ndarray, labels: np.ndarray) -> int:
    """Store the labels (UINT8) and codebook (FLOAT32); CAST + GATHER rebuild the weight.  Bytes stored."""
    shape = weight.shape
    per_channel = codebook.shape[0] > 1
    indices = Tensor(f"{weight.name}_indices")
    indices.data = labels.reshape(shape)  # per channel, the channels are axis 0: the rows' order is C order
    book = Tensor(f"{weight.name}_codebook")
    book.data = codebook if per_channel else codebook[0]
    positions = Tensor(f"{weight.name}_positions", shape, TENSOR_TYPES["INT32"])
    cast = Operator(
        model.opcode("CAST"),
        [indices],
        [positions],
        builtin_options=Table(
            "CastOptions", {"in_data_type": TENSOR_TYPES["UINT8"], "out_data_type": TENSOR_TYPES["INT32"]}
        ),
    )
    options = {"axis": 1 if per_channel else 0, "batch_dims": 1 if per_channel else 0}
    gather = Operator(
        model.opcode("GATHER"), [book, positions], [weight.value], builtin_options=Table("GatherOptions", options)
    )
    replace_chain(weight, [cast, gather], [op for op, _ in weight.uses], [indices, book])
    weight.value.shape = shape
    return constant_bytes(indices) + constant_bytes(book)
