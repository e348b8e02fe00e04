"""Bias correction: remove the mean output shift that rounding each weight causes, measured in the quantized
model on the calibration samples."""

from __future__ import annotations

import numpy as np

from engine.format.ir import TENSOR_TYPES, Model, Operator, Tensor, all_tensors
from engine.format.writer import model_to_bytes
from engine.passes.full_integer.rewrite import Bias
from engine.quant.metrics import quantize_array
from engine.runtime.calibrate import CalibrationData, LiteRTExecutor

# ------------------------------------------------------------------------------------------ bias correction

_FLOAT32 = TENSOR_TYPES["FLOAT32"]


def correct_biases(model: Model, biases: list[Bias], data: CalibrationData, executor: type[LiteRTExecutor]) -> dict:
    """Remove the mean output shift that rounding each weight causes: for a linear op it is the weight error
    applied to the mean of the op's input, E[(W_q - W) x] = (W_q - W) E[x], with E[x] per input channel
    measured in the quantized model on the calibration samples.  Subtracting it from the bias makes each
    quantized layer's output mean match the float layer's on the same inputs (borders of padded convolutions
    aside), one layer's correction not counted again in the next."""
    sg = model.main
    index = {id(t): i for i, t in enumerate(all_tensors(sg))}
    runner = executor(bytes(model_to_bytes(model)))
    inputs = [index[id(t)] for t in sg.inputs]
    means = [np.zeros(b.input.shape[-1]) for b in biases]
    for sample in range(data.count):
        runner.run({i: _as_input(v, t) for i, v, t in zip(inputs, data.sample(sample), sg.inputs, strict=True)})
        for k, b in enumerate(biases):
            q = b.input.quantization
            codes = runner.tensor(index[id(b.input)]).astype(np.float64)
            means[k] += ((codes - float(q.zero_point[0])) * float(q.scale[0])).reshape(-1, means[k].size).mean(axis=0)
    shifts = []
    for b, total in zip(biases, means, strict=True):
        shift = _mean_shift(b.op, b.weight_error, total / data.count)
        codes = np.asarray(b.tensor.data).astype(np.float64).reshape(-1) - np.rint(shift / b.scales)
        info = np.iinfo(b.tensor.dtype)
        b.tensor.data = np.clip(codes, info.min, info.max).astype(b.tensor.dtype).reshape(b.tensor.shape)
        shifts.append(float(np.abs(shift).mean()))
    return {"biases": len(biases), "mean_abs_shift": float(np.mean(shifts)) if shifts else 0.0}


def _mean_shift(op: Operator, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per output channel, the weight error applied to a constant input equal to ``mean`` (per input channel):
    each output sums its filter's taps over the input channels (a depthwise filter over its own channel)."""
    if op.name == "DEPTHWISE_CONV_2D":
        channels = error.shape[-1]
        return error.reshape(-1, channels).sum(axis=0) * np.repeat(mean, channels // mean.size)
    if op.name == "TRANSPOSE_CONV":  # each output pixel sums a varying subset of taps: no constant shift
        return np.zeros(error.shape[0])
    return error.reshape(error.shape[0], -1, mean.size).sum(axis=1) @ mean


def _as_input(value: np.ndarray, t: Tensor) -> np.ndarray:
    """A float sample as the (possibly integer) graph input ``t`` takes it."""
    q = t.quantization
    if t.type == _FLOAT32 or q is None or q.scale is None:
        return value
    return quantize_array(value, float(q.scale[0]), int(q.zero_point[0]), t.dtype)
