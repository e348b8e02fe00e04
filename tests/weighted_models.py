"""One tiny single-op float model per weighted op of ``engine.graph.ops.RULES`` (plus option variants), for the tests
that check the table against the LiteRT kernels.

Each weight grows geometrically along its output-channel axis (0.05 to 4), so a kernel that reads per-channel
scales along another axis, or one scale for every channel, gives visibly wrong results.  Lookups read every row
exactly once, in a shuffled order, so each row lands in exactly one output slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.format.builder import GraphBuilder
from engine.format.ir import Model, Operator, Tensor

Feeds = dict[str, np.ndarray]
Case = Callable[[], tuple[Model, Feeds]]
IDS = np.array([3, 0, 5, 1, 4, 2], np.int32)  # a permutation of the 6 rows every lookup table has


def _random(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(np.float32)


def _graded(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Random weights whose magnitude grows from 0.05 to 4 along ``axis``."""
    scale = np.geomspace(0.05, 4.0, shape[axis]).astype(np.float32)
    return _random(rng, *shape) * np.expand_dims(scale, [i for i in range(len(shape)) if i != axis % len(shape)])


def _float_case(build: Callable[..., Tensor], inputs: dict[str, tuple[int, ...]]) -> Case:
    """A case whose inputs are float tensors of the given shapes, filled with seeded values in [-1, 1]."""

    def make() -> tuple[Model, Feeds]:
        rng = np.random.default_rng(0)
        b = GraphBuilder()
        xs = {name: b.input(name, shape) for name, shape in inputs.items()}
        b.output(build(b, rng, **xs), "y")
        return b.build(), {name: _random(rng, *shape) for name, shape in inputs.items()}

    return make


def _lookup_case(build: Callable[..., Tensor]) -> Case:
    """A case whose one input is the int32 ``ids`` tensor, fed ``IDS``."""

    def make() -> tuple[Model, Feeds]:
        b = GraphBuilder()
        b.output(build(b, np.random.default_rng(0), b.input("ids", IDS.shape, np.int32)), "y")
        return b.build(), {"ids": IDS}

    return make


CASES: dict[str, Case] = {
    "FULLY_CONNECTED": _float_case(
        lambda b, r, x: b.fully_connected(x, _graded(r, (6, 8), 0), _random(r, 6)), {"x": (3, 8)}
    ),
    "CONV_2D": _float_case(
        lambda b, r, x: b.conv2d(x, _graded(r, (4, 3, 3, 3), 0), _random(r, 4), 2, "VALID"), {"x": (1, 6, 5, 3)}
    ),
    "DEPTHWISE_CONV_2D": _float_case(
        lambda b, r, x: b.depthwise_conv2d(x, _graded(r, (1, 3, 3, 6), 3), _random(r, 6), 1, "VALID", 2),
        {"x": (1, 5, 5, 3)},
    ),
    "TRANSPOSE_CONV": _float_case(
        lambda b, r, x: b.transpose_conv(x, _graded(r, (4, 3, 3, 2), 0), _random(r, 4), stride=2),
        {"x": (1, 3, 4, 2)},
    ),
    "CONV_3D": _float_case(
        lambda b, r, x: b.conv3d(x, _graded(r, (2, 3, 3, 2, 4), 4), _random(r, 4), padding="VALID"),
        {"x": (1, 3, 5, 4, 2)},
    ),
    "BATCH_MATMUL": _float_case(lambda b, r, x: b.batch_matmul(x, _graded(r, (8, 5), 1)), {"x": (2, 3, 8)}),
    "BATCH_MATMUL/adj_y": _float_case(
        lambda b, r, x: b.batch_matmul(x, _graded(r, (2, 5, 8), 1), adj_y=True), {"x": (2, 3, 8)}
    ),
    "EMBEDDING_LOOKUP": _lookup_case(lambda b, r, ids: b.embedding_lookup(ids, _graded(r, (6, 4), 0))),
    "GATHER": _lookup_case(lambda b, r, ids: b.gather(_graded(r, (6, 4), 0), ids)),
    "GATHER/axis=1": _lookup_case(lambda b, r, ids: b.gather(_graded(r, (2, 6, 3), 1), ids, axis=1)),
    "PRELU": _float_case(lambda b, r, x: b.prelu(x, np.abs(_graded(r, (1, 1, 4), 2))), {"x": (1, 3, 3, 4)}),
}
# The plain case of each op, the one the runtime-form tests quantize.
BASE_CASES = [label for label in CASES if "/" not in label]


def weighted_op(model: Model) -> Operator:
    """The one operator of a case's model."""
    (op,) = model.main.operators
    return op
