"""Editing the graph: the helpers passes will use to find, add, rewire and remove tensors and operators."""

from __future__ import annotations

import numpy as np
import pytest

from engine import (
    Buffer,
    EngineError,
    ExternalBuffer,
    ExternalBufferGroup,
    Operator,
    QuantizationParams,
    Table,
    Tensor,
    model_to_bytes,
    read_model,
    structural_diff,
)
from engine.format.builder import GraphBuilder
from engine.format.ir import TENSOR_TYPES, OperatorCode, all_tensors
from engine.format.writer import _FLATBUFFER_LIMIT, _plan
from tests.runtimes import BOTH_RUNTIMES, run_model


def _mlp() -> tuple:
    b = GraphBuilder()
    x = b.input("x", (1, 8))
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    h = b.fully_connected(x, w, np.zeros(8, np.float32))
    y = b.relu(h)
    b.output(y, "y")
    return b.build(), x, h, y


def test_producers_and_consumers() -> None:
    model, x, h, y = _mlp()
    sg = model.main
    fc, relu = sg.operators
    assert sg.producer_of(h) is fc and sg.producer_of(x) is None
    assert sg.consumers_of(h) == [relu] and sg.consumers_of(y) == []
    assert sg.producers()[id(y)] is relu


@BOTH_RUNTIMES
def test_insert_rewire_and_remove_an_operator_runs_in_litert(runtime: str) -> None:
    """Put a float16 weight behind a DEQUANTIZE (what the float16 pass will do) and check the interpreter."""
    model, _, h, y = _mlp()
    sg = model.main
    fc = sg.operators[0]
    weight = fc.inputs[1]
    half = Tensor("w_fp16")
    half.data = weight.data.astype(np.float16)
    dequantized = Tensor("w_dequantized", weight.shape, TENSOR_TYPES["FLOAT32"])
    sg.insert_operator(0, Operator(model.opcode("DEQUANTIZE"), [half], [dequantized]))
    fc.inputs[1] = dequantized
    assert sg.remove_unused_tensors() == 1  # the float32 weight
    assert half in sg.tensors and dequantized in sg.tensors and weight not in sg.tensors
    feed = {"x": np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 8)}
    out = run_model(model_to_bytes(model), feed, runtime)["y"]
    expected = np.maximum(feed["x"] @ weight.data.astype(np.float16).astype(np.float32).T, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)

    sg.replace_uses(y, h)
    sg.remove_operator(sg.operators[-1])
    assert sg.outputs == [h] and [op.name for op in sg.operators] == ["DEQUANTIZE", "FULLY_CONNECTED"]
    again = read_model(model_to_bytes(model))
    assert structural_diff(model, again) == []


def test_writer_adds_what_a_pass_forgot_to_register() -> None:
    """Tensors used by an operator but missing from the subgraph list, and unlisted opcodes, are written."""
    model, _, h, _ = _mlp()
    sg = model.main
    extra = Tensor("y2", (1, 8))
    sg.operators.append(Operator(OperatorCode.builtin("RELU6"), [h], [extra]))
    sg.outputs.append(extra)
    assert extra not in sg.tensors and extra in all_tensors(sg)
    again = read_model(model_to_bytes(model))
    assert [t.name for t in again.main.outputs] == ["y", "y2"]
    assert [c.name for c in again.operator_codes][-1] == "RELU6"


def test_tensor_data_views_and_errors() -> None:
    t = Tensor("w", (2, 3), TENSOR_TYPES["FLOAT32"], Buffer.of(np.arange(6, dtype=np.float32)))
    assert t.data.shape == (2, 3) and t.data[1, 2] == 5
    assert np.shares_memory(t.data, t.buffer.data)
    t.shape = (4, 3)
    with pytest.raises(EngineError, match="shape"):
        _ = t.data
    packed = {"INT4": "2 values per byte", "UINT4": "2 values per byte", "INT2": "4 values per byte"}
    for type_name, message in packed.items():
        sub_byte = Tensor("q", (4,), TENSOR_TYPES[type_name], Buffer.of(np.array([0x21, 0x43], np.uint8)))
        with pytest.raises(EngineError, match=f"{type_name} data is packed {message}"):
            _ = sub_byte.data
    outside = Tensor("outside", (4,), external_buffer=ExternalBuffer(1, ExternalBufferGroup("weights.bin")))
    assert outside.is_constant
    with pytest.raises(EngineError, match=r"outside the model file \(in 'weights.bin'\)"):
        _ = outside.data
    assert Tensor("activation", (1,)).data is None


def test_tensors_quantization_details_refer_to_are_kept() -> None:
    """Blockwise scales are referred to by tensor index in the file; passes must not lose or misnumber them."""
    model, *_ = _mlp()
    weight = model.main.operators[0].inputs[1]
    scales = Tensor("w_scales", (8, 1), TENSOR_TYPES["FLOAT16"], Buffer.of(np.ones(8, np.float16)))
    details = Table("BlockwiseQuantization", {"scales": scales, "block_size": 8})
    weight.type, weight.buffer = TENSOR_TYPES["INT4"], Buffer.of(np.zeros(32, np.uint8))
    weight.quantization = QuantizationParams(details=details)
    sg = model.main
    assert scales not in sg.tensors and all_tensors(sg)[-1] is scales  # unlisted: the writer adds it
    again = read_model(model_to_bytes(model))
    details = next(t for t in again.main.tensors if t.name == weight.name).quantization.details
    assert details.fields["scales"].name == "w_scales" and details.fields["zero_points"] is None
    sg.tensors.append(scales)
    sg.tensors.insert(0, Tensor("unused", (1,)))  # shifts every index
    assert sg.remove_unused_tensors() == 1 and scales in sg.tensors
    again = read_model(model_to_bytes(model))
    assert structural_diff(model, again) == []
    details = next(t for t in again.main.tensors if t.name == weight.name).quantization.details
    assert details.fields["scales"].name == "w_scales"
    weight.quantization.details.fields["scales"] = 3  # an index is not a reference: refused, not misnumbered
    with pytest.raises(EngineError, match="scales must be a Tensor or None"):
        model_to_bytes(model)


def test_writer_refuses_ambiguous_external_buffers() -> None:
    model, *_ = _mlp()
    group = ExternalBufferGroup("weights.bin")
    model.main.tensors.append(Tensor("a", (2,), external_buffer=ExternalBuffer(0, group)))
    with pytest.raises(EngineError, match="id 0 means 'none'"):
        model_to_bytes(model)
    model.main.tensors[-1].external_buffer = ExternalBuffer(3, group)
    model.main.tensors.append(Tensor("b", (2,), external_buffer=ExternalBuffer(3, group)))
    with pytest.raises(EngineError, match="ids must be unique"):
        model_to_bytes(model)
    model.main.tensors[-1].external_buffer = ExternalBuffer(4, group, offset=8, length=8)
    again = read_model(model_to_bytes(model))  # buffers and group the model did not list are added
    assert [b.id for b in again.external_buffers] == [3, 4]
    assert [g.name for g in again.external_buffer_groups] == ["weights.bin"]


def test_offset_size_form_is_chosen_past_two_gigabytes() -> None:
    model, *_ = _mlp()
    assert not _plan(model, False, None).external
    huge = Tensor("huge", (2**31,), TENSOR_TYPES["UINT8"])
    huge.buffer = Buffer(np.broadcast_to(np.uint8(0), (_FLATBUFFER_LIMIT + 1,)))  # no memory behind it
    model.main.tensors.append(huge)
    assert _plan(model, False, None).external
    assert not _plan(model, False, False).external
