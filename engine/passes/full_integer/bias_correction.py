"""Bias correction (``--bias-correction``): remove each quantized layer's mean output error, measured against the
float model layer by layer, and keep a correction only where it brings the model's outputs closer to the float
model's on samples it was not estimated from.

Why measured: the analytic correction (W_q - W) E[x] (Nagel et al. 2019) counts only the weight's rounding, while
a quantized model's means also move with activation rounding bent by the nonlinearities after it, clipping at the
activation ranges and padded borders; applied everywhere it measured -3.7..+1.4 dB of worst-output SQNR on
MediaPipe's models (docs/cli.md).  Why judged: a correction estimated on a few samples can suit them and not
others; the outputs of MediaPipe's models move by +-2 dB when any early bias moves, so picking what helps on the
samples it was fitted to lost up to 11 dB on held-out photos (face_landmark's face score).

How: before the rewrite, the float model's per-sample, per-channel output means of every integer op with a bias,
and its graph outputs, are recorded on the first ``SAMPLES`` calibration samples (``float_reference``).  The
quantized model is then corrected depth by depth (ops at one depth do not read one another), each depth from a run
of the model with the shallower corrections in.  Estimated on the even samples: channel c's mean error (quantized
minus float output, paired by sample), divided by the share of its outputs neither the activation nor the range
clips (how far a bias step moves the mean), comes off the bias where it exceeds its spread over the samples (most
of them share its sign).  Judged on the odd samples by the next run: the depth's corrections stay when each
sample's error at the outputs (summed over the outputs, each relative to its float power) is lower, paired, by
over ``_GAIN`` standard errors, no output is worse summed over the samples nor by over ``_HARM`` standard errors;
else they are undone (the run before measured the next depth without them).  Cost: one run of the float model
and, per depth with a correction to judge, one of the quantized model over the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from engine.format.ir import TENSOR_TYPES, Model, Operator, Subgraph, Tensor, all_tensors
from engine.format.reader import read_model
from engine.passes.full_integer.rewrite import Bias
from engine.quant.metrics import quantize_array
from engine.runtime.calibrate import CalibrationData, LiteRTExecutor, runner_for, with_outputs

_FLOAT32 = TENSOR_TYPES["FLOAT32"]
# The samples bias correction runs the models on (the first of the calibration samples; each depth judged costs
# a run over them), estimating on the even ones and judging on the odd ones.
SAMPLES = 16
_FIT, _JUDGE = slice(0, None, 2), slice(1, None, 2)
_AGREEMENT = 1.0  # the mean error must exceed its spread over the samples (most of them share its sign)
# How far (in standard errors over the judging samples) a depth's corrections must lower the outputs' error to be
# kept, and how far they may raise one output's.  A model has up to ~90 depths, so chance must pass none: with 8
# judging samples a t of 5 comes by chance with p < 0.001 per depth, while at 3 one chance pass (t = 3.1) cost
# face_landmark's face score 7.7 dB on the held-out photo.
_GAIN, _HARM = 5.0, 2.0
_MIN_ACTIVE = 0.1  # a channel whose outputs are clipped more often than this is left alone: its bias barely moves it


@dataclass
class FloatReference:
    """What the float model computes on the first ``count`` calibration samples: per op (by ``id``), each
    sample's mean of each output channel; per sample, the graph outputs."""

    count: int
    means: dict[int, np.ndarray]
    outputs: list[list[np.ndarray]]

    @cached_property
    def power(self) -> np.ndarray:
        """Per output, its power summed over the samples (never 0: the noise is relative to it)."""
        total = np.sum([[np.sum(np.square(o)) for o in sample] for sample in self.outputs], axis=0)
        return np.maximum(total, np.finfo(np.float64).tiny)


@dataclass
class _Run:
    """The quantized model on the same samples: per sample and output, the error power relative to the output's
    float power over all samples; per corrected op, each sample's channel means and the share of each channel's
    outputs not clipped."""

    errors: np.ndarray
    means: dict[int, np.ndarray]
    active: dict[int, np.ndarray]


def float_reference(
    model: Model, ops: list[Operator], data: CalibrationData, executor: type[LiteRTExecutor]
) -> FloatReference:
    """Run the float ``model`` on the samples bias correction uses and record what ``ops`` output."""
    sg = model.main
    count = min(data.count, SAMPLES)
    runner, index = runner_for(model, [op.outputs[0] for op in ops], executor)
    means = {id(op): np.empty((count, op.outputs[0].shape[-1])) for op in ops}
    outputs = []
    for sample in range(count):
        runner.run(dict(zip((index[id(t)] for t in sg.inputs), data.sample(sample), strict=True)))
        for op in ops:
            means[id(op)][sample] = _channel_means(np.asarray(runner.tensor(index[id(op.outputs[0])])))
        outputs.append([np.array(runner.tensor(index[id(t)]), np.float64) for t in sg.outputs])
    return FloatReference(count, means, outputs)


def correct_biases(
    model: Model,
    biases: list[Bias],
    reference: FloatReference,
    data: CalibrationData,
    executor: type[LiteRTExecutor],
) -> dict:
    """Correct ``biases`` in the quantized ``model`` depth by depth, keeping what helps at the outputs (module
    doc); returns what was done for the report."""
    biases = [b for b in biases if id(b.op) in reference.means]
    depths = _depths(model.main, biases)
    copy = _Serialized(model, biases)
    state = _run(model, biases, reference, data, executor, copy)
    before, runs, kept, undone = state.errors, 1, 0, 0
    for depth in sorted(set(depths.values())):
        changed = []
        for b in (b for b in biases if depths[id(b.op)] == depth):
            codes = _corrected(b, state, reference)
            if codes is not None:
                changed.append((b, np.asarray(b.tensor.data).copy()))
                b.tensor.data = codes
        if not changed:
            continue
        deeper = [b for b in biases if depths[id(b.op)] > depth]  # what the next depths are corrected from
        trial = _run(model, deeper, reference, data, executor, copy)
        runs += 1
        if _better(trial.errors[_JUDGE], state.errors[_JUDGE]):
            state, kept = trial, kept + len(changed)
        else:
            for b, codes in changed:
                b.tensor.data = codes
            undone += len(changed)
    return {
        "biases": kept,
        "considered": len(biases),
        "undone": undone,
        "runs": runs,
        "samples": reference.count,
        "worst_sqnr_db": [_db(before.sum(axis=0).max()), _db(state.errors.sum(axis=0).max())],
    }


def _depths(sg: Subgraph, biases: list[Bias]) -> dict[int, int]:
    """Per corrected op (by ``id``), how many corrected ops lie on the longest path to it, itself included: ops
    at one depth do not read one another's outputs (the operators are in execution order)."""
    corrected = {id(b.op) for b in biases}
    producers = sg.producers()
    depth: dict[int, int] = {}
    for op in sg.operators:
        before = [depth[id(producers[id(t)])] for t in op.inputs if t is not None and id(t) in producers]
        depth[id(op)] = max(before, default=0) + (id(op) in corrected)
    return {key: depth[key] for key in corrected}


class _Serialized:
    """The quantized model serialized once, with every corrected op's output among its graph outputs, and where
    each bias's codes lie in those bytes: each run patches the current codes into a copy instead of serializing
    the model again (which was most of a run's time on MediaPipe's models)."""

    def __init__(self, model: Model, biases: list[Bias]) -> None:
        self.biases = biases
        self.data, self.index = with_outputs(model, [b.op.outputs[0] for b in biases])
        tensors = all_tensors(read_model(self.data).main)  # the writer's tensor order, constants viewing the bytes
        start = np.frombuffer(self.data, np.uint8).ctypes.data
        self.places = []
        for b in biases:
            codes = tensors[self.index[id(b.tensor)]].buffer.data
            self.places.append((codes.ctypes.data - start, codes.nbytes))

    def current(self) -> tuple[bytes, dict[int, int]]:
        """The bytes with every bias as it is now in the model, and the tensor index."""
        patched = bytearray(self.data)
        for b, (offset, size) in zip(self.biases, self.places, strict=True):
            codes = np.ascontiguousarray(b.tensor.data).view(np.uint8).reshape(-1)
            assert codes.size == size, b.tensor.name
            patched[offset : offset + size] = codes.tobytes()
        return bytes(patched), self.index


def _run(
    model: Model,
    biases: list[Bias],
    reference: FloatReference,
    data: CalibrationData,
    executor: type[LiteRTExecutor],
    serialized: _Serialized,
) -> _Run:
    """Run the quantized model on the samples: its outputs' errors, and what ``biases``' ops output."""
    sg = model.main
    runner, index = runner_for(model, [b.op.outputs[0] for b in biases], executor, serialized.current())
    means = {id(b.op): np.empty((reference.count, b.scales.size)) for b in biases}
    active = {id(b.op): np.zeros(b.scales.size) for b in biases}
    errors = np.zeros((reference.count, len(sg.outputs)))
    for sample in range(reference.count):
        feeds = zip(sg.inputs, data.sample(sample), strict=True)
        runner.run({index[id(t)]: _as_input(value, t) for t, value in feeds})
        for b in biases:
            out = b.op.outputs[0]
            codes = np.asarray(runner.tensor(index[id(out)]))
            means[id(b.op)][sample] = _dequantized(_channel_means(codes), out)
            info = np.iinfo(codes.dtype)
            active[id(b.op)] += _channel_means((codes > info.min) & (codes < info.max)) / reference.count
        for k, (t, expected) in enumerate(zip(sg.outputs, reference.outputs[sample], strict=True)):
            got = _dequantized(np.asarray(runner.tensor(index[id(t)])), t)
            errors[sample, k] = float(np.sum(np.square(got - expected)))
    return _Run(errors / reference.power, means, active)


def _better(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether the outputs' errors ([sample, output], relative) are lower beyond chance on these samples: each
    sample's total, paired, lower by over ``_GAIN`` standard errors (the corrections help nearly every sample,
    rather than suit a few or move a sensitive output at random); no output worse summed over the samples, nor
    by over ``_HARM`` standard errors."""
    gain = old - new
    if _t(gain.sum(axis=1)) <= _GAIN or new.sum(axis=0).max() > old.sum(axis=0).max():
        return False
    return all(_t(gain[:, k]) >= -_HARM for k in range(gain.shape[1]))


def _t(gains: np.ndarray) -> float:
    """The mean of paired gains in standard errors (infinite when every sample gains the same; 0 from fewer than
    two samples, which show nothing)."""
    if gains.size < 2:
        return 0.0
    mean, spread = float(gains.mean()), float(gains.std(ddof=1)) / math.sqrt(gains.size)
    return mean / spread if spread > 0 else math.copysign(math.inf, mean) if mean else 0.0


def _corrected(b: Bias, state: _Run, reference: FloatReference) -> np.ndarray | None:
    """The bias codes with the mean error of ``b``'s op removed where the samples agree on it; None: no change."""
    errors = (state.means[id(b.op)] - reference.means[id(b.op)])[_FIT]
    if errors.shape[0] < 2:
        return None
    mean = errors.mean(axis=0)
    agreed = np.abs(mean) > _AGREEMENT * errors.std(axis=0, ddof=1)
    active = state.active[id(b.op)]
    steps = np.rint(np.where(agreed & (active >= _MIN_ACTIVE), mean / np.maximum(active, _MIN_ACTIVE), 0.0) / b.scales)
    if not steps.any():
        return None
    info = np.iinfo(b.tensor.dtype)
    codes = np.asarray(b.tensor.data).astype(np.float64).reshape(-1) - steps
    return np.clip(codes, info.min, info.max).astype(b.tensor.dtype).reshape(b.tensor.shape)


def _channel_means(values: np.ndarray) -> np.ndarray:
    """The mean of each channel (the last axis); a float32 matrix-vector product, 4x faster than numpy's sum over
    int8 codes (exact for them up to 2**17 rows)."""
    rows = values.reshape(-1, values.shape[-1]).astype(np.float32)
    return (np.ones(rows.shape[0], np.float32) @ rows).astype(np.float64) / max(rows.shape[0], 1)


def _dequantized(values: np.ndarray, t: Tensor) -> np.ndarray:
    q = t.quantization
    if t.type == _FLOAT32 or q is None or q.scale is None:
        return np.asarray(values, np.float64)
    return (values.astype(np.float64) - float(q.zero_point[0])) * float(q.scale[0])


def _db(noise: float) -> float:
    return math.inf if noise == 0 else -10 * math.log10(noise)


def _as_input(value: np.ndarray, t: Tensor) -> np.ndarray:
    """A float sample as the (possibly integer) graph input ``t`` takes it."""
    q = t.quantization
    if t.type == _FLOAT32 or q is None or q.scale is None:
        return value
    return quantize_array(value, float(q.scale[0]), int(q.zero_point[0]), t.dtype)
