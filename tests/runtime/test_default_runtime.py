"""Every compression mode (``conftest.MODES``) on every runnable MediaPipe model, loaded as users load it,
``Interpreter(model_path=p)`` with its default XNNPACK delegate, and with the builtin kernels alone.

A model is right only when the default interpreter loads it and its outputs match: each case's worst output SQNR
against the input model (run in the same runtime) on a real photo held out from calibration
(``engine.zoo.model_photo``) must stay above a floor measured per (model, mode) in each runtime, ``MARGIN_DB``
under the measured value.  A model that fails to load or run in either runtime fails its case.  The compressed
models come from the session's ``compressed`` fixture (``conftest.py``), shared with the tests of each mode.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.zoo import CUSTOM_OP_MODELS, MODEL_SHA256, model_photo
from tests.conftest import MODES, Compressed
from tests.runtimes import RUNTIMES, Refused, worst_sqnr

RUNNABLE = sorted(set(MODEL_SHA256) - CUSTOM_OP_MODELS)
# Blockwise int4 is read by FULLY_CONNECTED only; these models have FC weights it applies to (elsewhere the mode
# falls back to dynamic-int4's per-channel weights, a case already run).
BLOCKWISE_MODELS = ("hand_landmark_full", "hand_landmark_lite")
CASES = [(n, m) for n in RUNNABLE for m in MODES if m != "dynamic-int4-block32" or n in BLOCKWISE_MODELS]
MARGIN_DB = 2.0
INF = math.inf

# Worst output SQNR (dB) of each case in the order of RUNTIMES, (default runtime, builtin kernels), measured at commit
# 7310094 (INF: outputs bit-identical to the input model's).  A case missing here fails, showing what it measures.
# The hand landmark models' scalar outputs (hand presence and handedness on a photo with no hand) sit deep in a
# sigmoid's tail, where any change is a large relative error; one-shot pruning and 16 shared values wreck them.
MEASURED: dict[str, dict[str, tuple[float, float]]] = {
    "face_detection_full_range_sparse": {
        "float16": (INF, INF), "weight-int8": (40.0, 40.0), "dynamic-int8": (40.0, 40.0),
        "weight-int4": (11.0, 11.0), "dynamic-int4": (11.0, 11.0), "prune-0.5": (INF, INF),
        "prune-0.5-sparse": (INF, INF), "cluster-16": (13.0, 13.0), "cluster-16-gather": (13.0, 13.0),
        "int8": (16.2, 15.9), "int16x8": (31.6, 31.6), "int8-io-int8": (15.4, 15.0),
    },
    "face_detection_short_range": {
        "float16": (INF, INF), "weight-int8": (33.5, 33.5), "dynamic-int8": (29.8, 21.1),
        "weight-int4": (-0.9, -0.9), "dynamic-int4": (-0.6, -0.5), "prune-0.5": (3.1, 3.1),
        "prune-0.5-sparse": (3.1, 3.1), "cluster-16": (4.4, 4.4), "cluster-16-gather": (4.4, 4.4),
        "int8": (13.8, 14.3), "int16x8": (17.3, 17.3), "int8-io-int8": (13.6, 14.3),
    },
    "face_landmark": {
        "float16": (INF, INF), "weight-int8": (37.4, 37.4), "dynamic-int8": (43.3, 50.8),
        "weight-int4": (12.7, 12.7), "dynamic-int4": (12.8, 12.8), "prune-0.5": (10.9, 10.9),
        "prune-0.5-sparse": (10.9, 10.9), "cluster-16": (31.2, 31.2), "cluster-16-gather": (31.2, 31.2),
        "int8": (29.9, 21.5), "int16x8": (30.7, 30.7), "int8-io-int8": (23.5, 26.1),
    },
    "hand_landmark_full": {
        "float16": (INF, INF), "weight-int8": (6.6, 6.6), "dynamic-int8": (6.4, 5.6), "weight-int4": (-31.2, -31.2),
        "dynamic-int4": (-31.0, -30.7), "dynamic-int4-block32": (-31.0, -30.7), "prune-0.5": (-76.6, -76.6),
        "prune-0.5-sparse": (-76.6, -76.6), "cluster-16": (-71.6, -71.6), "cluster-16-gather": (-71.5, -71.5),
        "int8": (0.0, 0.0), "int16x8": (6.1, 6.1), "int8-io-int8": (0.0, 0.0),
    },
    "hand_landmark_lite": {
        "float16": (INF, INF), "weight-int8": (0.7, 0.7), "dynamic-int8": (0.6, 0.1), "weight-int4": (-13.2, -13.2),
        "dynamic-int4": (-13.2, -13.4), "dynamic-int4-block32": (-12.6, -12.6), "prune-0.5": (-62.1, -62.1),
        "prune-0.5-sparse": (-62.1, -62.1), "cluster-16": (-31.4, -31.4), "cluster-16-gather": (-31.3, -31.3),
        "int8": (0.0, 0.0), "int16x8": (1.0, 1.0), "int8-io-int8": (0.0, 0.0),
    },
    "hand_recrop": {
        "float16": (99.8, 99.9), "weight-int8": (59.0, 59.0), "dynamic-int8": (53.7, 53.7),
        "weight-int4": (38.8, 38.8), "dynamic-int4": (39.1, 39.1), "prune-0.5": (26.0, 26.0),
        "prune-0.5-sparse": (26.0, 26.0), "cluster-16": (30.2, 30.2), "cluster-16-gather": (30.2, 30.2),
        "int8": (35.6, 41.0), "int16x8": (40.3, 40.3), "int8-io-int8": (43.7, 38.8),
    },
    "iris_landmark": {
        "float16": (79.5, 79.5), "weight-int8": (46.2, 46.2), "dynamic-int8": (43.0, 39.2),
        "weight-int4": (22.3, 22.3), "dynamic-int4": (22.1, 21.9), "prune-0.5": (21.3, 21.3),
        "prune-0.5-sparse": (21.3, 21.3), "cluster-16": (21.8, 21.8), "cluster-16-gather": (21.8, 21.8),
        "int8": (24.9, 30.4), "int16x8": (38.2, 38.2), "int8-io-int8": (28.1, 24.0),
    },
    "palm_detection_full": {
        "float16": (INF, INF), "weight-int8": (28.3, 28.3), "dynamic-int8": (26.2, 25.1), "weight-int4": (8.4, 8.4),
        "dynamic-int4": (8.1, 8.2), "prune-0.5": (7.1, 7.1), "prune-0.5-sparse": (7.1, 7.1),
        "cluster-16": (7.5, 7.5), "cluster-16-gather": (7.5, 7.5), "int8": (12.4, 12.4), "int16x8": (21.6, 21.6),
        "int8-io-int8": (12.6, 12.4),
    },
    "palm_detection_lite": {
        "float16": (INF, INF), "weight-int8": (29.8, 29.8), "dynamic-int8": (28.8, 25.7), "weight-int4": (8.7, 8.7),
        "dynamic-int4": (8.6, 8.6), "prune-0.5": (5.6, 5.6), "prune-0.5-sparse": (5.6, 5.6),
        "cluster-16": (7.5, 7.5), "cluster-16-gather": (7.5, 7.5), "int8": (15.8, 16.5), "int16x8": (25.4, 25.4),
        "int8-io-int8": (17.2, 16.4),
    },
    "pose_detection": {
        "float16": (INF, INF), "weight-int8": (34.2, 34.2), "dynamic-int8": (34.2, 34.2), "weight-int4": (9.3, 9.3),
        "dynamic-int4": (9.3, 9.3), "prune-0.5": (3.5, 3.5), "prune-0.5-sparse": (3.5, 3.5),
        "cluster-16": (0.5, 0.5), "cluster-16-gather": (0.5, 0.5), "int8": (18.5, 18.2), "int16x8": (24.7, 24.7),
        "int8-io-int8": (18.4, 17.9),
    },
    "pose_landmark_full": {
        "float16": (INF, INF), "weight-int8": (11.1, 11.1), "dynamic-int8": (13.1, 10.3),
        "weight-int4": (-10.5, -10.5), "dynamic-int4": (-10.6, -10.6), "prune-0.5": (-0.4, -0.4),
        "prune-0.5-sparse": (-0.4, -0.4), "cluster-16": (-22.7, -22.7), "cluster-16-gather": (-22.7, -22.7),
        "int8": (2.8, 2.6), "int16x8": (3.8, 3.8), "int8-io-int8": (3.1, 3.0),
    },
}  # fmt: skip


def _fate(reference: Path, candidate: Path, photo: np.ndarray, runtime: str) -> float | str:
    """The worst output SQNR, or the interpreter's refusal."""
    try:
        return worst_sqnr(reference, candidate, photo, runtime)
    except Refused as exc:
        return str(exc)


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_mode_runs_right_in_both_runtimes(
    name: str, mode: str, runnable: dict[str, Path], compressed: Compressed
) -> None:
    path, report = compressed(name, mode)
    if mode == "dynamic-int4-block32":
        assert any(t.granularity == "block:32" for t in report.compressed)
    photo = model_photo(name)
    fates = {runtime: _fate(runnable[name], path, photo, runtime) for runtime in RUNTIMES}
    measured = MEASURED.get(name, {}).get(mode, (math.nan, math.nan))  # no floor: nothing passes
    floors = {runtime: value - MARGIN_DB for runtime, value in zip(RUNTIMES, measured, strict=True)}
    assert all(isinstance(f, float) and f >= floors[r] for r, f in fates.items()), (fates, floors)
