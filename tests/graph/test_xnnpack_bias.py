"""The XNNPACK fact behind ``engine.passes.common.float32_biases``, checked in LiteRT: XNNPACK takes a weighted op
only when its bias type goes with its filter type as XNNPACK sees them (``engine.graph.ops.XNNPACK_BIAS_TYPES``), and
the builtin kernels compute every pair right.  Then that the weight passes never leave a re-encoded filter with a
float16 bias, on a MediaPipe model storing its weights (biases too) as FLOAT16 behind DEQUANTIZE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine
from engine import model_to_bytes
from engine.format.builder import GraphBuilder
from engine.format.ir import TENSOR_TYPES, QuantizationParams, Tensor
from engine.graph.ops import RULES, XNNPACK_BIAS_TYPES
from engine.quant.metrics import sqnr_db
from tests.runtimes import Refused, builtin_ops, invoked, outputs_of

RIGHT_DB = 30.0
OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# How the filter is stored, and the type XNNPACK sees: it drops a FLOAT16 DEQUANTIZE and reads the half-precision
# data itself; an INT8 one it decodes to FLOAT32 at load time; "hybrid" is read quantized by the op itself.
FILTERS = {"float32": "FLOAT32", "float16": "FLOAT16", "int8": "FLOAT32", "hybrid": "INT8"}
BIASES = {"float32": "FLOAT32", "float16": "FLOAT16"}


def _filter(b: GraphBuilder, w: np.ndarray, form: str, axis: int) -> Tensor:
    if form == "float32":
        return b.constant(w)
    if form == "float16":
        return b.dequantize(b.constant(w.astype(np.float16)))
    others = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=others) / 127
    codes = np.rint(w / np.expand_dims(scale, others)).astype(np.int8)
    stored = b.constant(codes)
    stored.quantization = QuantizationParams(
        scale=scale.astype(np.float32), zero_point=np.zeros(scale.size, np.int64), quantized_dimension=axis
    )
    return stored if form == "hybrid" else b.dequantize(stored)


def _model(op: str, filter_form: str, bias_form: str) -> tuple[bytes, np.ndarray]:
    """One ``op`` reading its filter and bias in the given forms, and an input for it."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    channels = 16
    if op == "FULLY_CONNECTED":
        x = b.input("x", (1, 32))
        w = rng.uniform(-1, 1, (channels, 32)).astype(np.float32)
    else:
        x = b.input("x", (1, 8, 8, 16 if op == "DEPTHWISE_CONV_2D" else 8))
        w = rng.uniform(-1, 1, (1, 3, 3, 16) if op == "DEPTHWISE_CONV_2D" else (channels, 3, 3, 8)).astype(np.float32)
    bias = rng.uniform(-1, 1, channels).astype(np.float32)
    filt = _filter(b, w, filter_form, RULES[op].weight_channel_axis % w.ndim)
    bias_t = b.constant(bias) if bias_form == "float32" else b.dequantize(b.constant(bias.astype(np.float16)))
    if op == "FULLY_CONNECTED":
        y = b.fully_connected(x, filt, bias_t)
    elif op == "CONV_2D":
        y = b.conv2d(x, filt, bias_t)
    else:
        y = b.depthwise_conv2d(x, filt, bias_t)
    b.output(y)
    data = rng.uniform(-1, 1, x.shape).astype(np.float32)
    return model_to_bytes(b.build()), data


def _cases() -> list[tuple[str, str, str]]:
    # DEPTHWISE_CONV_2D has no hybrid kernel XNNPACK takes (engine.graph.ops), so no hybrid case for it.
    return [
        (op, f, bias)
        for op in OPS
        for f in FILTERS
        for bias in BIASES
        if not (f == "hybrid" and op == "DEPTHWISE_CONV_2D")
    ]


@pytest.mark.parametrize(("op", "filter_form", "bias_form"), _cases())
def test_xnnpack_takes_the_op_exactly_when_the_bias_type_goes_with_the_filter(
    op: str, filter_form: str, bias_form: str
) -> None:
    model, data = _model(op, filter_form, bias_form)
    reference = outputs_of(invoked(model, data, "builtin"))
    taken = BIASES[bias_form] in XNNPACK_BIAS_TYPES[FILTERS[filter_form]]
    try:
        interp = invoked(model, data, "default")
    except Refused:
        assert not taken, "a pair the table says XNNPACK takes failed to load"
        return
    assert (op not in builtin_ops(interp)) == taken
    (got,) = outputs_of(interp).values()
    (expected,) = reference.values()
    assert sqnr_db(expected, got) > RIGHT_DB


@pytest.mark.parametrize(
    "options", [{"quantize": "weight-int8"}, {"quantize": "dynamic-int8"}, {"prune": 0.5, "quantize": "weight-int8"}]
)
def test_re_encoded_filters_get_float32_biases(runnable: dict[str, Path], tmp_path: Path, options: dict) -> None:
    """On a float16-stored model every op whose filter the pass changed reads a FLOAT32 bias, and XNNPACK takes
    every such op (none is left to the builtin kernels)."""
    out = tmp_path / "out.tflite"
    engine.compress(runnable["face_detection_short_range"], output=out, **options)
    sg = engine.read_model(out).main
    changed = 0
    for op in sg.operators:
        rule = RULES.get(op.name)
        if rule is None or rule.bias_input is None:
            continue
        filt = op.inputs[rule.weight_input]
        producer = sg.producer_of(filt)
        stored = producer.inputs[0] if producer is not None else filt
        while (p := sg.producer_of(stored)) is not None:
            stored = p.inputs[0]
        if stored.type_name == "FLOAT16":
            continue
        changed += 1
        bias = op.inputs[rule.bias_input]
        assert bias.is_constant and bias.type_name == "FLOAT32", (op.name, bias.name, bias.type_name)
    assert changed > 0
    data = np.zeros(tuple(sg.inputs[0].shape), np.float32)
    partitions = [d for d in invoked(out, data, "default")._get_ops_details() if d["op_name"] == "DELEGATE"]
    assert len(partitions) == 1  # XNNPACK runs the whole graph: no op left to the builtin kernels splits it
    assert TENSOR_TYPES["FLOAT16"] in {t.type for t in sg.tensors}  # small weights stay float16 beside them
