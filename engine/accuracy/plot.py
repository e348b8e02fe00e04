"""A bar chart of ``analyze``'s result that a person reads at a glance: one horizontal bar per weight or op, the
most harmful at the top, its length the output SQNR lost when only it is quantized.  matplotlib is an optional
extra (``pip install litert-engine[plots]``), imported only here, with the file-only Agg backend."""

from __future__ import annotations

import math
import os
from typing import Any

from engine.errors import EngineError

_MAX_BARS = 40


def require_matplotlib() -> Any:
    """matplotlib's pyplot on the Agg backend, or one error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise EngineError("the sensitivity plot needs matplotlib: pip install 'litert-engine[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sensitivity(result: Any, path: str | os.PathLike[str], bars: int = _MAX_BARS) -> None:
    """Write ``result`` (an ``engine.accuracy.Sensitivity``) as a PNG bar chart to ``path``."""
    plt = require_matplotlib()
    rows = result.rows[:bars]
    if not rows:
        raise EngineError("nothing to plot: the analysis has no rows")
    finite = [r.alone_sqnr_db for r in rows if math.isfinite(r.alone_sqnr_db)]
    ceiling = max(max(finite, default=60.0) + 5.0, 60.0)
    harm = [ceiling - (r.alone_sqnr_db if math.isfinite(r.alone_sqnr_db) else ceiling) for r in rows]
    labels = [f"{_short(r.unit)} ({r.op})" for r in rows]
    height = max(3.0, 0.28 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(10, height))
    colors = ["#c0392b" if r.noise_share >= 0.1 else "#e67e22" if r.noise_share >= 0.02 else "#7f8c8d" for r in rows]
    ax.barh(range(len(rows)), harm, color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        ax.text(harm[i], i, f" {r.alone_sqnr_db:.1f} dB, {100 * r.noise_share:.0f}%", va="center", fontsize=7)
    ax.set_xlabel(f"harm: {ceiling:.0f} dB minus the output SQNR with only this {result.unit_kind} on {result.mode}")
    ax.set_title(
        f"{result.model}: sensitivity to {result.mode} (uniform: {result.uniform_sqnr_db:.1f} dB; "
        f"{len(rows)} most harmful of {len(result.rows)}; labels: alone SQNR, share of noise)",
        fontsize=9,
    )
    ax.set_xlim(0, max(harm) * 1.3 + 1)
    fig.tight_layout()
    try:
        fig.savefig(os.fspath(path), dpi=110)
    except OSError as exc:
        raise EngineError(f"plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]
