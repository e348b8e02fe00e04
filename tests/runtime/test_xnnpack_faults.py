"""Faults of the default runtime (XNNPACK, ai-edge-litert as pinned in the test extra) that the test strategies
steer around, pinned here so that each one fails this file once the runtime is fixed and the workaround can go."""

from __future__ import annotations

import numpy as np
import pytest

from engine import model_to_bytes
from engine.format.builder import GraphBuilder
from tests.runtimes import run_model


@pytest.mark.parametrize("between", [0, 2], ids=["pools in a row", "RELUs between them"])
def test_chained_identity_pools_are_computed_wrong_in_the_default_runtime_only(between: int) -> None:
    """XNNPACK defines a 1x1 stride-1 pool as an unbounded clamp and, for two in a chain after another delegated op
    (in a row, or with RELUs, also clamps, between them), leaves the graph output unwritten (uninitialized values,
    different from run to run).  tests/strategies.py draws no 1x1 stride-1 pool at all."""
    b = GraphBuilder()
    x = b.input("x", (1, 2, 2, 1))
    y = b.average_pool2d(b.relu(x), 1, 1)
    for _ in range(between):
        y = b.relu(y)
    b.output(b.average_pool2d(y, 1, 1), "out")
    data = model_to_bytes(b.build())
    inputs = {"x": np.array([-0.5, 0.25, 0.75, -1.0], np.float32).reshape(1, 2, 2, 1)}
    expected = np.maximum(inputs["x"], 0)
    assert np.array_equal(run_model(data, inputs, "builtin")["out"], expected)
    runs = [run_model(data, inputs, "default")["out"] for _ in range(4)]
    if all(np.array_equal(out, expected) for out in runs):
        pytest.fail("the default runtime now computes chained identity pools right: drop the workaround")
