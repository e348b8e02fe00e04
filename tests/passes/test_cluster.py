"""k-means weight sharing on the real models in LiteRT: at most K values, both storages, composition; every output
checked in both runtimes (``tests/runtimes.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine
from engine.errors import EngineError
from engine.graph.weights import find_weights
from engine.passes import cluster
from engine.quant import kernels
from engine.recipe import Recipe
from engine.zoo import model_photo
from tests.conftest import Compressed, compressed_or_shared
from tests.runtimes import RUNTIMES, run_model, worst_sqnr

# K -> worst output SQNR floor (dB) per model on one real photo with tensor-granularity clustering: measured
# 2026-11-23, floors about 3 dB below.
FLOORS: dict[int, dict[str, float]] = {
    16: {
        "face_detection_full_range_sparse": 10,  # measured 13.0
        "face_detection_short_range": 1,  # measured 4.4
        "face_landmark": 28,  # measured 31.2
        "hand_landmark_full": -75,  # measured -71.6
        "hand_landmark_lite": -35,  # measured -31.4
        "hand_recrop": 27,  # measured 30.2
        "iris_landmark": 18,  # measured 21.8
        "palm_detection_full": 4,  # measured 7.5
        "palm_detection_lite": 4,  # measured 7.5
        "pose_detection": -3,  # measured 0.5
        "pose_landmark_full": -26,  # measured -22.7
    },
    256: {
        "face_detection_full_range_sparse": 32,  # measured 35.5
        "face_detection_short_range": 28,  # measured 31.4
        "face_landmark": 45,  # measured 48.1
        "hand_landmark_full": 9,  # measured 12.3
        "hand_landmark_lite": 2,  # measured 5.5
        "hand_recrop": 65,  # measured 68.1
        "iris_landmark": 45,  # measured 48.3
        "palm_detection_full": 24,  # measured 27.6
        "palm_detection_lite": 26,  # measured 29.3
        "pose_detection": 26,  # measured 29.2
        "pose_landmark_full": 3,  # measured 6.2
    },
}


@pytest.mark.parametrize("k", list(FLOORS))
def test_clustered_models_share_at_most_k_values_and_run(
    k: int, runnable: dict[str, Path], compressed: Compressed, tmp_path: Path
) -> None:
    measured = {}
    for name, path in runnable.items():  # K = 16 is "cluster-16": the session's file and report
        out, report = compressed_or_shared(compressed, name, path, {"cluster": k}, tmp_path / f"{name}.tflite")
        clustered = {t.name for t in report.compressed if t.clusters}
        assert clustered, name
        for w in find_weights(engine.read_model(out)):
            if w.name in clustered:
                assert len(np.unique(w.decode()[w.decode() != 0])) <= k, w.name
        measured[name] = min(worst_sqnr(path, out, model_photo(name), runtime) for runtime in RUNTIMES)
    assert all(measured[n] >= FLOORS[k][n] for n in measured), measured


def test_channel_granularity_shares_k_values_per_channel(runnable: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.tflite"
    _, report = engine.compress(runnable["iris_landmark"], output=out, cluster=4, cluster_granularity="channel")
    clustered = {t.name for t in report.compressed}
    weights = [w for w in find_weights(engine.read_model(out)) if w.name in clustered]
    assert weights
    for w in weights:
        values = np.moveaxis(w.decode(), w.channel_axis, 0).reshape(w.shape[w.channel_axis], -1)
        assert max(len(np.unique(row)) for row in values) <= 4 + 1, w.name  # + the zero code


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_gather_storage_computes_the_same_weights(
    granularity: str, runnable: dict[str, Path], compressed: Compressed, tmp_path: Path
) -> None:
    path = runnable["iris_landmark"]  # float32 weights: both storages hold the same float32 centroids
    files, summaries = {}, {}
    for storage in ("values", "gather"):
        options = {"cluster": 16, "cluster_storage": storage, "cluster_granularity": granularity}
        # per tensor these are the session's "cluster-16" and "cluster-16-gather"
        files[storage], report = compressed_or_shared(
            compressed, "iris_landmark", path, options, tmp_path / f"{storage}.tflite"
        )
        summaries[storage] = report.format_text()
    # Values storage keeps float32 values: the summary says the file does not shrink for them, gzip does.
    assert "keep their float values" in summaries["values"] and "keep their float" not in summaries["gather"]
    model = engine.read_model(files["gather"])
    ops = [op.name for op in model.main.operators]
    assert ops.count("GATHER") == ops.count("CAST") > 0
    indices = [t for t in model.main.tensors if t.is_constant and t.type_name == "UINT8"]
    assert indices and all(t.data.max() < 16 for t in indices)
    assert files["gather"].stat().st_size < 0.45 * files["values"].stat().st_size
    photo = model_photo("iris_landmark")
    a, b = run_model(files["values"], photo, "builtin"), run_model(files["gather"], photo, "builtin")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # In the default runtime XNNPACK computes the convolutions of the values model but leaves those reading a
    # GATHER output to the builtin kernels, which sum in another order: equal up to float rounding.
    assert worst_sqnr(files["values"], files["gather"], photo, "default") > 110


def test_cluster_then_quantize_gives_at_most_k_codes(runnable: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.tflite"
    _, report = engine.compress(runnable["hand_recrop"], output=out, prune=0.5, cluster=8, quantize="weight-int8")
    done = {t.name for t in report.compressed if t.clusters and t.mode == "weight-int8" and t.sparsity}
    weights = [w for w in find_weights(engine.read_model(out)) if w.name in done]
    assert weights
    for w in weights:
        codes = np.moveaxis(w.source.data, w.channel_axis, 0).reshape(w.shape[w.channel_axis], -1)
        # K shared values (and the pruned zeros) per tensor, so per channel (each has its own int8 scale)
        assert max(len(np.unique(row)) for row in codes) <= 8 + 1
        assert np.count_nonzero(codes == 0) >= 0.5 * codes.size - 1


def test_kmeans_keeps_pruned_zeros_out_of_the_clusters() -> None:
    values = np.random.default_rng(0).normal(0, 1, 1000).astype(np.float32)
    values[::2] = 0
    centroids, labels = kernels.kmeans_1d(values, 4, keep_zero=True)
    rebuilt = centroids[labels]
    assert (rebuilt[::2] == 0).all() and (rebuilt[1::2] != 0).all()
    assert len(np.unique(rebuilt)) == 4


@given(
    st.integers(1, 5), st.integers(1, 40), st.integers(1, 256), st.integers(1, 64), st.randoms(use_true_random=False)
)
def test_shared_values_overwrite_their_labels_in_order(rows: int, n: int, k: int, chunk: int, rng) -> None:
    """The shared values are written over the buffer that holds the labels in its tail (``cluster._holding``), so
    both never take memory side by side: every value is its row's codebook entry at its label, whatever the
    chunk and row sizes."""
    labels = np.array([[rng.randrange(k) for _ in range(n)] for _ in range(rows)], np.uint8)
    books = np.array([[rng.uniform(-1, 1) for _ in range(k)] for _ in range(rows)], np.float32)
    expected = np.take_along_axis(books, labels.astype(np.intp), axis=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cluster, "_CHUNK", chunk)
        assert np.array_equal(cluster._shared_values(books, cluster._holding(labels)), expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster": 1}, "cluster is the number of shared values, 2 to 256"),
        ({"cluster": 300}, "cluster is the number of shared values, 2 to 256"),
        ({"cluster": 16, "cluster_init": "random"}, "unknown cluster_init 'random'"),
        ({"cluster": 16, "cluster_storage": "lut"}, "unknown cluster_storage 'lut'"),
        ({"cluster": 16, "cluster_storage": "gather", "quantize": "weight-int8"}, "cannot be quantized too"),
    ],
)
def test_bad_cluster_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        Recipe.from_dict(options)
