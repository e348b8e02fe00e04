"""engine.sweep.report on constructed rows: the fronts marked are the right ones, the CSV has every run, and the HTML
is self-contained: it parses, and each plot it embeds decodes as a PNG image (the browser check is in
test_sweep.py)."""

from __future__ import annotations

import base64
import csv
import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from engine.sweep.report import CSV_COLUMNS, model_views, write_reports

# model -> (config, file bytes, worst SQNR dB, latency ms); the original is 200 KB and 1.5 ms.
RUNS = {
    "alpha": [("int8", 50_000, 20.0, 2.0), ("float16", 100_000, 30.0, 1.0), ("prune", 80_000, 18.0, 0.5)],
    "beta": [("float16", 100_000, float("inf"), 1.0), ("int4", 30_000, 12.0, 3.0)],
}


def _row(model: str, config: str, size: int, sqnr: float, latency: float, accuracy: float | None = None) -> dict:
    quality: dict[str, Any] = {"worst_sqnr_db": str(sqnr) if sqnr == float("inf") else sqnr}
    if accuracy is not None:
        quality.update(accuracy=accuracy, reference_accuracy=0.9, accuracy_change_points=100 * (accuracy - 0.9))
    timed = {"runtime": "default", "threads": 1, "median_ms": latency, "p90_ms": latency, "reference_median_ms": 1.5}
    return {
        "key": f"{model}/{config}", "model": model, "config": config, "options": {"quantize": config},
        "status": "ok", "error": None, "output": f"models/{model}/{config}.tflite", "quality_data": "data",
        "size": {"file_bytes": size, "gzip_bytes": size // 2, "parameters": 1000, "bytes_by_dtype": {},
                 "reference": {"file_bytes": 200_000}},
        "quality": quality,
        "measured": {"latency": [timed], "footprint": {"load_ms": 1.0, "peak_memory_bytes": 2_000_000, "error": None}},
    }  # fmt: skip


def _rows() -> list[dict]:
    rows = [_row(model, *run) for model, runs in RUNS.items() for run in runs]
    failed = {**_row("beta", "int8", 1, 1.0, 1.0), "status": "failed", "error": "int8 needs calibration data"}
    return [*rows, failed]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.front_rows = 0
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"] or "")
        if tag == "tr" and attributes.get("class") == "front":
            self.front_rows += 1


def test_fronts_on_constructed_runs() -> None:
    alpha, beta = model_views(_rows())
    # alpha: float16 is the best, int8 the smallest; prune is the fastest, and larger and worse than int8.
    assert alpha.fronts == {"size": {0, 1}, "latency": {1, 2}}
    assert alpha.original == {"size": 200_000, "latency": 1.5}
    assert beta.fronts == {"size": {0, 1}, "latency": {0}} and beta.points[0].quality == float("inf")
    assert [row["config"] for row in beta.failed] == ["int8"]
    assert alpha.quality_label == "worst output SQNR (dB)"


def test_accuracy_is_the_quality_when_every_run_has_labels() -> None:
    rows = [_row("gamma", "a", 10, 40.0, 1.0, accuracy=0.8), _row("gamma", "b", 20, 30.0, 1.0, accuracy=0.9)]
    (view,) = model_views(rows)
    assert view.quality_label == "top-1 accuracy (%)"
    assert [p.quality for p in view.points] == pytest.approx([80.0, 90.0])
    assert view.fronts["size"] == {0, 1} and view.fronts["latency"] == {1}


def test_reports_are_written_and_self_contained(tmp_path: Path) -> None:
    rows = _rows()
    written = write_reports(rows, tmp_path)
    assert {p.name for p in written} == {"results.csv", "alpha.png", "beta.png", "report.md", "report.html"}
    table = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [r["config"] for r in table] == [r["config"] for r in rows] and list(table[0]) == list(CSV_COLUMNS)
    assert table[-1]["status"] == "failed" and table[-1]["file_bytes"] == ""
    assert table[0]["size_ratio"] == "0.25" and table[0]["latency_ratio"] == str(2.0 / 1.5)

    markdown = (tmp_path / "report.md").read_text()
    assert "![alpha: quality against size and latency](plots/alpha.png)" in markdown
    assert "| float16 | 100.0 | 50.0% | 50.0 | 30.00 | 1 | 0.67x | 1 | 2.0 | size + latency |" in markdown
    assert "| int8 | 50.0 | 25.0% | 25.0 | 20.00 | 2 | 1.33x | 1 | 2.0 | size |" in markdown
    assert "| float16 | 100.0 | 50.0% | 50.0 | exact |" in markdown
    assert "- `int8`: int8 needs calibration data" in markdown

    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.tags[0] == "html" and page.front_rows == 5  # alpha: float16, int8, prune; beta: both
    assert len(page.images) == 2
    prefix = "data:image/png;base64,"
    for src in page.images:
        assert src.startswith(prefix)  # embedded: the page needs no other file
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src[len(prefix) :])), format="png")
        assert image.shape[0] > 300 and image.shape[1] > 800 and image.std() > 0  # a drawn figure, not blank
    for path in (tmp_path / "plots").iterdir():
        assert prefix + base64.b64encode(path.read_bytes()).decode() in page.images
