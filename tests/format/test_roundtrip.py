"""The lossless guarantee: read -> write -> read gives the same model, field for field, and LiteRT agrees (in both
runtimes, ``tests/runtimes.py``; intermediates with the builtin kernels, which alone keep them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tflite

import engine
from engine import (
    Buffer,
    DimensionMetadata,
    ExternalBuffer,
    ExternalBufferGroup,
    Metadata,
    Model,
    Operator,
    QuantizationParams,
    SignatureDef,
    SparsityParams,
    Subgraph,
    Table,
    Tensor,
    TensorMap,
    VariantSubType,
    model_to_bytes,
    read_model,
    structural_diff,
    write_model,
)
from engine.format.flatbuf import decode, encode
from engine.format.ir import TENSOR_TYPES, OperatorCode
from engine.format.schema import TABLES
from engine.runtime.validate import validate
from engine.zoo import INPUT_RANGES, photo_input
from tests.runtimes import RUNTIMES, run_model
from tests.tflite_dump import dump


def test_all_fourteen_models_round_trip_every_field(mediapipe: dict[str, Path]) -> None:
    assert len(mediapipe) == 14
    for name, path in mediapipe.items():
        original = read_model(path)
        written = model_to_bytes(original)
        assert structural_diff(original, read_model(written)) == [], name
        # Independently of the engine's own reader: the tflite package sees the same fields and values.
        assert dump(path.read_bytes()) == dump(written), name


def test_dump_sees_a_changed_field(mediapipe: dict[str, Path]) -> None:
    """The independent comparison above can fail: a one-field edit shows up in it."""
    path = mediapipe["hand_recrop"]
    model = read_model(path)
    conv = next(op for op in model.main.operators if op.name == "CONV_2D")
    conv.builtin_options = Table("Conv2DOptions", {**conv.builtin_options.fields, "stride_w": 3})
    assert dump(path.read_bytes()) != dump(model_to_bytes(model))
    assert structural_diff(read_model(path), model) != []


def _photo_feed(name: str, path: Path) -> np.ndarray:
    shape = read_model(path).main.inputs[0].shape
    return photo_input(shape, np.float32, value_range=INPUT_RANGES[name])


@pytest.mark.parametrize("external", [False, True], ids=["inline", "offset-size"])
def test_litert_outputs_bit_identical_on_real_photos(runnable: dict[str, Path], tmp_path: Path, external: bool) -> None:
    assert len(runnable) == 11
    for name, path in runnable.items():
        target = tmp_path / f"{name}.tflite"
        write_model(read_model(path), target, external_buffers=external)
        feed = _photo_feed(name, path)
        report = validate(path, target, feed)  # builtin kernels: outputs and every intermediate
        assert report.outputs and all(o.bit_identical for o in report.outputs), name
        assert report.intermediates, name
        assert all(t.sqnr_db == float("inf") for t in report.intermediates), name
        _assert_same_outputs(path, target, feed)


def _assert_same_outputs(source: Path | bytes, target: Path | bytes, feed: np.ndarray) -> None:
    """Bit-identical outputs in both runtimes."""
    for runtime in RUNTIMES:
        before, after = run_model(source, feed, runtime), run_model(target, feed, runtime)
        assert list(before) == list(after) and all(np.array_equal(before[k], after[k]) for k in before), runtime


def test_writer_is_deterministic_and_idempotent(mediapipe: dict[str, Path]) -> None:
    path = mediapipe["pose_detection"]
    once = model_to_bytes(read_model(path))
    assert model_to_bytes(read_model(path)) == once
    assert model_to_bytes(read_model(once)) == once


def test_equal_small_vectors_are_written_once(mediapipe: dict[str, Path]) -> None:
    """The writer points every table holding an equal small vector (here each per-channel weight's zero points,
    all zeros, 8 bytes a channel) at one copy: the same model, read back field for field, smaller, a fixed point
    of the writer, and computing the same in both runtimes as the layout with each vector on its own."""
    model = engine.compress(mediapipe["hand_landmark_lite"], quantize="weight-int8")[0]
    shared, separate = model_to_bytes(model), model_to_bytes(model, share_equal_vectors=False)
    scales = [t.quantization.scale for t in model.main.tensors if t.quantization is not None]
    channels = sum(scale.size for scale in scales if scale is not None and scale.size > 1)
    assert channels > 8000
    assert len(separate) - len(shared) > 6 * channels  # of 8 bytes a channel: one vector per channel count left
    assert structural_diff(read_model(shared), read_model(separate)) == []
    assert model_to_bytes(read_model(shared)) == shared
    assert model_to_bytes(read_model(shared), share_equal_vectors=False) == separate
    feed = photo_input(model.main.inputs[0].shape, "float32", 0, value_range=INPUT_RANGES["hand_landmark_lite"])
    _assert_same_outputs(separate, shared, feed)


def test_buffer_data_is_16_byte_aligned(mediapipe: dict[str, Path]) -> None:
    for external in (False, True):
        data = model_to_bytes(read_model(mediapipe["palm_detection_lite"]), external_buffers=external)
        model = tflite.Model.GetRootAs(data, 0)
        checked = 0
        for i in range(1, model.BuffersLength()):
            buf = model.Buffers(i)
            if external and buf.Size():
                assert buf.Offset() % 16 == 0
                checked += 1
            elif not buf.DataIsNone() and buf.DataLength():
                start = buf._tab.Vector(buf._tab.Offset(4))
                assert start % 16 == 0
                checked += 1
        assert checked > 50


def test_unreferenced_buffers_are_dropped_and_buffer_zero_stays_empty(mediapipe: dict[str, Path]) -> None:
    data = mediapipe["hand_recrop"].read_bytes()
    tree = decode(data)
    before = len(tree["buffers"])
    tree["buffers"].append({"data": np.arange(64, dtype=np.uint8)})
    padded = bytes(encode(tree))
    written = model_to_bytes(read_model(padded))
    after = tflite.Model.GetRootAs(written, 0)
    assert after.BuffersLength() <= before
    assert after.Buffers(0).DataLength() == 0
    assert structural_diff(read_model(padded), read_model(written)) == []


def _two_layer_model(shared: bool) -> Model:
    weights = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    model = Model()
    fc = model.opcode("FULLY_CONNECTED")
    x = Tensor("x", (1, 64))
    w1, w2 = Tensor("w1"), Tensor("w2")
    w1.data = weights
    w2.data = weights
    if shared:
        w2.buffer = w1.buffer
    h, y = Tensor("h", (1, 64)), Tensor("y", (1, 64))
    ops = [
        Operator(fc, [x, w1, None], [h], Table("FullyConnectedOptions")),
        Operator(fc, [h, w2, None], [y], Table("FullyConnectedOptions")),
    ]
    model.subgraphs.append(Subgraph([x, w1, w2, h, y], [x], [y], ops, "main"))
    return model


def test_identical_constant_buffers_can_be_shared() -> None:
    model = _two_layer_model(shared=False)
    plain = model_to_bytes(model)
    shared = model_to_bytes(model, share_identical_buffers=True)
    assert len(plain) - len(shared) >= 64 * 64 * 4
    assert tflite.Model.GetRootAs(shared, 0).BuffersLength() == tflite.Model.GetRootAs(plain, 0).BuffersLength() - 1
    feed = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    _assert_same_outputs(plain, shared, feed)
    # Same fields and contents; only which tensors point at one buffer differs.
    assert dump(plain) == dump(shared)
    assert structural_diff(read_model(plain), read_model(shared)) == [
        "model.buffers: length 3 != 2",
        "model.subgraphs[0].tensors[2].buffer: 2 != 1",
    ]


def _every_field_model() -> Model:
    """A model that sets every table and field the schema has outside the operator options."""
    model = Model(version=3, description="every field")
    model.subgraphs.append(Subgraph(name="main", debug_metadata_index=2))
    sg = model.main
    quant = QuantizationParams(
        scale=np.array([0.5, 0.25], np.float32),
        zero_point=np.array([0, 3], np.int64),
        min=np.array([-1.0], np.float32),
        max=np.array([1.0], np.float32),
        quantized_dimension=1,
        details=Table("CustomQuantization", {"custom": np.array([7, 8, 9], np.uint8)}),
    )
    sparsity = SparsityParams(
        traversal_order=np.array([0, 1], np.int32),
        block_map=np.array([], np.int32),
        dim_metadata=[
            DimensionMetadata(format=0, dense_size=2),
            DimensionMetadata(
                format=1,
                array_segments=Table("Uint16Vector", {"values": np.array([0, 1, 2], np.uint16)}),
                array_indices=Table("Uint8Vector", {"values": np.array([0, 1], np.uint8)}),
            ),
        ],
    )
    x = Tensor("x", (1, 2), shape_signature=(-1, 2), has_rank=True)
    w = Tensor("w", (2, 2), TENSOR_TYPES["INT8"], Buffer.of(np.array([1, 2], np.int8)), quant, sparsity=sparsity)
    state = Tensor("state", (1, 2), is_variable=True, buffer=Buffer())
    handle = Tensor(
        "handle",
        (),
        TENSOR_TYPES["VARIANT"],
        variant_tensors=[VariantSubType((2, 3), TENSOR_TYPES["INT32"], True), VariantSubType()],
    )
    y = Tensor("y", (1, 2))
    scratch = Tensor("scratch", (1, 2))
    # Blockwise int4: the scales are a tensor the details refer to (by index in the file, by reference here).
    scales = Tensor("w4_scales", (2, 1), TENSOR_TYPES["FLOAT16"], Buffer.of(np.array([0.5, 2.0], np.float16)))
    block_shape = np.array([1, 32], np.int32)
    blockwise = Table("BlockwiseQuantization", {"scales": scales, "block_size": 32, "block_shape": block_shape})
    w4 = Tensor("w4", (2, 32), TENSOR_TYPES["INT4"], Buffer.of(np.arange(32, dtype=np.uint8)))
    w4.quantization = QuantizationParams(details=blockwise)
    group = ExternalBufferGroup("weights.bin")
    model.external_buffer_groups = [group]
    model.external_buffers = [ExternalBuffer(7, group, offset=64, length=8, packing="unpacked")]
    outside = Tensor("outside", (2,), external_buffer=model.external_buffers[0])
    sg.tensors = [x, w, state, handle, y, scratch, w4, scales, outside]
    sg.inputs, sg.outputs = [x], [y]
    custom = model.opcode("MyCustomOp", version=2)
    sg.operators = [
        Operator(
            custom,
            [x, w, None, state],
            [y],
            custom_options=np.arange(10, dtype=np.uint8),
            custom_options_format=0,
            mutating_variable_inputs=np.array([False, False, False, True]),
            intermediates=[scratch],
            debug_metadata_index=5,
        ),
        Operator(
            model.opcode("STABLEHLO_CONCATENATE"),
            [y],
            [y],
            builtin_options_2=Table("StablehloConcatenateOptions", {"dimension": 1}),
        ),
        Operator(model.opcode("ADD"), [x, x], [y], Table("AddOptions", {"fused_activation_function": 1})),
    ]
    assert model.operator_codes[1].deprecated_builtin_code == 127 and model.operator_codes[1].builtin_code > 127
    model.operator_codes.append(OperatorCode.builtin("CONV_2D", 3))  # listed but unused: kept
    meta = Buffer.of(np.frombuffer(b"1.14.0", np.uint8))
    model.metadata = [Metadata("min_runtime_version", meta)]
    model.metadata_buffer = [meta]
    model.signature_defs = [SignatureDef(sg, [TensorMap("in", x)], [TensorMap("out", y)], "serving_default")]
    return model


def test_every_schema_field_survives(tmp_path: Path) -> None:
    model = _every_field_model()
    for external in (False, True):
        data = model_to_bytes(model, external_buffers=external)
        again = read_model(data)
        assert structural_diff(model, again) == []
        assert dump(data) == dump(model_to_bytes(again))
        op = again.main.operators[0]
        assert op.custom_options.tobytes() == bytes(range(10))
        assert again.main.tensors[1].quantization.details.fields["custom"].tolist() == [7, 8, 9]
        assert again.signature_defs[0].inputs[0].tensor is again.main.tensors[0]
        assert again.main.operators[1].opcode.name == "STABLEHLO_CONCATENATE"
        details = again.main.tensors[6].quantization.details.fields
        assert details["scales"] is again.main.tensors[7] and details["zero_points"] is None
        assert again.main.tensors[8].external_buffer is again.external_buffers[0]
        assert again.external_buffers[0].group is again.external_buffer_groups[0]


def test_writer_covers_every_field_of_the_core_tables() -> None:
    """A schema field added to a core table must be handled by reader and writer, not dropped."""
    from engine.format.writer import model_tree

    tree = model_tree(_every_field_model())
    sg = tree["subgraphs"][0]
    samples = {
        "Model": tree,
        "SubGraph": sg,
        "Tensor": sg["tensors"][1],
        "Operator": sg["operators"][0],
        "OperatorCode": tree["operator_codes"][0],
        "QuantizationParameters": sg["tensors"][1]["quantization"],
        "SparsityParameters": sg["tensors"][1]["sparsity"],
        "DimensionMetadata": sg["tensors"][1]["sparsity"]["dim_metadata"][1],
        "SignatureDef": tree["signature_defs"][0],
        "TensorMap": tree["signature_defs"][0]["inputs"][0],
        "Metadata": tree["metadata"][0],
        "VariantSubType": sg["tensors"][3]["variant_tensors"][0],
        "ExternalBufferGroup": tree["external_buffer_groups"][0],
        "ExternalBuffer": tree["external_buffers"][0],
    }
    for table, sample in samples.items():
        fields = {f["name"] for f in TABLES[table]["fields"] if f["kind"] != "union_type"}
        assert fields == set(sample), table


def test_source_file_is_never_modified(mediapipe: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "model.tflite"
    source.write_bytes(mediapipe["face_landmark"].read_bytes())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    model = read_model(source)
    with pytest.raises(ValueError, match="read-only"):
        model.main.tensors[next(i for i, t in enumerate(model.main.tensors) if t.is_constant)].buffer.data[0] = 1
    write_model(model, tmp_path / "out.tflite")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    # Writing over the source itself is safe: the model still reads its data from the old file's mapping.
    write_model(model, source)
    assert structural_diff(read_model(mediapipe["face_landmark"]), read_model(source)) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_stale_metadata_buffer_indices_read_as_no_buffer() -> None:
    """The deprecated ``metadata_buffer`` list (int32, ignored by the runtime) may point past the buffers or be
    negative (a fuzzed real model found the second): both read as no buffer, never an IndexError."""
    tree = decode(model_to_bytes(_every_field_model()))
    buffers = len(tree["buffers"])
    tree["metadata_buffer"] = np.array([-109258, buffers + 5, 1], np.int32)
    model = read_model(encode(tree))
    assert model.metadata_buffer[:2] == [None, None] and model.metadata_buffer[2] is not None
