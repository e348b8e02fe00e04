"""The weight layouts in engine.graph.ops.RULES are the ones LiteRT's kernels use, in both runtimes
(``tests/runtimes.py``).

For every weighted op: the kernel's output equals a numpy reference written from the table's layout (weight
and bias read from the inputs the table names), and perturbing one slice of the weight along the table's
channel axis changes exactly one output channel, a different one for each slice: the axis really is the
output-channel axis.  For lookups (EMBEDDING_LOOKUP, GATHER) the channels are the table's rows, and row k
lands in the output slice whose id is k.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from engine import model_to_bytes
from engine.format.ir import Model, Operator
from engine.graph.ops import RULES, rule
from tests.runtimes import BOTH_RUNTIMES, run_model
from tests.weighted_models import CASES, IDS, Feeds, weighted_op

LOOKUPS = {"EMBEDDING_LOOKUP", "GATHER"}


def _run(model: Model, feeds: Feeds, runtime: str) -> np.ndarray:
    (out,) = run_model(model_to_bytes(model), feeds, runtime).values()
    return out


def _windows(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """VALID windows of a channels-last ``x``: [N, *out, C, *kernel]."""
    spatial = tuple(range(1, 1 + len(kernel)))
    view = sliding_window_view(x, kernel, axis=spatial)
    return view[(slice(None), *(slice(None, None, s) for s in strides))]


def _option(op: Operator, name: str) -> int:
    return op.builtin_options.fields[name]


def _reference(op: Operator, feeds: Feeds) -> np.ndarray:
    """What the op computes, written from the table's layout of its weight."""
    r = rule(op.name)
    w = op.inputs[r.weight_input].data.astype(np.float64)
    bias = op.inputs[r.bias_input].data if r.bias_input is not None else 0.0
    x = feeds.get("x")
    if op.name == "FULLY_CONNECTED":  # [out, in]
        return x @ w.T + bias
    if op.name == "CONV_2D":  # OHWI
        strides = (_option(op, "stride_h"), _option(op, "stride_w"))
        return np.einsum("nhwcij,oijc->nhwo", _windows(x, w.shape[1:3], strides), w) + bias
    if op.name == "DEPTHWISE_CONV_2D":  # 1HWO, O = C * multiplier, channel-major
        per_input = w[0].reshape(*w.shape[1:3], x.shape[3], -1)
        out = np.einsum("nhwcij,ijcm->nhwcm", _windows(x, w.shape[1:3], (1, 1)), per_input)
        return out.reshape(*out.shape[:3], -1) + bias
    if op.name == "CONV_3D":  # DHWIO
        return np.einsum("ndhwcijk,ijkco->ndhwo", _windows(x, w.shape[:3], (1, 1, 1)), w) + bias
    if op.name == "TRANSPOSE_CONV":  # OHWI: each input pixel scatters a kernel-sized patch
        s, (n, h, wd, _), k = _option(op, "stride_h"), x.shape, w.shape[1:3]
        full = np.zeros((n, (h - 1) * s + k[0], (wd - 1) * s + k[1], w.shape[0]))
        for i in range(h):
            for j in range(wd):
                full[:, i * s : i * s + k[0], j * s : j * s + k[1]] += np.einsum("nc,oabc->nabo", x[:, i, j], w)
        out_h, out_w = op.outputs[0].shape[1:3]
        top, left = (full.shape[1] - out_h) // 2, (full.shape[2] - out_w) // 2  # SAME: odd cell at the end
        return full[:, top : top + out_h, left : left + out_w] + bias
    if op.name == "BATCH_MATMUL":  # [..., in, out], or [..., out, in] with adj_y
        return x @ (np.swapaxes(w, -1, -2) if _option(op, "adj_y") else w)
    if op.name == "EMBEDDING_LOOKUP":  # [rows, ...]
        return w[feeds["ids"]]
    if op.name == "GATHER":
        return np.take(w, feeds["ids"], axis=_option(op, "axis"))
    if op.name == "PRELU":  # alpha broadcast against the input
        return np.where(x >= 0, x, w * x)
    raise AssertionError(f"no reference for {op.name}")


def test_every_weighted_op_has_a_case() -> None:
    weighted = {name for name, r in RULES.items() if r.weight_input is not None}
    assert {label.split("/")[0] for label in CASES} == weighted


@pytest.mark.parametrize("label", CASES)
@BOTH_RUNTIMES
def test_kernel_matches_the_layout(label: str, runtime: str) -> None:
    model, feeds = CASES[label]()
    got = _run(model, feeds, runtime)
    expected = _reference(weighted_op(model), feeds)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label", CASES)
@BOTH_RUNTIMES
def test_channel_axis_is_the_output_channel_axis(label: str, runtime: str) -> None:
    model, feeds = CASES[label]()
    op = weighted_op(model)
    r = rule(op.name)
    weight = op.inputs[r.weight_input]
    original = weight.data.copy()
    axis = r.channel_axis(op.builtin_options) % original.ndim
    out_axis = axis if op.name in LOOKUPS else -1  # a lookup's rows stay on their axis, in id order
    before = _run(model, feeds, runtime)
    hit = []
    for k in range(original.shape[axis]):
        perturbed = original.copy()
        np.moveaxis(perturbed, axis, 0)[k] += 1.0
        weight.data = perturbed
        changed = np.moveaxis(_run(model, feeds, runtime) != before, out_axis, 0)
        hit.append(np.flatnonzero(changed.reshape(changed.shape[0], -1).any(axis=1)).tolist())
    expected = [[IDS.tolist().index(k)] if op.name in LOOKUPS else [k] for k in range(len(hit))]
    assert hit == expected


def test_table_axes_follow_the_options() -> None:
    """BATCH_MATMUL's adj_y moves the channels of its right-hand side; GATHER's axis moves its rows."""
    for label, axis in [("BATCH_MATMUL", -1), ("BATCH_MATMUL/adj_y", -2), ("GATHER", 0), ("GATHER/axis=1", 1)]:
        op = weighted_op(CASES[label]()[0])
        assert rule(op.name).channel_axis(op.builtin_options) == axis, label
    assert rule("CONV_2D").channel_axis(None) == 0 and rule("ADD").channel_axis(None) is None
