"""What a compression run did: one entry per weight (from the passes), plus sizes before and after.

The passes return ``TensorReport`` entries as they work; ``Report`` gathers them with the file and gzip sizes
and the bytes by dtype the writer produced, and renders the summary ``compress`` prints and ``--report`` saves.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# gzip sizes are computed when input and output are at most this big; above, they would cost seconds (zlib level 6
# compresses float32 weights at about 9 MB/s, int8 at 20 MB/s) and are left out (None).
GZIP_LIMIT_BYTES = 32 * 1024 * 1024
# What the forms XNNPACK leaves to the builtin kernels cost, measured by benchmarks/latency.py (docs/benchmarks.md).
SLOW_FORM_COST = "on MediaPipe's models weight-int4 measured 1.1-3.4x the input's latency, gather storage 1.2-4.7x"


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings ("inf", "-inf", "nan") and tuples as lists: valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


@dataclass
class TensorReport:
    """One weight: what was done to it (``action`` "compressed" or "skipped") and why."""

    name: str
    subgraph: int
    shape: tuple[int, ...]
    ops: list[str]
    action: str
    reason: str | None = None
    mode: str | None = None
    bits: int | None = None
    granularity: str | None = None
    scale: str | None = None
    rounding: str | None = None  # a data-aware rounding method, when one fitted the codes
    # --gradual: the stage (1 = first) the weight was quantized in, on the model with the earlier stages quantized
    stage: int | None = None
    form: str | None = None
    dtype_before: str | None = None
    dtype_after: str | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    weight_sqnr_db: float | None = None
    # Why XNNPACK (the default interpreter's delegate) leaves the ops reading this weight to the slower builtin
    # kernels, when the form makes it do so (INT4 DEQUANTIZE, hybrid forms it does not take, GATHER storage).
    slow_form: str | None = None
    sparsity: float | None = None
    prune_pattern: str | None = None
    channels_removed: int | None = None
    clusters: int | None = None
    equalized: int | None = None  # channels (output and input) cross-layer equalization rescaled (--equalize)

    def then(self, later: TensorReport) -> TensorReport:
        """This entry followed by a later pass's on the same weight: what it started as, what it ended as."""
        if later.action != "compressed":
            return self if self.action == "compressed" else later
        if self.action != "compressed":
            return later
        merged = TensorReport(**{**vars(self), **{k: v for k, v in vars(later).items() if v is not None}})
        merged.dtype_before, merged.bytes_before = self.dtype_before, self.bytes_before
        if self.weight_sqnr_db is not None and later.weight_sqnr_db is not None:
            # Against the original weight: the two passes' error powers add (an estimate: it takes the later
            # pass's reference, the earlier pass's output, to have the original's power).
            noise = 10 ** (-self.weight_sqnr_db / 10) + 10 ** (-later.weight_sqnr_db / 10)
            merged.weight_sqnr_db = math.inf if noise == 0 else -10 * math.log10(noise)
        return merged


def gzip_size(path: str | Path) -> int:
    """Size of the file after zlib level 6 (what gzip gives, minus its ~18-byte header)."""
    path = Path(path)
    compressor = zlib.compressobj(6)
    total = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


@dataclass
class Report:
    tensors: list[TensorReport] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    bytes_by_dtype_before: dict[str, int] = field(default_factory=dict)
    bytes_by_dtype_after: dict[str, int] = field(default_factory=dict)
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None
    gzip_bytes_before: int | None = None
    gzip_bytes_after: int | None = None
    validation: dict[str, Any] | None = None
    # ``compress --validate``: median invoke time (ms) of the input and the output, timed together
    # (engine.runtime.latency).
    latency: dict[str, Any] | None = None
    # Full-integer runs: engine.passes.full_integer.IntegerReport (ops integer/float, boundaries, calibration).
    integer: Any = None
    # Budgeted runs (compress target_sqnr= / max_accuracy_drop=): engine.accuracy.search.SearchReport.
    search: Any = None

    @property
    def compressed(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.action == "compressed"]

    @property
    def skipped(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.action == "skipped"]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def add_gzip_sizes(self, source: str | Path, output: str | Path) -> None:
        """Fill ``gzip_bytes_before``/``after`` when both files are at most ``GZIP_LIMIT_BYTES``."""
        if max(Path(source).stat().st_size, Path(output).stat().st_size) <= GZIP_LIMIT_BYTES:
            self.gzip_bytes_before, self.gzip_bytes_after = gzip_size(source), gzip_size(output)

    def format_text(self) -> str:
        """The summary ``compress`` prints: counts, skip reasons, bytes by dtype, file and gzip sizes."""
        lines = []
        done = self.compressed
        by_mode = Counter(
            ", ".join(
                part
                for part in (
                    f"pruned {t.prune_pattern}" if t.prune_pattern else None,
                    f"clustered ({t.form})" if t.clusters and not t.mode else "clustered" if t.clusters else None,
                    f"{t.mode} ({', '.join(filter(None, (t.form, t.dtype_after, t.granularity)))})" if t.mode else None,
                    t.reason,  # what a compressed weight got instead of what was asked, or besides it
                    f"{t.rounding} rounding" if t.rounding else None,
                    "sparse" if t.sparsity is not None and t.form == "sparse" else None,
                    "equalized" if t.equalized else None,
                )
                if part
            )
            for t in done
        )
        lines.append(f"weights: {len(done)} compressed, {len(self.skipped)} left as they are")
        lines.extend(f"  {n} x {what}" for what, n in sorted(by_mode.items()))
        reasons = Counter(t.reason for t in self.skipped)
        lines.extend(f"  left: {n} x {reason}" for reason, n in reasons.most_common())
        pruned = [t for t in done if t.sparsity is not None]
        if pruned:
            kept = sum(math.prod(t.shape) * (1 - t.sparsity) for t in pruned)
            total = sum(math.prod(t.shape) for t in pruned)
            lines.append(f"pruned: {len(pruned)} weights, {1 - kept / total:.1%} of their elements zero")
        sqnrs = [t.weight_sqnr_db for t in done if t.weight_sqnr_db is not None]
        if sqnrs:
            lines.append(f"weight SQNR: worst {min(sqnrs):.1f} dB, median {sorted(sqnrs)[len(sqnrs) // 2]:.1f} dB")
        lines.append(
            "weights: " + f"{sum(t.bytes_before for t in done):,} -> {sum(t.bytes_after for t in done):,} bytes"
        )
        dtypes = sorted(set(self.bytes_by_dtype_before) | set(self.bytes_by_dtype_after))
        changed = [
            f"{d} {self.bytes_by_dtype_before.get(d, 0):,} -> {self.bytes_by_dtype_after.get(d, 0):,}"
            for d in dtypes
            if self.bytes_by_dtype_before.get(d, 0) != self.bytes_by_dtype_after.get(d, 0)
        ]
        lines.append("constants by dtype (bytes): " + ("; ".join(changed) if changed else "unchanged"))
        if self.integer is not None:
            lines.append(self.integer.format_text())
        if self.search is not None:
            lines.append(self.search.format_text())
        lines.append("file: " + _ratio(self.file_bytes_before, self.file_bytes_after))
        lines.append("gzip: " + self._gzip_text())
        shared = [t for t in done if t.clusters and t.form == "values" and t.bytes_after >= t.bytes_before]
        if shared:
            lines.append(
                f"note: {len(shared)} clustered weight(s) keep their float values (--cluster-storage values), so the "
                "file does not shrink for them: the gain is what a compressor makes of the repeated values (gzip "
                "above); --cluster-storage gather stores indices and a codebook instead"
            )
        slow = Counter(t.slow_form for t in done if t.slow_form)
        if slow:
            lines.append(
                "latency: in the default interpreter, XNNPACK leaves the ops reading these weights to the builtin "
                f"kernels, which split the graph ({SLOW_FORM_COST}; compress --validate measures this model):"
            )
            lines.extend(f"  {n} x {why}" for why, n in slow.most_common())
        return "\n".join(lines)

    def _gzip_text(self) -> str:
        if self.gzip_bytes_before is not None and self.gzip_bytes_after is not None:
            return _ratio(self.gzip_bytes_before, self.gzip_bytes_after)
        if self.file_bytes_before is None or self.file_bytes_after is None:
            return "not computed (no input file or no output file)"
        if max(self.file_bytes_before, self.file_bytes_after) > GZIP_LIMIT_BYTES:
            return f"not computed (a file over {GZIP_LIMIT_BYTES >> 20} MiB)"
        return "not computed (--gzip computes it: zlib takes about 0.1 s per MB of float32 weights)"


def _ratio(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "not computed (no input file or no output file)"
    return f"{before:,} -> {after:,} bytes ({after / before:.1%} of the input, {before / max(after, 1):.2f}x smaller)"
