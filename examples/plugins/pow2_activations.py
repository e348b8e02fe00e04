"""A full-integer mode as a plugin: symmetric int8 activations with power-of-two scales.

Fixed-point hardware rescales by shifting when every scale is a power of two.  With ``pow2_scale.py``'s weight
scales too, each op's requantization factor (input scale x weight scale / output scale) is a power of two.  The
mode runs on LiteRT's int8 kernels, so the ops table's int8 facts apply unchanged::

    python -m engine --plugin examples/plugins/pow2_activations.py --plugin examples/plugins/pow2_scale.py \\
        compress in.tflite -o out.tflite --quantize int8-pow2 --scale pow2 --calibration photos.npy
"""

import math
from dataclasses import dataclass

from engine.quant.activations import ActivationScheme
from engine.registry import ACTIVATION_SCHEMES


@dataclass(frozen=True)
class PowerOfTwoScheme(ActivationScheme):
    def params(self, lo: float, hi: float) -> tuple[float, int]:
        """The smallest power-of-two scale whose symmetric int8 codes still hold [lo, hi]; zero point 0."""
        scale, _ = super().params(lo, hi)
        return 2.0 ** math.ceil(math.log2(scale)), 0


ACTIVATION_SCHEMES.register("int8-pow2")(PowerOfTwoScheme("int8", 8, symmetric=True, integer_io=("int8",)))
