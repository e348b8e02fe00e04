"""What full-integer quantization did to the graph, for the run's report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.graph.ops import (
    I16,
    RULES,
)
from engine.passes.full_integer.smooth import Smoothed


@dataclass
class IntegerReport:
    """What full-integer quantization did to the graph, for the run's report."""

    mode: str  # the full-integer mode (activation scheme) asked for
    kernels: str  # the integer kernel family running it: "int8" or "int16" (engine.graph.ops.INTEGER_KERNELS)
    io: str
    observer: str
    samples: int
    integer_ops: dict[str, int] = field(default_factory=dict)
    float_ops: list[dict[str, str]] = field(default_factory=list)
    folded_decoders: int = 0
    restored_decoders: int = 0  # of those, put back for constants only float ops read (the input's storage kept)
    fused_activations: int = 0
    quantize_ops: int = 0
    dequantize_ops: int = 0
    bias_correction: dict[str, Any] | None = None
    equalized: list[Smoothed] | None = None  # --equalize: the activation groups rescaled (smooth.py)
    stages: int = (
        1  # gradual: calibrated stage by stage on the partly integer model (engine/passes/full_integer/gradual.py)
    )

    def format_text(self) -> str:
        total = sum(self.integer_ops.values())
        lines = [
            f"full-integer {self.mode} (I/O {self.io}), calibrated on {self.samples} samples "
            f"({self.observer}{f'; gradually, in {self.stages} stages' if self.stages > 1 else ''}): {total} ops "
            f"integer, {len(self.float_ops)} float",
            "  integer: " + ", ".join(f"{n} {op}" for op, n in sorted(self.integer_ops.items())),
        ]
        reasons = Counter((f["op"], f["reason"]) for f in self.float_ops)
        lines.extend(f"  float: {n} x {op} ({reason})" for (op, reason), n in sorted(reasons.items()))
        lines.append(
            f"  boundaries: {self.quantize_ops} QUANTIZE, {self.dequantize_ops} DEQUANTIZE; "
            f"{self.folded_decoders} constant decoders folded ({self.restored_decoders} kept for float ops), "
            f"{self.fused_activations} activations fused"
        )
        if self.equalized is not None:
            groups = self.equalized
            if groups:
                before = max(g.spread[0] for g in groups)
                after = max(g.spread[1] for g in groups)
                lines.append(
                    f"  activation equalization: {len(groups)} group(s) of {sum(g.tensors for g in groups)} tensors, "
                    f"{sum(g.channels for g in groups)} channels rescaled (exact in float); widest channel range "
                    f"over the median {before:.1f}x -> {after:.1f}x"
                )
            else:
                lines.append("  activation equalization: no group of activations the graph lets it rescale")
        if self.bias_correction:
            bc = self.bias_correction
            before, after = bc["worst_sqnr_db"]
            lines.append(
                f"  bias correction: {bc['biases']} of {bc['considered']} biases corrected ({bc['undone']} undone: "
                f"no gain at the outputs), {bc['runs']} runs on {bc['samples']} samples; worst-output SQNR on them "
                f"{before:.1f} -> {after:.1f} dB"
            )
        slow = [op for op, n in self.integer_ops.items() if n and not RULES[op].xnnpack_integer]
        if self.kernels == I16:
            lines.append(
                "  latency: XNNPACK (the default interpreter's delegate) has no 16x8 kernels, so LiteRT's builtin "
                "int16 kernels run the model: 15-42x the float model's latency on MediaPipe's models (benchmarks/"
                "latency.py); 16x8 is for accelerators and accuracy studies, not CPU speed"
            )
        elif slow:
            lines.append(
                f"  latency: XNNPACK takes no int8 {', '.join(sorted(slow))}, so the graph splits around each one "
                "and they run in the slower builtin kernels (with --io int8 on MediaPipe's PRELU models: 2.8-5.9x "
                "the float model's latency, benchmarks/latency.py); a float interface keeps them float on a CPU"
            )
        return "\n".join(lines)
