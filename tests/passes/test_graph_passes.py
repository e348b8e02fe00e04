"""Graph cleanup passes the full-integer pass runs first: constant decoders folded, activations fused.  Both must
compute exactly what the input model does, which LiteRT checks bit for bit on the real models in both runtimes."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.format.builder import GraphBuilder
from engine.format.reader import read_model
from engine.format.writer import model_to_bytes, write_model
from engine.passes.fold import fold_constant_decoders
from engine.passes.fuse import fuse_activations
from engine.quant.uniform import quantize_weight
from engine.remembered import digest, immutable, remembered, remembering
from engine.zoo import CUSTOM_OP_MODELS, MODEL_SHA256, mediapipe_model, model_photo
from tests.runtimes import RUNTIMES, run_model

RUNNABLE = sorted(set(MODEL_SHA256) - CUSTOM_OP_MODELS)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
@pytest.mark.parametrize("name", RUNNABLE)
def test_folding_and_fusing_keep_real_models_bit_identical(name: str) -> None:
    model = read_model(mediapipe_model(name))
    before = Counter(op.name for op in model.main.operators)
    model, folded = fold_constant_decoders(model)
    model, fused = fuse_activations(model)
    after = Counter(op.name for op in model.main.operators)
    assert len(folded) == before["DEQUANTIZE"] + before["DENSIFY"] and after["DEQUANTIZE"] == after["DENSIFY"] == 0
    assert fused == sum(before[a] - after[a] for a in ("RELU", "RELU6", "RELU_N1_TO_1"))
    rewritten = bytes(model_to_bytes(model))
    for runtime in RUNTIMES:
        before = run_model(mediapipe_model(name), model_photo(name), runtime)
        after = run_model(rewritten, model_photo(name), runtime)
        assert all(np.array_equal(before[k], after[k]) for k in before), runtime


def test_remembered_computes_once_per_key_inside_the_block_and_hands_out_read_only_results() -> None:
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(3.0)

    assert remembered(lambda: "k", compute) is not None and len(calls) == 1
    assert remembered(lambda: "k", compute) is not None and len(calls) == 2  # no block open: nothing kept
    memo: dict = {}
    with remembering(memo):
        first = remembered(lambda: "k", compute)
        assert first is not None
        with pytest.raises(ValueError, match="read-only"):
            first[0] = 99.0  # an in-place edit of a result fails instead of reaching the next caller
        again = remembered(lambda: "k", compute)
        assert remembered(lambda: "none", lambda: None) is None and remembered(lambda: "none", compute) is None
    assert len(calls) == 3 and again is not None and again.tolist() == [0.0, 1.0, 2.0] and set(memo) == {"k", "none"}


@pytest.mark.parametrize(("granularity", "axis"), [("channel", 0), ("channel", 3), ("tensor", None)])
def test_quantized_weights_are_remembered_as_computed_fresh(granularity: str, axis: int | None) -> None:
    """Inside `remembering` each weight's scales, nearest codes and SQNR are computed once and handed out
    read-only, equal to what a run without the block computes (a floor changes the key: other codes)."""
    values = np.random.default_rng(3).normal(size=(8, 3, 3, 5)).astype(np.float32)
    fresh = quantize_weight(values, 8, granularity, axis, "mse", positive=True)
    memo: dict = {}
    with remembering(memo):
        first = quantize_weight(values, 8, granularity, axis, "mse", positive=True)
        kept = len(memo)
        again = quantize_weight(values, 8, granularity, axis, "mse", positive=True)
        floored = quantize_weight(values, 8, granularity, axis, "mse", positive=True, floor=np.float32(0.05))
    assert len(memo) > kept  # the floored scales are another key
    for q in (first, again):
        assert np.array_equal(q.codes, fresh.codes) and np.array_equal(q.scales, fresh.scales)
        assert q.sqnr_db == fresh.sqnr_db
        with pytest.raises(ValueError, match="read-only"):
            q.codes[...] = 0
    assert np.all(floored.scales >= np.float32(0.05)) and not np.array_equal(floored.codes, fresh.codes)


def test_digest_is_the_bytes_hash_and_is_remembered_only_for_memory_no_one_can_write() -> None:
    def sha(a: np.ndarray) -> bytes:
        return hashlib.sha256(np.ascontiguousarray(a)).digest()

    frozen = np.frombuffer(np.arange(12, dtype=np.float32).tobytes(), np.float32).reshape(3, 4)
    writable = np.arange(12, dtype=np.float32).reshape(3, 4)
    guarded = writable.view()
    guarded.flags.writeable = False  # read-only, but its owner is not
    memo: dict = {}
    with remembering(memo):
        for a in (frozen, frozen.T, frozen[1:], writable, guarded):
            assert digest(a) == sha(a)
        remembered_views = {k for k in memo if k[0] == "digest"}
        assert len(remembered_views) == 3 and immutable(frozen.T) and not immutable(guarded)
        writable[0, 0] = guarded[0, 0] + 1  # the unremembered ones see the edit
        assert digest(guarded) == sha(guarded) and digest(writable) == sha(writable)
        assert digest(frozen.T) == sha(frozen.T) and len(memo) == 3  # a view of the same memory: remembered
    assert digest(frozen) == sha(frozen) and len(memo) == 3  # outside the block: computed, not kept


@pytest.mark.slow  # reads a MediaPipe model (engine.zoo)
def test_remembered_decoders_fold_each_copy_as_a_fresh_fold_does() -> None:
    """The accuracy search folds copies of one model inside `remembering`: float16 and sparse (DENSIFY) decoders
    come from the memo from the second copy on, and every copy writes the bytes a fold without it writes."""
    source = read_model(mediapipe_model("pose_detection"))
    assert {"DENSIFY", "DEQUANTIZE"} <= {op.name for op in source.main.operators}
    expected = bytes(model_to_bytes(fold_constant_decoders(copy.deepcopy(source))[0]))
    memo: dict = {}
    with remembering(memo):
        first, folded = fold_constant_decoders(copy.deepcopy(source))
        decoded = [k for k in memo if k[0] == "decoded"]
        assert len(decoded) == len(folded)
        for t in first.main.tensors:
            if t.is_constant and np.asarray(t.data).dtype == np.float32:
                with pytest.raises(ValueError, match="read-only"):
                    np.asarray(t.data)[...] = 0.0  # a pass editing its copy in place fails loudly
        second = fold_constant_decoders(copy.deepcopy(source))[0]
    assert [k for k in memo if k[0] == "decoded"] == decoded and bytes(model_to_bytes(second)) == expected


def test_fusion_needs_a_fusable_producer_read_by_the_activation_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", (1, 6, 6, 3))
    conv = b.conv2d(x, rng.normal(size=(4, 3, 3, 3)).astype(np.float32))
    relu = b.op("RELU", [conv], [conv.shape])[0]  # fused: the conv's only reader
    shared = b.conv2d(relu, rng.normal(size=(4, 3, 3, 4)).astype(np.float32))
    kept = b.op("RELU6", [shared], [shared.shape])[0]  # not fused: the conv output is also read by the ADD
    b.output(b.add(kept, shared), "y")
    model, fused = fuse_activations(b.build())
    assert fused == 1
    assert [op.name for op in model.main.operators] == ["CONV_2D", "CONV_2D", "RELU6", "ADD"]
    assert model.main.operators[0].builtin_options.fields["fused_activation_function"] == 1  # RELU
    write_model(model, tmp_path / "fused.tflite")
    assert read_model(tmp_path / "fused.tflite").main.operators[0].outputs[0].name == relu.name
