"""``python -m engine sweep`` end to end on three small models x five configurations: local worker processes and a
local Ray instance give the same rows (timings aside), a killed sweep continues with only the missing runs, a
failing run is recorded and the sweep goes on, a worker that crashes fails only its own run, and the HTML report
opens in headless Chromium without errors and shows its plots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.sweep import MEASURED_KEYS, Settings, load_configs, load_models, run_sweep
from engine.sweep.run import plan, run_local
from tests.sweep.zoo import FAILS, MODELS, make_zoo

FAST = Settings(runs=3, warmup=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def local(zoo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return run_sweep(load_models([zoo[0]]), load_configs(zoo[1]), tmp_path_factory.mktemp("local"), settings=FAST,
                     workers=2)  # fmt: skip


def _cli(*args: object, **options: Any) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "engine", "sweep", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, **options)


def _without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in rows]


@pytest.mark.slow
def test_every_run_is_recorded_failures_included(local: Any) -> None:
    rows = local.rows
    assert [(r["model"], r["config"]) for r in rows] == [(m, c) for m in MODELS for c in load_configs_names()]
    assert local.ran == 15 and local.already_done == 0
    (failed,) = local.failed
    assert (failed["model"], failed["config"]) == FAILS and "needs calibration data" in failed["error"]
    for row in rows:
        if row["status"] == "ok":
            assert (local.directory / row["output"]).is_file()
            assert row["quality"]["samples"] == 32 and row["quality_data"] == "data"
            assert row["quality"]["accuracy"] is not None and row["measured"]["footprint"]["load_ms"] > 0
    lines = (local.directory / "results.csv").read_text().splitlines()
    assert len(lines) == 16 and lines[0].startswith("model,config,status")
    report = (local.directory / "report.md").read_text()
    assert all(f"![{m}: quality against size and latency](plots/{m}.png)" in report for m in MODELS)


def load_configs_names() -> list[str]:
    from tests.sweep.zoo import GRID

    return list(GRID)


@pytest.mark.slow
def test_ray_gives_the_same_rows(zoo: tuple[Path, Path], local: Any, tmp_path: Path) -> None:
    import ray  # in the test extra

    assert not ray.is_initialized()
    on_ray = run_sweep(load_models([zoo[0]]), load_configs(zoo[1]), tmp_path, settings=FAST, workers=2, ray=True)
    assert not ray.is_initialized()  # the instance it started is shut down
    assert {row["run"]["backend"] for row in on_ray.rows} == {"ray"}
    assert _without_timings(on_ray.rows) == _without_timings(local.rows)
    for row in local.rows:
        if row["output"]:
            assert (tmp_path / row["output"]).read_bytes() == (local.directory / row["output"]).read_bytes()


@pytest.mark.slow
def test_a_killed_sweep_continues_with_the_missing_runs(zoo: tuple[Path, Path], local: Any, tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    args = (zoo[0], "--configs", zoo[1], "-o", tmp_path, "--runs", "3")
    sweep = subprocess.Popen([sys.executable, "-m", "engine", "sweep", *map(str, args)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while (not results.is_file() or len(results.read_text().splitlines()) < 4) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its worker, mid-run
    sweep.wait()
    before = [json.loads(line) for line in results.read_text().splitlines()]
    assert 4 <= len(before) < 15
    with results.open("a") as f:
        f.write('{"key": "cut sh')  # a row cut short by the kill
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    assert f"{15 - len(before)} run now, {len(before)} done before; 1 failed" in done.stdout
    after = [json.loads(line) for line in results.read_text().splitlines()]
    assert after[: len(before)] == before  # the finished runs were kept as they were, not redone
    assert len(after) == 15 and len({row["key"] for row in after}) == 15
    assert sorted(_keyed(after)) == sorted(_keyed(local.rows))
    assert _without_timings(sorted(after, key=lambda r: r["key"])) == _without_timings(
        sorted(local.rows, key=lambda r: r["key"])
    )


def _keyed(rows: list[dict[str, Any]]) -> list[str]:
    return [row["key"] for row in rows]


def crash_on_one(job: Any, directory: str) -> dict[str, Any]:
    """A worker's work that kills its process on one job (as a crash in native code would) and passes the others."""
    if (job.model.name, job.config.name) == ("net1", "prune-0.5"):
        os._exit(3)
    time.sleep(0.05)
    return {"key": job.key, "status": "ok"}


@pytest.mark.slow
def test_a_crashing_worker_fails_only_its_run(zoo: tuple[Path, Path], tmp_path: Path) -> None:
    jobs = plan(load_models([zoo[0]]), load_configs(zoo[1]), FAST)
    rows = list(run_local(jobs, tmp_path, 2, work=crash_on_one))
    assert sorted(_keyed(rows)) == sorted(job.key for job in jobs)
    (failed,) = [row for row in rows if row["status"] != "ok"]
    assert (failed["model"], failed["config"]) == ("net1", "prune-0.5") and "worker process died" in failed["error"]


def test_bad_input_is_one_error_and_writes_nothing(zoo: tuple[Path, Path], tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"int8": {"quantize": "int9"}}))
    for args, message in [
        ((zoo[0], "--configs", grid), "configuration 'int8': unknown quantize mode 'int9'"),
        ((zoo[0].with_name("none.json"), "--preset", "standard"), "none.json: No such file"),
        ((zoo[0], "--preset", "standard", "--runs", "0"), "--runs and --threads must be at least 1"),
        (("--ray", zoo[0], zoo[0], "--preset", "standard"), "put --ray after the models"),
    ]:
        done = _cli(*args, "-o", tmp_path / "out")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and message in lines[0], done.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.browser
def test_the_html_report_in_headless_chromium(local: Any, tmp_path: Path) -> None:
    """Chromium from the distribution (Debian: apt-get install chromium), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed: apt-get install -y chromium"
    problems: list[str] = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("requestfailed", lambda request: problems.append(request.url))
        page.goto((local.directory / "report.html").as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])"
        )
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        chromium.close()
    assert problems == []
    assert len(images) == len(MODELS)
    assert all(complete and natural >= 1000 and shown >= 600 for complete, natural, shown in images), images
    assert (tmp_path / "report.png").stat().st_size > 50_000
