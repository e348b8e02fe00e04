"""One PNG per model that a person reads at a glance: quality against size and against latency, every run a point
named by its configuration, the Pareto front drawn through its points, the original model as a dashed line.
matplotlib is the optional ``plots`` extra, on the file-only Agg backend."""

from __future__ import annotations

import io
import math
from typing import Any

from engine.accuracy.plot import require_matplotlib

# (axis key in ModelView.points, label): the two trade-offs plotted, left to right.
AXES = (("size", "file size (KB)"), ("latency", "latency, default runtime, 1 thread (ms)"))
_FRONT, _OTHER = "#c0392b", "#7f8c8d"


def plot_model(view: Any) -> bytes:
    """The PNG of one model (an ``engine.sweep.report.ModelView``) as bytes."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    try:
        for ax, (axis, label) in zip(axes, AXES, strict=True):
            _panel(ax, view, axis, label)
        fig.suptitle(f"{view.name}: {len(view.points)} runs; Pareto front in red", fontsize=11)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _panel(ax: Any, view: Any, axis: str, label: str) -> None:
    scale = 1e-3 if axis == "size" else 1.0
    finite = [p.quality for p in view.points if p.quality is not None and math.isfinite(p.quality)]
    ceiling = max(finite, default=0.0) + 5.0  # where exact outputs (infinite SQNR) are drawn
    at: dict[tuple[float, float], list[tuple[str, bool]]] = {}  # runs at one point share one label
    for k, p in enumerate(view.points):
        cost = getattr(p, axis)
        if cost is not None and p.quality is not None and p.quality != -math.inf:
            name = p.config + (" (exact)" if p.quality == math.inf else "")
            at.setdefault((cost * scale, min(p.quality, ceiling)), []).append((name, k in view.fronts[axis]))
    for (x, y), runs in at.items():
        on_front = any(front for _, front in runs)
        ax.scatter(x, y, s=36 if on_front else 18, color=_FRONT if on_front else _OTHER, zorder=3)
        ax.annotate(", ".join(name for name, _ in runs), (x, y), fontsize=7, xytext=(4, 3),
                    textcoords="offset points", color=_FRONT if on_front else "#34495e")  # fmt: skip
    front = sorted(xy for xy, runs in at.items() if any(f for _, f in runs))
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color=_FRONT, linewidth=1, alpha=0.7,
                zorder=2)  # fmt: skip
    original = view.original.get(axis)
    if original is not None:
        ax.axvline(original * scale, color="#2c3e50", linestyle="--", linewidth=1)
        ax.annotate("original", (original * scale, 1), xycoords=("data", "axes fraction"), fontsize=7,
                    xytext=(3, -10), textcoords="offset points")  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel(view.quality_label)
    ax.grid(True, alpha=0.3)
