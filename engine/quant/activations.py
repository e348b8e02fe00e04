"""Integer activation schemes: how a full-integer mode turns each calibrated activation range into codes.

A full-integer mode (``--quantize int8``, ``int16x8``, or a plugin's) is an ``ActivationScheme`` registered in
``engine.registry.ACTIVATION_SCHEMES`` under the mode's name.  The scheme says which of LiteRT's integer kernel
families runs the model (``kernels``: "int8" runs int8 activations with int32 biases, "int16" the 16x8 kernels
with int16 activations and int64 biases; the ops table, ``engine.graph.ops``, lists per op and family the kernel
version and any fixed output parameters), the width and symmetry of the activation codes, and ``params``, the
(scale, zero point) for a range.  Weights stay int8 symmetric per channel whatever the scheme (their scales come
from the recipe's scale method).  A plugin subclasses ``ActivationScheme`` to change ``params`` (power-of-two
scales, for instance) and registers an instance; the recipe, the command line and the report then know the mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.registry import ACTIVATION_SCHEMES


@dataclass(frozen=True)
class ActivationScheme:
    """Activation codes of a full-integer mode.

    ``kernels``: the integer kernel family ("int8" or "int16"); ``bits``: the code width (8 or 16, the family's);
    ``symmetric``: zero point 0 (the 16x8 kernels require it); ``headroom``: calibrated ranges are widened by
    this factor before ``params``; ``integer_io``: the integer model interfaces (``--io``) the scheme allows
    besides float.
    """

    kernels: str
    bits: int
    symmetric: bool
    headroom: float = 1.0
    integer_io: tuple[str, ...] = ()

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def tensor_type(self) -> str:
        """The schema's type name of the activation tensors ("INT8", "INT16")."""
        return f"INT{self.bits}"

    @property
    def dtype(self) -> type[np.signedinteger]:
        return np.dtype(f"int{self.bits}").type

    def params(self, lo: float, hi: float) -> tuple[float, int]:
        """Scale and zero point covering [lo, hi], widened to hold 0 (which must be exact): asymmetric over
        all 2^bits - 1 steps, or symmetric with zero point 0."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.symmetric:
            peak = max(-lo, hi)
            return (peak / self.qmax if peak > 0 else 1.0), 0
        if hi - lo <= 0:
            return 1.0, 0
        scale = (hi - lo) / (self.qmax - self.qmin)
        return scale, int(np.clip(round(self.qmin - lo / scale), self.qmin, self.qmax))


# LiteRT's integer quantization specification: int8 activations asymmetric per tensor; 16x8 symmetric.
ACTIVATION_SCHEMES.register("int8")(ActivationScheme("int8", 8, symmetric=False, integer_io=("int8", "uint8")))
# int16 codes are so fine (about 96 dB) that spending 12 dB of them on headroom costs nothing measurable, while
# inputs unlike the calibration samples no longer clip (on the MediaPipe models' held-out photo, 4x gains 0-13 dB
# of output SQNR in 16x8, docs/benchmarks.md).  int8 has no such slack.
ACTIVATION_SCHEMES.register("int16x8")(ActivationScheme("int16", 16, symmetric=True, headroom=4.0))
