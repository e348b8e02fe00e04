"""Bad input gets one clear EngineError (never another exception, a hang or a huge allocation)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import EngineError, model_to_bytes, read_model, structural_diff
from engine.format.flatbuf import decode, encode
from engine.format.ir import Table
from engine.format.schema import TABLES
from engine.zoo import mediapipe_model

SMALL_MODEL = "hand_recrop"


@pytest.fixture(scope="module")
def small() -> bytes:
    return mediapipe_model(SMALL_MODEL).read_bytes()


def _error(data: bytes) -> str:
    with pytest.raises(EngineError) as info:
        read_model(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_not_a_flatbuffer() -> None:
    assert "not a TFLite file" in _error(b"hello")
    assert "file identifier" in _error(b"\x10\x00\x00\x00PK\x03\x04" + bytes(64))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.tflite").write_bytes(b"")
    with pytest.raises(EngineError, match="empty"):
        read_model(tmp_path / "empty.tflite")
    with pytest.raises(EngineError, match="cannot read"):
        read_model(tmp_path / "missing.tflite")
    with pytest.raises(EngineError, match="cannot read"):
        read_model(tmp_path)


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_truncated(small: bytes) -> None:
    for size in (8, 100, len(small) // 2, len(small) - 1):
        assert "corrupt TFLite file" in _error(small[:size]) or "out of range" in _error(small[:size])


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_root_offset_out_of_range(small: bytes) -> None:
    assert "run past the end" in _error(struct.pack("<I", 2**31) + small[4:])


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_absurd_vector_length_is_refused_without_allocating(small: bytes) -> None:
    tree = decode(small)
    tree["description"] = "x" * 5
    data = bytearray(encode(tree))
    at = bytes(data).index(b"xxxxx") - 4
    data[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    assert "run past the end" in _error(bytes(data))


def test_shared_offsets_cannot_blow_up_the_work() -> None:
    """20k subgraph entries all pointing at one subgraph whose 20k tensor entries point at one tensor:
    a 160 KB file that would mean 400 million tables; refused after work bounded by the file's size."""
    count = 20_000
    b = flatbuffers.Builder(0)
    b.StartObject(10)
    tensor = b.EndObject()
    b.StartVector(4, count, 4)
    for _ in range(count):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, tensors, 0)
    subgraph = b.EndObject()
    b.StartVector(4, count, 4)
    for _ in range(count):
        b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    assert "more tables than the file could hold" in _error(bytes(b.Output()))


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_unknown_field_is_refused_not_dropped(small: bytes) -> None:
    """A field past the schema's last Model slot (a newer schema's) must not be silently ignored."""
    data = bytearray(small)
    root = struct.unpack_from("<I", data, 0)[0]
    vtable = root - struct.unpack_from("<i", data, root)[0]
    vt_size, table_size = struct.unpack_from("<HH", data, vtable)
    slots = list(struct.unpack_from(f"<{(vt_size - 4) // 2}H", data, vtable + 4))
    beyond = TABLES["Model"]["slots"]  # the first slot past the schema's Model table
    slots += [0] * (beyond - len(slots)) + [4]
    new_vtable = len(data)
    data += struct.pack(f"<HH{len(slots)}H", 4 + 2 * len(slots), table_size, *slots)
    struct.pack_into("<i", data, root, root - new_vtable)
    assert f"Model field #{beyond} is set but not in the supported schema" in _error(bytes(data))


def _lone_table(slot: int, table_size_extra: int = 0) -> bytes:
    """A file whose root is a one-field table with a uint8 1 in ``slot`` (its vtable claims ``table_size_extra``
    bytes fewer than the table holds when negative)."""
    b = flatbuffers.Builder(64)
    b.StartObject(slot + 1)
    b.PrependUint8Slot(slot, 1, 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=b"TFL3")
    data = bytearray(b.Output())
    if table_size_extra:
        at = struct.unpack_from("<I", data, 0)[0]
        vtable = at - struct.unpack_from("<i", data, at)[0]
        struct.pack_into("<H", data, vtable + 2, struct.unpack_from("<H", data, vtable + 2)[0] + table_size_extra)
    return bytes(data)


def test_a_deprecated_field_inside_the_schemas_numbering_is_refused_not_dropped() -> None:
    """ResizeBilinearOptions keeps slots 0 and 1 for deprecated fields: a value there is refused like one past
    the schema, though a newer slot (2, align_corners) reads."""
    assert decode(_lone_table(2), root="ResizeBilinearOptions")["align_corners"] is True
    for slot in (0, 1):
        with pytest.raises(EngineError, match=f"ResizeBilinearOptions field #{slot} is set but not in the supported"):
            decode(_lone_table(slot), root="ResizeBilinearOptions")


def test_a_field_past_its_tables_end_is_refused() -> None:
    with pytest.raises(EngineError, match="field #0 lies outside its table"):
        decode(_lone_table(0, table_size_extra=-4), root="AddOptions")


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_unknown_union_member_is_refused(small: bytes) -> None:
    marker = 0xEE
    assert f"member #{marker} is not in the supported schema" in _error(_patch_first_union_type(small, marker))


def _patch_first_union_type(data: bytes, value: int) -> bytes:
    """Set the builtin_options_type byte of the first operator that has builtin options."""
    from engine.format.flatbuf import _Decoder

    decoder = _Decoder(data)
    root = decoder.follow("root", 0)
    raw = bytearray(data)

    def field_pos(table: int, slot: int) -> int:
        vtable = table - struct.unpack_from("<i", raw, table)[0]
        vt_size = struct.unpack_from("<H", raw, vtable)[0]
        if 4 + 2 * slot >= vt_size:
            return 0
        offset = struct.unpack_from("<H", raw, vtable + 4 + 2 * slot)[0]
        return table + offset if offset else 0

    def deref(pos: int) -> int:
        return pos + struct.unpack_from("<I", raw, pos)[0]

    subgraphs = deref(field_pos(root, 2))
    subgraph = deref(subgraphs + 4)
    operators = deref(field_pos(subgraph, 3))
    for i in range(struct.unpack_from("<I", raw, operators)[0]):
        op = deref(operators + 4 + 4 * i)
        type_pos = field_pos(op, 3)
        if type_pos:
            raw[type_pos] = value
            return bytes(raw)
    raise AssertionError("no operator with builtin options")


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_bad_indices_name_the_operator(small: bytes) -> None:
    tree = decode(small)
    ops = tree["subgraphs"][0]["operators"]
    ops[3] = {**ops[3], "inputs": np.array([0, 99999], np.int32)}
    message = _error(bytes(encode(tree)))
    assert "operators[3]" in message and "tensor index 99999 is out of range" in message
    tree = decode(small)
    tree["subgraphs"][0]["tensors"][5] = {**tree["subgraphs"][0]["tensors"][5], "buffer": 123456}
    assert "buffer index 123456 is out of range" in _error(bytes(encode(tree)))


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_bad_blockwise_and_external_buffer_references(small: bytes) -> None:
    """Tensor indices in quantization details and external buffer ids and groups are checked like the rest."""
    tree = decode(small)
    tensors = tree["subgraphs"][0]["tensors"]
    details = ("BlockwiseQuantization", {"scales": len(tensors), "zero_points": -1, "block_size": 32})
    tensors[5] = {**tensors[5], "quantization": {"details": details}}
    message = _error(bytes(encode(tree)))
    assert "tensors[5]" in message
    assert f"BlockwiseQuantization.scales tensor index {len(tensors)} is out of range" in message

    tree = decode(small)
    tree["subgraphs"][0]["tensors"][5] = {**tree["subgraphs"][0]["tensors"][5], "external_buffer": 9}
    assert "external buffer id 9 is not listed" in _error(bytes(encode(tree)))
    tree["external_buffers"] = [{"id": 9, "group": 0}]
    assert "group index 0 is out of range (0 groups)" in _error(bytes(encode(tree)))
    tree["external_buffer_groups"] = [{"name": "weights.bin"}]
    tree["external_buffers"] = [{"id": 9}, {"id": 9}]
    assert "id 9 is used twice" in _error(bytes(encode(tree)))
    tree["external_buffers"] = [{"id": 9, "length": 4}]
    assert read_model(bytes(encode(tree))).main.tensors[5].external_buffer.length == 4


def test_builder_side_errors_are_engine_errors() -> None:
    with pytest.raises(EngineError, match="no field"):
        Table("Conv2DOptions", {"stride": 2})
    with pytest.raises(EngineError, match="not a table"):
        Table("NoSuchOptions")


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
@settings(max_examples=600, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_model_raises_only_engine_error(small: bytes, data: st.DataObject) -> None:
    """Random byte flips, overwrites, truncations and splices: the reader either reads or says why."""
    raw = bytearray(small)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "word", "truncate", "splice"]), label="kind")
        # Most of the structure lives in the first and last few KB (weights are in the middle).
        pos = data.draw(
            st.one_of(st.integers(0, min(4096, len(raw) - 1)), st.integers(max(0, len(raw) - 8192), len(raw) - 1)),
            label="pos",
        )
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "word" and pos + 4 <= len(raw):
            raw[pos : pos + 4] = struct.pack("<I", data.draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])))
        elif kind == "truncate":
            del raw[max(pos, 8) :]
        elif kind == "splice":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        if len(raw) < 16:
            break
    try:
        model = read_model(bytes(raw))
    except EngineError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # What reads must also write and read back the same (a mutation may land in weights or names).
    assert structural_diff(model, read_model(model_to_bytes(model))) == []


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_a_model_without_subgraphs_is_refused_when_read(small: bytes) -> None:
    """Found by the mutation test: LiteRT cannot load such a file, and it could not be written back."""
    tree = decode(small)
    tree["subgraphs"] = []
    with pytest.raises(EngineError, match="no subgraphs"):
        read_model(bytes(encode(tree)))


@pytest.mark.slow  # reads MediaPipe models (engine.zoo)
def test_api_errors_name_the_keyword_argument(tmp_path: Path) -> None:
    """Options given as keyword arguments are named that way (the command line names its flags, tests/api/test_cli.py);
    an option that would do nothing is refused before anything is written; "recipe:" only for a recipe."""
    import engine

    source, out = mediapipe_model(SMALL_MODEL), tmp_path / "out.tflite"
    cases = [
        ({"quantize": "int3"}, "unknown quantize= mode 'int3'"),
        ({"quantise": "weight-int8"}, "unknown option 'quantise='"),
        ({"quantize": "weight-int8", "observer": "mse"}, "observer= does nothing without quantize= int8 or int16x8"),
        ({"quantize": "weight-int8", "calibration": np.zeros((1, 1))}, "calibration= does nothing without quantize="),
        ({"quantize": "int8"}, "quantize= int8 needs calibration data: pass calibration= DATA"),
        (
            {"quantize": "int16x8", "io": "int8", "calibration": np.zeros((1, 1))},
            "io= int8 does not apply: int16x8 keeps a float interface",
        ),
        ({"cluster_storage": "gather"}, "cluster_storage= does nothing without cluster="),
        ({"quantize": "weight-int8", "cluster": 16, "cluster_storage": "gather"}, "cannot be quantized too"),
        ({"quantize": "weight-int8", "exclude": ["("]}, "exclude=: bad regular expression"),
    ]
    for options, message in cases:
        with pytest.raises(EngineError) as info:
            engine.compress(source, output=out, **options)
        assert message in str(info.value) and "recipe" not in str(info.value), str(info.value)
    with pytest.raises(EngineError, match=r"^recipe: observer does nothing without quantize int8"):
        engine.compress(source, {"quantize": "weight-int8", "observer": "mse"}, output=out)
    with pytest.raises(EngineError, match=r"^observer= does nothing"):  # the keyword over the recipe is named
        engine.compress(source, {"quantize": "weight-int8"}, output=out, observer="mse")
    assert not out.exists()


def test_validation_reports_overflowing_outputs_instead_of_crashing() -> None:
    """A candidate whose outputs overflow to inf against a finite reference: SQNR -inf, where it raised "math
    domain error" (log10 of a ratio that underflowed to 0)."""
    from engine.format.builder import GraphBuilder
    from engine.runtime.validate import validate

    def mean(scaled: bool) -> bytes:
        b = GraphBuilder()
        x = b.input("x", (1, 4))
        axis = b.constant(np.array([1], np.int32))
        b.output(b.op("MEAN", [b.mul(x, np.full((1, 4), 0.25, np.float32)) if scaled else x, axis], [(1,)])[0], "y")
        return model_to_bytes(b.build())

    data = np.full((1, 1, 4), 3e38, np.float32)  # the sum of four overflows float32, of four quarters it does not
    report = validate(mean(True), mean(False), data)
    assert report.worst_sqnr_db == -math.inf and report.outputs[0].max_abs_error == math.inf
    assert all(r.worst_sqnr_db == -math.inf for r in report.runtimes)
    assert math.isnan(validate(mean(False), mean(True), data).worst_sqnr_db)  # an infinite reference: unknown
