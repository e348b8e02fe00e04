"""Models as litert-quantizer writes them (today's schema: INT4/INT2 weights, blockwise scales) round-trip.

A float model is built here, quantized at test time in every form the quantizer offers for it, and each
result must read -> write -> read with every field equal, dump equal through the ``tflite`` package, and give
bit-identical LiteRT outputs before and after in both runtimes (``tests/runtimes.py``; intermediates with the
builtin kernels, which alone keep them), or be refused alike where LiteRT refuses the quantizer's form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from litert_quantizer import recipe
from litert_quantizer.qtyping import TFLOperationName
from litert_quantizer.quantizer import Quantizer

from engine import EngineError, Model, SignatureDef, TensorMap, read_model, structural_diff, write_model
from engine.format.builder import GraphBuilder
from engine.runtime.validate import validate
from tests.runtimes import RUNTIMES, Refused, run_model
from tests.tflite_dump import dump


@dataclass(frozen=True)
class Form:
    """One quantizer recipe and what it is expected to write."""

    recipe: Callable[[], list]
    weight_type: str
    weight_only: bool = False  # weights go through a DEQUANTIZE op; otherwise the hybrid kernels read them
    blockwise: bool = False
    ops: tuple[str, ...] = ("CONV_2D", "FULLY_CONNECTED")  # whose weights get quantized; the others stay float
    xnnpack: bool = True  # whether LiteRT 2.3.0's default runtime (XNNPACK) accepts the model


FC = ("FULLY_CONNECTED",)
FORMS = {
    "weight_only_int8": Form(recipe.weight_only_wi8_afp32, "INT8", weight_only=True),
    "weight_only_int4": Form(recipe.weight_only_wi4_afp32, "INT4", weight_only=True),
    "dynamic_int8": Form(recipe.dynamic_wi8_afp32, "INT8"),
    "dynamic_int4": Form(recipe.dynamic_wi4_afp32, "INT4"),
    # The quantizer's policy allows blockwise for FULLY_CONNECTED (and EMBEDDING_LOOKUP) only.
    "dynamic_int4_blockwise_32": Form(recipe.dynamic_wi4b32_afp32, "INT4", blockwise=True, ops=FC),
    # INT2: on FULLY_CONNECTED only, as LiteRT 2.3.0's builtin hybrid CONV_2D turns INT2 weights into NaNs.
    "dynamic_int2": Form(
        partial(recipe.dynamic_wi2c_afp32, operation_name=TFLOperationName.FULLY_CONNECTED), "INT2", ops=FC
    ),
    "dynamic_int2_blockwise_32": Form(recipe.dynamic_wi2b32_afp32, "INT2", blockwise=True, ops=FC, xnnpack=False),
}
BITS = {"INT8": 8, "INT4": 4, "INT2": 2}
BLOCK = 32


def _float_model() -> Model:
    """Two CONV_2D and two FULLY_CONNECTED layers, large enough to be quantized, with the signature it needs."""
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))).astype(np.float32)

    b = GraphBuilder("main")
    x = b.input("x", (1, 16, 16, 8))
    h = b.conv2d(x, weights(32, 3, 3, 8), weights(32), activation="RELU")
    h = b.conv2d(h, weights(32, 3, 3, 32), stride=2, activation="RELU")
    h = b.reshape(h, (1, -1))
    h = b.fully_connected(h, weights(128, 2048), weights(128), activation="RELU")
    y = b.output(b.fully_connected(h, weights(64, 128)), "y")
    model = b.build()
    model.signature_defs = [SignatureDef(model.main, [TensorMap("x", x)], [TensorMap("y", y)], "serving_default")]
    return model


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quantized")
    write_model(_float_model(), folder / "float.tflite")
    paths = {}
    for name, form in FORMS.items():
        result = Quantizer(folder / "float.tflite", form.recipe()).quantize(enable_progress_report=False)
        paths[name] = folder / f"{name}.tflite"
        result.export_model(paths[name])
    return paths


def _feed() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 16, 16, 8)).astype(np.float32)


@pytest.mark.parametrize("name", FORMS)
def test_quantizer_output_is_what_the_form_promises(quantized: dict[str, Path], name: str) -> None:
    """Pins what each form looks like, so the round trip below is known to cover it."""
    form = FORMS[name]
    sg = read_model(quantized[name]).main
    layers = [op for op in sg.operators if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(layers) == 4
    for op in layers:
        weight = op.inputs[1]
        if form.weight_only and op.name in form.ops:
            dequantize = sg.producer_of(weight)
            assert dequantize is not None and dequantize.name == "DEQUANTIZE"
            weight = dequantize.inputs[0]
        if op.name not in form.ops:
            assert weight.type_name == "FLOAT32"
            continue
        assert weight.type_name == form.weight_type
        assert weight.buffer.data.size == math.prod(weight.shape) * BITS[form.weight_type] // 8
        q = weight.quantization
        if form.blockwise:
            assert q.scale is None and q.zero_point is None and q.details.type == "BlockwiseQuantization"
            fields = q.details.fields
            assert fields["block_size"] == BLOCK and fields["zero_points"] is None
            scales = fields["scales"]  # a tensor only the details refer to
            assert scales.type_name == "FLOAT16" and scales.shape == (weight.shape[0], weight.shape[1] // BLOCK)
            assert sg.consumers_of(scales) == [] and scales in sg.tensors
        else:
            assert q.details is None and q.quantized_dimension == 0
            assert q.scale.shape == q.zero_point.shape == (weight.shape[0],) and not q.zero_point.any()
        if form.weight_type != "INT8":
            with pytest.raises(EngineError, match="packed"):
                _ = weight.data


def _outputs(path: Path, runtime: str) -> dict[str, np.ndarray] | str:
    """The outputs on ``_feed()``, or the stage at which the runtime refuses the model."""
    try:
        return run_model(path, {"x": _feed()}, runtime)
    except Refused as exc:
        return exc.stage


@pytest.mark.parametrize("name", FORMS)
def test_quantized_model_round_trips_bit_identically(quantized: dict[str, Path], tmp_path: Path, name: str) -> None:
    source = quantized[name]
    target = tmp_path / "rewritten.tflite"
    write_model(read_model(source), target)
    assert structural_diff(read_model(source), read_model(target)) == []
    # The tflite package (older schema) sees the same; blockwise details are a union member it cannot name.
    assert dump(source.read_bytes()) == dump(target.read_bytes())
    report = validate(source, target, {"x": _feed()})  # builtin kernels: outputs and every intermediate
    assert report.outputs and all(o.bit_identical for o in report.outputs)
    assert report.intermediates and all(t.sqnr_db == float("inf") for t in report.intermediates)
    for runtime in RUNTIMES:
        before, after = _outputs(source, runtime), _outputs(target, runtime)
        if runtime == "default" and not FORMS[name].xnnpack:
            assert before == after == "prepare"
        else:
            assert isinstance(before, dict) and isinstance(after, dict), (runtime, before, after)
            assert all(np.array_equal(before[k], after[k]) for k in before), runtime


def test_quantizer_output_with_stale_metadata_buffer_indices_reads(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    """On MediaPipe models the quantizer changes nothing but leaves the deprecated metadata_buffer list pointing
    past the buffers it rewrote; LiteRT ignores that list, so the engine reads such a file as no buffer there."""
    source = mediapipe["face_detection_full_range_sparse"]
    out = tmp_path / "quantizer.tflite"
    Quantizer(source, recipe.weight_only_wi8_afp32()).quantize(enable_progress_report=False).export_model(out)
    model = read_model(out)
    assert model.metadata_buffer is not None and None in model.metadata_buffer
    rewritten = tmp_path / "rewritten.tflite"
    write_model(model, rewritten)
    assert structural_diff(model, read_model(rewritten)) == []
    feed = np.random.default_rng(0).uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    for runtime in RUNTIMES:
        before, after = run_model(out, feed, runtime), run_model(rewritten, feed, runtime)
        assert before and all(np.array_equal(before[k], after[k]) for k in before), runtime
