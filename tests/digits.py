"""A small real classifier for the tests: scikit-learn's 8x8 digits, a conv net trained in plain numpy, and the
same net as a float32 ``.tflite`` built with ``GraphBuilder``.

Quantization needs a model whose accuracy means something and real data to calibrate and evaluate on; this
gives both offline (the digits ship with scikit-learn) and in a few seconds, with no TensorFlow or torch.

The net: CONV_2D 3x3x16 SAME + RELU -> CONV_2D 3x3x32 stride 2 SAME + RELU -> RESHAPE [1, 512] ->
FULLY_CONNECTED 10 -> SOFTMAX.  The numpy forward pass pads exactly as TFLite's SAME does (the extra row and
column go after), so its predictions match the interpreter's.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from engine.format.builder import GraphBuilder
from engine.format.ir import Model
from engine.format.writer import write_model
from tests.runtimes import make_interpreter

Params = dict[str, np.ndarray]
# (name, stride) of the two convolutions, all 3x3 SAME with a fused RELU.
_CONVS = (("conv1", 1), ("conv2", 2))
_SHAPES = {"conv1/weights": (16, 3, 3, 1), "conv2/weights": (32, 3, 3, 16), "fc/weights": (10, 4 * 4 * 32)}
_EPOCHS, _BATCH, _LR = 20, 32, 3e-3


@functools.cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.3, stratify=labels, random_state=0)
    return x_train, y_train, x_test, y_test


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test``: float32 NHWC [N, 8, 8, 1] images in [0, 1] and int64 labels, a fixed
    70/30 stratified split (1257 / 540 images).  Copies, so a caller cannot corrupt the cached split."""
    x_train, y_train, x_test, y_test = _split()
    return x_train.copy(), y_train.copy(), x_test.copy(), y_test.copy()


# ------------------------------------------------------------------------------------ numpy net


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TFLite's SAME: the odd extra cell goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _im2col(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Patches [N, Ho, Wo, kh, kw, C] of a SAME-padded NHWC batch, in OHWI weight order."""
    (pt, pb), (pl, pr) = _same_pads(x.shape[1], kernel, stride), _same_pads(x.shape[2], kernel, stride)
    padded = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
    # [N, Ho', Wo', C, kh, kw] -> strided rows/columns, channels last
    return np.ascontiguousarray(windows[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3))


def _col2im(cols: np.ndarray, shape: tuple[int, ...], stride: int) -> np.ndarray:
    """The adjoint of ``_im2col``: patch gradients [N, Ho, Wo, kh, kw, C] summed back onto the input."""
    n, ho, wo, kh, kw, c = cols.shape
    (pt, pb), (pl, pr) = _same_pads(shape[1], kh, stride), _same_pads(shape[2], kw, stride)
    padded = np.zeros((n, shape[1] + pt + pb, shape[2] + pl + pr, c), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[:, :, :, i, j]
    return padded[:, pt : pt + shape[1], pl : pl + shape[2]]


def _forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Logits [N, 10] and, per conv, its (patches, RELU output) for the backward pass."""
    cache = []
    for name, stride in _CONVS:
        w = params[f"{name}/weights"]
        cols = _im2col(x, w.shape[1], stride)
        x = np.maximum(cols.reshape(-1, w[0].size) @ w.reshape(len(w), -1).T + params[f"{name}/bias"], 0)
        x = x.reshape(*cols.shape[:3], len(w))
        cache.append((cols, x))
    logits = x.reshape(len(x), -1) @ params["fc/weights"].T + params["fc/bias"]
    return logits, cache


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """Class probabilities [N, 10] from the numpy forward pass, the reference for the LiteRT model."""
    return _softmax(_forward(params, np.asarray(x, np.float32))[0])


def _gradients(params: Params, x: np.ndarray, y: np.ndarray) -> Params:
    """Gradients of the mean cross-entropy, by hand through FC, the flatten and both RELU convolutions."""
    logits, cache = _forward(params, x)
    d = _softmax(logits)
    d[np.arange(len(y)), y] -= 1.0
    d /= len(y)
    features = cache[-1][1]
    grads = {"fc/weights": d.T @ features.reshape(len(x), -1), "fc/bias": d.sum(axis=0)}
    d = (d @ params["fc/weights"]).reshape(features.shape)
    inputs = [x] + [out for _, out in cache[:-1]]
    for (name, stride), (cols, out), inp in reversed(list(zip(_CONVS, cache, inputs, strict=True))):
        w = params[f"{name}/weights"]
        d = (d * (out > 0)).reshape(-1, len(w))
        grads[f"{name}/weights"] = (d.T @ cols.reshape(len(d), -1)).reshape(w.shape)
        grads[f"{name}/bias"] = d.sum(axis=0)
        if inp is not x:
            d = _col2im((d @ w.reshape(len(w), -1)).reshape(cols.shape), inp.shape, stride)
    return grads


def train_digits(seed: int = 0) -> Params:
    """Train the net with Adam on the training split (~2 s); the same seed gives the same parameters.

    Keys: ``conv1/weights`` [16, 3, 3, 1], ``conv2/weights`` [32, 3, 3, 16] (OHWI), ``fc/weights`` [10, 512]
    ([out, in], input in NHWC flatten order) and a float32 ``*/bias`` for each.
    """
    x_train, y_train, _, _ = _split()
    rng = np.random.default_rng(seed)
    params: Params = {}
    for key, shape in _SHAPES.items():
        fan_in = int(np.prod(shape[1:]))
        params[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        params[key.replace("weights", "bias")] = np.zeros(shape[0], np.float32)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    for _ in range(_EPOCHS):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), _BATCH):
            batch = order[start : start + _BATCH]
            grads = _gradients(params, x_train[batch], y_train[batch])
            step += 1
            lr = _LR * np.sqrt(1 - beta2**step) / (1 - beta1**step)
            for k, g in grads.items():
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                params[k] = (params[k] - lr * m[k] / (np.sqrt(v[k]) + 1e-8)).astype(np.float32)
    return params


@functools.cache
def _trained() -> Params:
    return train_digits(0)


def digits_params() -> Params:
    """``train_digits(0)``, trained once per process; copies, so a caller may edit them."""
    return {k: v.copy() for k, v in _trained().items()}


# ------------------------------------------------------------------------------------ tflite


def build_digits_model(params: Params) -> Model:
    """The trained net as a float32 model: input ``image`` [1, 8, 8, 1], output ``probabilities`` [1, 10]."""
    b = GraphBuilder("digits")
    x = b.input("image", (1, 8, 8, 1))
    for name, stride in _CONVS:
        x = b.conv2d(x, params[f"{name}/weights"], params[f"{name}/bias"], stride=stride, activation="RELU")
    x = b.reshape(x, (1, -1))
    x = b.fully_connected(x, params["fc/weights"], params["fc/bias"])
    b.output(b.softmax(x), "probabilities")
    return b.build()


def digits_model_path(directory: str | Path) -> Path:
    """``directory/digits.tflite`` holding the seed-0 net (trained once per process), written if missing; for a
    session fixture: ``digits_model_path(tmp_path_factory.mktemp("digits"))``."""
    path = Path(directory) / "digits.tflite"
    if not path.is_file():
        write_model(build_digits_model(_trained()), path)
    return path


def litert_outputs(model: str | Path | bytes, x: np.ndarray, runtime: str) -> np.ndarray:
    """The class scores [N, classes] of a ``.tflite`` run in LiteRT one image at a time, in ``runtime``
    (``tests/runtimes.py``).

    An int8/uint8 input is fed ``x`` quantized with its (scale, zero point), a quantized output dequantized.
    """
    interp = make_interpreter(model, runtime)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    dtype = np.dtype(inp["dtype"])
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    results = []
    for image in np.asarray(x, np.float32):
        feed = image[None]
        if dtype in (np.int8, np.uint8):
            info = np.iinfo(dtype)
            feed = np.clip(np.round(feed / in_scale) + in_zero, info.min, info.max)
        interp.set_tensor(inp["index"], feed.astype(dtype).reshape(inp["shape"]))
        interp.invoke()
        result = interp.get_tensor(out["index"]).astype(np.float64)
        if np.dtype(out["dtype"]) in (np.int8, np.uint8) and out_scale:
            result = (result - out_zero) * out_scale
        results.append(result.reshape(-1))
    return np.stack(results)


def litert_predictions(model: str | Path | bytes, x: np.ndarray, runtime: str) -> np.ndarray:
    """Top-1 classes [N] of a ``.tflite`` run in LiteRT (see `litert_outputs`)."""
    return np.argmax(litert_outputs(model, x, runtime), axis=1).astype(np.int64)


def accuracy(model: str | Path | bytes, x: np.ndarray, y: np.ndarray, runtime: str) -> float:
    """Top-1 accuracy of a ``.tflite`` (path or bytes) in LiteRT's ``runtime`` on images ``x`` with labels ``y``."""
    return float(np.mean(litert_predictions(model, x, runtime) == np.asarray(y)))
