"""What a sweep's rows become: results.csv (the headline figures of every run), and per model a table with the
Pareto fronts marked and a plot, as report.md (plots beside it, in plots/) and as one self-contained report.html
(plots embedded), each file written whole or not at all.

Quality is the top-1 accuracy where every run of a model was judged on labelled data, else the worst output's SQNR
against the original (dB).  A run is on the size front when no other run of its model is both smaller (file bytes)
and better, on the latency front when none is both faster (median, default runtime, 1 thread) and better.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.evaluation import headline, number
from engine.secure.atomic import atomic_output
from engine.sweep.pareto import pareto_front
from engine.sweep.plots import AXES, plot_model

CSV_COLUMNS = (
    "model", "config", "status", "file_bytes", "gzip_bytes", "size_ratio", "worst_sqnr_db", "accuracy",
    "accuracy_change_points", "latency_ms", "latency_ratio", "load_ms", "peak_memory_bytes", "quality_data",
    "output", "error", "options",
)  # fmt: skip


@dataclass(frozen=True)
class Point:
    """One successful run as the report places it."""

    config: str
    size: float | None
    latency: float | None
    quality: float | None
    figures: dict[str, Any]


@dataclass
class ModelView:
    """One model's runs: the points, which are on each front (indices into ``points``), the original's size and
    latency, and the failed runs."""

    name: str
    points: list[Point]
    fronts: dict[str, set[int]]
    original: dict[str, float | None]
    quality_label: str
    failed: list[dict[str, Any]]


def model_views(rows: list[dict[str, Any]]) -> list[ModelView]:
    """The rows grouped by model (in row order), with their Pareto fronts."""
    views = []
    for name in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == name]
        ok = [row for row in mine if row["status"] == "ok"]
        figures = [headline(row) for row in ok]
        by_accuracy = bool(ok) and all(f["accuracy"] is not None for f in figures)
        points = [
            Point(
                row["config"],
                f["file_bytes"],
                f["latency_ms"],
                100.0 * f["accuracy"] if by_accuracy else _usable(f["worst_sqnr_db"]),
                f,
            )
            for row, f in zip(ok, figures, strict=True)
        ]
        fronts = {axis: set(pareto_front([(getattr(p, axis), p.quality) for p in points])) for axis, _ in AXES}
        references = [
            e["reference_median_ms"]
            for row in ok
            for e in row["measured"].get("latency", [])
            if e["runtime"] == "default" and e["threads"] == 1 and "reference_median_ms" in e
        ]
        original = {
            "size": ok[0]["size"]["reference"]["file_bytes"] if ok else None,
            "latency": statistics.median(references) if references else None,
        }
        label = "top-1 accuracy (%)" if by_accuracy else "worst output SQNR (dB)"
        views.append(ModelView(name, points, fronts, original, label, [r for r in mine if r["status"] != "ok"]))
    return views


def _usable(sqnr: float | None) -> float | None:
    """An SQNR the fronts can rank: -inf (the candidate fails in a runtime) and NaN are not."""
    return None if sqnr is None or math.isnan(sqnr) or sqnr == -math.inf else sqnr


def write_reports(rows: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Write results.csv, plots/MODEL.png, report.md and report.html into ``directory``; the paths written.  Without
    matplotlib the reports say how to get the plots instead of showing them."""
    views = model_views(rows)
    plots: dict[str, bytes] = {}
    missing = None
    try:
        plots = {view.name: plot_model(view) for view in views if view.points}
    except EngineError:
        missing = "Plots need matplotlib: `pip install 'litert-engine[plots]'`, then run the sweep again."
    written = [_write(directory / "results.csv", _csv(rows).encode())]
    for name, png in plots.items():
        written.append(_write(directory / "plots" / f"{name}.png", png))
    written.append(_write(directory / "report.md", markdown(rows, views, missing).encode()))
    written.append(_write(directory / "report.html", html_report(rows, views, plots, missing).encode()))
    return written


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as f:
        f.write(content)
    return path


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        figures = headline(row) if row["status"] == "ok" else {}
        writer.writerow(
            {
                **{key: row.get(key) for key in ("model", "config", "status", "quality_data", "output", "error")},
                **figures,
                "options": json.dumps(row["options"], sort_keys=True),
            }
        )
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ tables

_HEADER = (
    "configuration", "file KB", "vs original", "gzip KB", "quality", "latency ms", "vs original", "load ms",
    "peak MB", "Pareto front",
)  # fmt: skip


def _cells(view: ModelView, k: int) -> list[str]:
    p = view.points[k]
    f = p.figures
    fronts = [axis for axis, _ in AXES if k in view.fronts[axis]]
    quality = "-" if p.quality is None else f"{p.quality:.2f}" if math.isfinite(p.quality) else "exact"
    return [
        p.config,
        _fmt(f["file_bytes"], 1e-3, ".1f"),
        _fmt(f["size_ratio"], 100, ".1f", "%"),
        _fmt(f["gzip_bytes"], 1e-3, ".1f"),
        quality,
        _fmt(f["latency_ms"], 1, ".3g"),
        _fmt(f["latency_ratio"], 1, ".2f", "x"),
        _fmt(f["load_ms"], 1, ".3g"),
        _fmt(f["peak_memory_bytes"], 1e-6, ".1f"),
        " + ".join(fronts) if fronts else "",
    ]


def _fmt(value: Any, scale: float, spec: str, unit: str = "") -> str:
    value = number(value)
    return "-" if value is None else format(value * scale, spec) + unit


def _summary(rows: list[dict[str, Any]], views: list[ModelView]) -> str:
    failed = sum(row["status"] != "ok" for row in rows)
    configs = len(dict.fromkeys(row["config"] for row in rows))
    return (
        f"{len(views)} models x {configs} configurations: {len(rows)} runs, {len(rows) - failed} ok, {failed} failed. "
        "Quality is against the original model (worst output SQNR in dB over the default runtime and the builtin "
        "kernels, or top-1 accuracy in % where the model has labelled data); latency is the median invoke time in "
        "the default runtime on 1 thread, timed interleaved with the original (vs original: the ratio of the two); "
        "load time and peak memory come from a fresh process. A run on the size (latency) Pareto front is one no "
        "other run of its model beats on both size (latency) and quality."
    )


def markdown(rows: list[dict[str, Any]], views: list[ModelView], missing: str | None = None) -> str:
    """report.md: the summary, then per model its plot (plots/MODEL.png), table and failed runs."""
    lines = ["# Sweep report", "", _summary(rows, views), ""]
    if missing:
        lines += [missing, ""]
    for view in views:
        lines += [f"## {view.name}", ""]
        if view.points and not missing:
            lines += [f"![{view.name}: quality against size and latency](plots/{view.name}.png)", ""]
        if view.points:
            lines += [f"Quality: {view.quality_label}.", "", _md_row(_HEADER), "|" + "---|" * len(_HEADER)]
            lines += [_md_row(_cells(view, k)) for k in range(len(view.points))]
            lines.append("")
        if view.failed:
            lines += ["Failed runs:", ""]
            lines += [f"- `{row['config']}`: {row['error']}" for row in view.failed]
            lines.append("")
    return "\n".join(lines)


def _md_row(cells: Any) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1250px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.front { background: #fdecea; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
.failed { color: #a00; }
"""


def html_report(
    rows: list[dict[str, Any]], views: list[ModelView], plots: dict[str, bytes], missing: str | None = None
) -> str:
    """report.html: report.md's content in one file, the plots embedded as PNG data."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Sweep report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Sweep report</h1>",
        f"<p>{e(_summary(rows, views))}</p>",
    ]
    if missing:
        parts.append(f"<p>{e(missing)}</p>")
    for view in views:
        parts.append(f'<h2 id="{e(view.name)}">{e(view.name)}</h2>')
        if view.name in plots:
            data = base64.b64encode(plots[view.name]).decode()
            alt = f"{view.name}: quality against size and latency"
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{e(alt)}">')
        if view.points:
            parts.append(f"<p>Quality: {e(view.quality_label)}. Highlighted: on a Pareto front.</p><table>")
            parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in _HEADER) + "</tr>")
            for k in range(len(view.points)):
                on_front = any(k in front for front in view.fronts.values())
                cells = "".join(f"<td>{e(c)}</td>" for c in _cells(view, k))
                parts.append(f"<tr{' class=front' if on_front else ''}>{cells}</tr>")
            parts.append("</table>")
        if view.failed:
            parts.append('<p>Failed runs:</p><ul class="failed">')
            parts += [f"<li><code>{e(row['config'])}</code>: {e(str(row['error']))}</li>" for row in view.failed]
            parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
