"""The class a model predicts for each sample, in LiteRT: what accuracy against labels is computed from.

The convention is the accuracy-aware search's (engine.accuracy.candidates): the argmax of the first output, which
must hold one row of class scores, so that an accuracy in ``evaluate`` and a drop in ``compress
--max-accuracy-drop`` mean the same thing.
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineError
from engine.format.reader import read_model
from engine.runtime.calibrate import CalibrationSource, input_specs, load_samples
from engine.runtime.litert import ModelSource, interpreter, invoke, model_label


def predicted_classes(model: ModelSource, data: CalibrationSource, *, xnnpack: bool = True) -> np.ndarray:
    """The argmax of the first output for every sample of ``data`` (the calibration format), int64 [N]; in the
    default runtime unless ``xnnpack`` is False (the builtin kernels)."""
    label = model_label(model, "model")
    loaded = load_samples(data, input_specs(read_model(model)), "data")
    interp = interpreter(model, label, preserve_all=False, xnnpack=xnnpack)
    by_name = {d["name"]: d for d in interp.get_input_details()}
    first = interp.get_output_details()[0]
    shape = [int(d) for d in first["shape"]]
    if int(np.prod(shape)) < 2 or sum(d > 1 for d in shape) != 1:
        raise EngineError(
            f"labels are compared with the argmax of the first output ({first['name']!r}), but its shape {shape} is "
            "not one row of class scores"
        )
    classes = np.empty(loaded.count, np.int64)
    for i in range(loaded.count):
        feeds = [(by_name[spec.name], value) for spec, value in zip(loaded.inputs, loaded.sample(i), strict=True)]
        invoke(interp, feeds, label)
        classes[i] = int(np.argmax(interp.get_tensor(first["index"]).reshape(-1)))
    return classes
