"""Hypothesis strategies for random valid float models, built with ``engine.builder``.

Passes are tested on these: each model is a small NHWC graph with branches and merges, random weights
(some stored as float16 behind a DEQUANTIZE, as converted models often have), and random strides,
paddings and activations, so that it loads and runs in LiteRT.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from engine.builder import GraphBuilder
from engine.ir import Model, Tensor

Draw = Callable[[st.SearchStrategy], object]
# A step turns a chosen NHWC tensor into a new NHWC tensor, and may use the other tensors built so far.
Step = Callable[[Draw, GraphBuilder, np.random.Generator, Tensor, list[Tensor]], Tensor]

FUSED = [None, "RELU", "RELU6", "RELU_N1_TO_1"]


def _weights(draw: Draw, b: GraphBuilder, rng: np.random.Generator, shape: tuple[int, ...], fan_in: int):
    """Scaled random weights: a float32 array, or a float16 constant behind DEQUANTIZE."""
    array = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return b.dequantize(b.constant(array.astype(np.float16))) if draw(st.booleans()) else array


def _bias(draw: Draw, rng: np.random.Generator, n: int) -> np.ndarray | None:
    return rng.uniform(-0.5, 0.5, n).astype(np.float32) if draw(st.booleans()) else None


def _window(draw: Draw, x: Tensor, max_kernel: int) -> tuple[int, int, int, str]:
    """Kernel, stride, dilation and padding that fit ``x`` (VALID only when the window fits)."""
    kernel = draw(st.integers(1, max_kernel))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    fits = (kernel - 1) * dilation + 1 <= min(x.shape[1:3])
    padding = draw(st.sampled_from(["SAME", "VALID"])) if fits else "SAME"
    return kernel, stride, dilation, padding


def _conv(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, _: list[Tensor]) -> Tensor:
    k, stride, dilation, padding = _window(draw, x, 3)
    out, cin = draw(st.integers(1, 4)), x.shape[3]
    w = _weights(draw, b, rng, (out, k, k, cin), k * k * cin)
    activation = draw(st.sampled_from(FUSED))
    return b.conv2d(x, w, _bias(draw, rng, out), stride, padding, activation, dilation)


def _depthwise(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, _: list[Tensor]) -> Tensor:
    k, stride, dilation, padding = _window(draw, x, 3)
    multiplier = draw(st.integers(1, 2))
    out = x.shape[3] * multiplier
    w = _weights(draw, b, rng, (1, k, k, out), k * k)
    activation = draw(st.sampled_from(FUSED))
    return b.depthwise_conv2d(x, w, _bias(draw, rng, out), stride, padding, multiplier, activation, dilation)


def _pool(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, _: list[Tensor]) -> Tensor:
    size, stride, _dilation, padding = _window(draw, x, 3)
    pool = b.max_pool2d if draw(st.booleans()) else b.average_pool2d
    return pool(x, size, stride, padding)


def _activation(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, _: list[Tensor]) -> Tensor:
    kind = draw(st.sampled_from(["relu", "relu6", "logistic", "tanh", "hard_swish", "leaky_relu", "prelu", "softmax"]))
    if kind == "leaky_relu":
        return b.leaky_relu(x, draw(st.floats(0.0, 0.5)))
    if kind == "prelu":
        return b.prelu(x, rng.uniform(0.0, 0.5, x.shape[3:]).astype(np.float32))
    return getattr(b, kind)(x)


def _binary(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, pool: list[Tensor]) -> Tensor:
    """ADD/SUB/MUL merging two same-shape branches, or with a broadcast constant when there is no partner."""
    partners = [t for t in pool if t.shape == x.shape]
    if draw(st.booleans()):
        other = draw(st.sampled_from(partners))
    else:
        shape = draw(st.sampled_from([(x.shape[3],), (1, 1, 1, x.shape[3]), (1,), x.shape]))
        other = rng.uniform(-1, 1, shape).astype(np.float32)
    op = draw(st.sampled_from([b.add, b.sub, b.mul]))
    return op(x, other, draw(st.sampled_from(FUSED)))


def _concat(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, pool: list[Tensor]) -> Tensor:
    partners = [t for t in pool if t.shape[:3] == x.shape[:3]]
    others = draw(st.lists(st.sampled_from(partners), min_size=1, max_size=2))
    return b.concatenation([x, *others], draw(st.sampled_from([3, -1])))


def _reshape(draw: Draw, b: GraphBuilder, rng: np.random.Generator, x: Tensor, _: list[Tensor]) -> Tensor:
    """A rank-4 reshape that moves the spatial layout around (the channel count stays)."""
    _, h, w, c = x.shape
    return b.reshape(x, draw(st.sampled_from([(1, w, h, c), (1, h * w, 1, c), (1, -1, 1, c)])))


STEPS: dict[str, Step] = {
    "conv2d": _conv,
    "depthwise_conv2d": _depthwise,
    "pool": _pool,
    "activation": _activation,
    "binary": _binary,
    "concatenation": _concat,
    "reshape": _reshape,
}


@st.composite
def graphs(draw: Draw, max_steps: int = 6, max_size: int = 8) -> Model:
    """A random valid float32 model: one or two NHWC inputs, a chain with branches and merges, 1-2 outputs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (1, draw(st.integers(1, max_size)), draw(st.integers(1, max_size)), draw(st.integers(1, 4)))
    b = GraphBuilder()
    pool = [b.input("x", shape)]
    if draw(st.booleans()):
        pool.append(b.input("y", shape))
    built: list[Tensor] = []
    for _ in range(draw(st.integers(1, max_steps))):
        step = STEPS[draw(st.sampled_from(sorted(STEPS)))]
        built.append(step(draw, b, rng, draw(st.sampled_from(pool)), pool))
        pool.append(built[-1])
    last = built[-1]
    if draw(st.booleans()):  # classifier head
        flat = b.reshape(last, (1, -1))
        units = draw(st.integers(1, 6))
        w = _weights(draw, b, rng, (units, flat.shape[1]), flat.shape[1])
        last = b.fully_connected(flat, w, _bias(draw, rng, units), draw(st.sampled_from(FUSED)))
        if draw(st.booleans()):
            last = b.softmax(last, draw(st.sampled_from([1.0, 0.5, 2.0])))
    b.output(last, "out")
    extra = [t for t in built if t is not last]
    if extra and draw(st.booleans()):
        b.output(draw(st.sampled_from(extra)))
    return b.build()
